"""Which tasks a resume run needs, and whether each one is cloned or executed.

Pure functions of plain data. A task of the new run is identified by its step and its foreach
index path (``()`` outside any foreach, ``(3,)`` for item 3, ``(1, 0)`` nested), the same key
Metaflow's own resume uses, so the choice of task ids never decides what is reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from auto_resume.metaflow_access import FlowShape, OriginTask, StepShape

PARAMETERS_STEP = "_parameters"
PARAMETERS_TASK_ID = "params"


@dataclass(frozen=True)
class TaskRecord:
    """A finished task of the new run, handed to the steps downstream of it."""

    indices: tuple[int, ...]
    pathspec: str
    cloned: bool
    num_splits: int | None = None
    next_steps: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskInstance:
    """A task the new run must have, before we know how it is produced."""

    step: str
    indices: tuple[int, ...]
    input_paths: tuple[str, ...]
    split_index: int | None
    inputs_cloned: bool


@dataclass(frozen=True)
class TaskAction:
    """What to do for one task: clone ``origin`` or execute the step code."""

    instance: TaskInstance
    task_id: str
    origin: OriginTask | None

    @property
    def clone(self) -> bool:
        """True when the task is copied from ``origin`` without running code."""
        return self.origin is not None


def task_id_for(indices: Sequence[int]) -> str:
    """metaflow-dagster's task id for a task at this foreach index path."""
    return "-".join(["1", *(str(i) for i in indices)])


def instances_for(
    step: StepShape,
    flow: FlowShape,
    parents: Mapping[str, Sequence[TaskRecord]],
    parameters_pathspec: str,
) -> list[TaskInstance]:
    """The tasks of ``step`` in the new run, from the finished tasks of its parent steps.

    Args:
        step: The step to plan.
        flow: The whole flow graph (for parent step types).
        parents: Finished tasks of each parent step, by step name.
        parameters_pathspec: The new run's ``_parameters`` task, input of ``start``.
    """
    if not step.in_funcs:
        return [TaskInstance(step.name, (), (parameters_pathspec,), None, True)]
    if step.is_foreach_join:
        return _grouped(step, parents[step.in_funcs[0]], drop_last=True)
    if step.type == "join":
        return _grouped(step, [r for p in step.in_funcs for r in parents[p]], drop_last=False)
    instances: list[TaskInstance] = []
    for parent_name in step.in_funcs:
        parent_type = flow.step(parent_name).type
        for record in parents[parent_name]:
            if parent_type == "foreach":
                for index in range(record.num_splits or 0):
                    instances.append(
                        TaskInstance(
                            step.name,
                            (*record.indices, index),
                            (record.pathspec,),
                            index,
                            record.cloned,
                        )
                    )
            elif parent_type != "split-switch" or step.name in (record.next_steps or ()):
                instances.append(
                    TaskInstance(step.name, record.indices, (record.pathspec,), None, record.cloned)
                )
    return instances


def _grouped(step: StepShape, records: Sequence[TaskRecord], drop_last: bool) -> list[TaskInstance]:
    groups: dict[tuple[int, ...], list[TaskRecord]] = {}
    for record in records:
        key = record.indices[:-1] if drop_last else record.indices
        groups.setdefault(key, []).append(record)
    instances = []
    for key, members in sorted(groups.items()):
        if drop_last:
            members = sorted(members, key=lambda r: r.indices[-1])
        instances.append(
            TaskInstance(
                step.name,
                key,
                tuple(r.pathspec for r in members),
                None,
                all(r.cloned for r in members),
            )
        )
    return instances


def plan_step(
    instances: Sequence[TaskInstance],
    origin_tasks: Mapping[tuple[int, ...], OriginTask],
    rerun: bool,
) -> list[TaskAction]:
    """Decide, for every task of one step, between cloning and executing.

    A task is cloned only when its counterpart in the origin run finished successfully, every
    task it reads from was itself cloned (so its inputs are unchanged), and the step is not
    forced to re-run. Everything else executes.
    """
    actions = []
    for instance in instances:
        origin = origin_tasks.get(instance.indices)
        reusable = origin is not None and origin.ok and instance.inputs_cloned and not rerun
        task_id = origin.task_id if origin is not None else task_id_for(instance.indices)
        actions.append(TaskAction(instance, task_id, origin if reusable else None))
    return actions
