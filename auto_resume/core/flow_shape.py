"""A flow graph and the tasks of a run, as plain data: what planning a resume reads.

The Metaflow side (``auto_resume.metaflow``) builds these from a flow class and a datastore; the
pure planner (``auto_resume.core.resume_plan``) and everything above it only see these types.
"""

import graphlib
import re
from dataclasses import dataclass

from auto_resume.core.errors import MetaflowAccessError, UnsupportedFlowError

_STEP_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True)
class StepShape:
    """One step of a flow graph, as plain data."""

    name: str
    type: str
    in_funcs: tuple[str, ...]
    out_funcs: tuple[str, ...]
    is_foreach_join: bool


@dataclass(frozen=True)
class FlowShape:
    """A flow graph in topological order."""

    name: str
    steps: tuple[StepShape, ...]

    def step(self, name: str) -> StepShape:
        """The step called ``name``."""
        for shape in self.steps:
            if shape.name == name:
                return shape
        raise KeyError(name)

    def downstream_of(self, name: str) -> frozenset[str]:
        """``name`` and every step reachable from it."""
        seen: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current not in seen:
                seen.add(current)
                pending.extend(self.step(current).out_funcs)
        return frozenset(seen)


@dataclass(frozen=True)
class OriginTask:
    """A task of an earlier run, as found in the datastore."""

    pathspec: str
    task_id: str
    ok: bool


@dataclass(frozen=True)
class TaskOutcome:
    """Facts about a task of the new run that downstream steps need."""

    num_splits: int | None
    next_steps: tuple[str, ...] | None


def topological(steps: list[StepShape]) -> tuple[StepShape, ...]:
    """``steps`` in an order where every step follows the steps it reads from.

    Ties keep the order of ``steps``. Raises UnsupportedFlowError for a recursive step (a switch
    that goes back to itself or an earlier step), which metaflow-dagster cannot run either.
    """
    by_name = {s.name: s for s in steps}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for shape in steps:
        sorter.add(shape.name, *(p for p in shape.in_funcs if p in by_name))
    index = {shape.name: i for i, shape in enumerate(steps)}
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise UnsupportedFlowError(
            "flow graph has a cycle; recursive steps are not supported: remove the flow from the policy"
        ) from exc
    ordered: list[StepShape] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=index.__getitem__)
        ordered.extend(by_name[name] for name in ready)
        sorter.done(*ready)
    # A recursive step is not an in_func of its target, so the order above does not see it:
    # look for transitions that go back.
    position = {shape.name: i for i, shape in enumerate(ordered)}
    for shape in ordered:
        back = [name for name in shape.out_funcs if position.get(name, len(ordered)) <= position[shape.name]]
        if back:
            raise UnsupportedFlowError(
                f"step {shape.name!r} goes back to {', '.join(back)}: recursive steps are not "
                "supported by metaflow-dagster or auto-resume; remove the flow from the policy"
            )
    return tuple(ordered)


def check_step_name(flow: FlowShape, step_name: str) -> str:
    """Return ``step_name`` if the flow has such a step, else raise.

    Raises:
        MetaflowAccessError: Not a step of the flow; the message lists the steps.
    """
    names = [s.name for s in flow.steps]
    well_formed = isinstance(step_name, str) and _STEP_NAME_PATTERN.fullmatch(step_name)
    if not well_formed or step_name not in names:
        raise MetaflowAccessError(
            f"from_step {step_name!r} is not a step of {flow.name}; choose one of: {', '.join(names)}"
        )
    return step_name
