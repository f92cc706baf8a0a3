"""Which tasks a resume run needs, and whether each one is cloned or executed.

Pure functions of plain data. A task of the new run is identified by its step and its foreach
index path (``()`` outside any foreach, ``(3,)`` for item 3, ``(1, 0)`` nested), the same key
Metaflow's own resume uses, so the choice of task ids never decides what is reused.

A step's tasks are planned from the tasks its parent steps finished in the new run. When a task
fails, the rest of the flow is still planned: tasks that do not depend on it are cloned (or run)
anyway, so that the next resume of this run finds every completed task in it. A join is only
planned once all of its inputs exist, which the foreach widths carried by every record tell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, OriginTask, StepShape

PARAMETERS_STEP = "_parameters"
PARAMETERS_TASK_ID = "params"


def parameters_task(
    parameters: Mapping[tuple[int, ...], OriginTask], flow_name: str, job_name: str, run_id: str
) -> OriginTask:
    """The origin run's finished ``_parameters`` task, from its ``origin_tasks``.

    Raises:
        MetaflowAccessError: There is none: the run is not in the datastore, or failed before
            Metaflow started it, and there is nothing to resume.
    """
    task = parameters.get(())
    if task is None or not task.ok:
        raise MetaflowAccessError(
            f"{flow_name}/{run_id} has no finished _parameters task in the datastore: the run "
            f"does not exist there, or failed before Metaflow started. Launch {job_name} again "
            "instead of resuming it."
        )
    return task


@dataclass(frozen=True)
class TaskRecord:
    """A finished task of the new run, handed to the steps downstream of it."""

    indices: tuple[int, ...]
    pathspec: str
    cloned: bool
    num_splits: int | None = None
    next_steps: tuple[str, ...] | None = None
    # Split count of each enclosing foreach, parallel to ``indices``: a foreach join knows from
    # it how many inputs it must wait for.
    widths: tuple[int, ...] = ()


@dataclass(frozen=True)
class TaskInstance:
    """A task the new run must have, before we know how it is produced."""

    step: str
    indices: tuple[int, ...]
    input_paths: tuple[str, ...]
    split_index: int | None
    inputs_cloned: bool
    widths: tuple[int, ...] = ()
    is_foreach_join: bool = False


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


def task_id_for(indices: Sequence[int], foreach_join: bool = False) -> str:
    """metaflow-dagster's task id for a task at this foreach index path.

    ``1`` outside any foreach, ``1-2`` for item 2, ``1-2-0`` nested. A foreach join inside an
    enclosing foreach gets ``-join`` appended (``1-2-join``), as in metaflow-dagster's compound
    ops, so that it never shares an id with the foreach step at the same index path.
    """
    base = "-".join(["1", *(str(i) for i in indices)])
    return f"{base}-join" if foreach_join and indices else base


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
        return _foreach_join(step, parents.get(step.in_funcs[0], ()))
    if step.type == "join":
        return _static_join(step, parents)
    instances: list[TaskInstance] = []
    for parent_name in step.in_funcs:
        parent_type = flow.step(parent_name).type
        for record in parents.get(parent_name, ()):
            if parent_type == "foreach":
                width = record.num_splits or 0
                instances.extend(
                    TaskInstance(
                        step.name,
                        (*record.indices, index),
                        (record.pathspec,),
                        index,
                        record.cloned,
                        (*record.widths, width),
                    )
                    for index in range(width)
                )
            elif parent_type != "split-switch" or step.name in (record.next_steps or ()):
                instances.append(
                    TaskInstance(
                        step.name, record.indices, (record.pathspec,), None, record.cloned, record.widths
                    )
                )
    return sorted(instances, key=lambda instance: instance.indices)


def _foreach_join(step: StepShape, records: Sequence[TaskRecord]) -> list[TaskInstance]:
    """One task per enclosing index path whose foreach items have all finished."""
    groups: dict[tuple[int, ...], list[TaskRecord]] = {}
    for record in records:
        groups.setdefault(record.indices[:-1], []).append(record)
    instances = []
    for key, members in sorted(groups.items()):
        widths = members[0].widths
        if not widths or len({m.indices for m in members}) != widths[-1]:
            continue  # an item failed or never ran: the join waits for the next resume
        members = sorted(members, key=lambda r: r.indices[-1])
        instances.append(_join_instance(step, key, members, widths[:-1], is_foreach_join=True))
    return instances


def _static_join(step: StepShape, parents: Mapping[str, Sequence[TaskRecord]]) -> list[TaskInstance]:
    """One task per index path at which every branch of the split has finished."""
    by_key: dict[tuple[int, ...], dict[str, TaskRecord]] = {}
    for parent_name in step.in_funcs:
        for record in parents.get(parent_name, ()):
            by_key.setdefault(record.indices, {})[parent_name] = record
    instances = []
    for key, branches in sorted(by_key.items()):
        if len(branches) != len(step.in_funcs):
            continue  # a branch failed or never ran
        members = [branches[name] for name in step.in_funcs]
        instances.append(_join_instance(step, key, members, members[0].widths, is_foreach_join=False))
    return instances


def _join_instance(
    step: StepShape,
    key: tuple[int, ...],
    members: Sequence[TaskRecord],
    widths: tuple[int, ...],
    is_foreach_join: bool,
) -> TaskInstance:
    """The join task at index path ``key`` that reads ``members``, in input order."""
    return TaskInstance(
        step.name,
        key,
        tuple(r.pathspec for r in members),
        None,
        all(r.cloned for r in members),
        widths,
        is_foreach_join=is_foreach_join,
    )


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
        task_id = (
            origin.task_id
            if origin is not None
            else task_id_for(instance.indices, foreach_join=instance.is_foreach_join)
        )
        actions.append(TaskAction(instance, task_id, origin if reusable else None))
    return actions
