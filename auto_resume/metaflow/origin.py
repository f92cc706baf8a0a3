"""Reading runs from the datastore: the tasks of an origin step, and what a finished task chose.

Reads only: nothing here writes to a run. What the cloner needs from the origin is returned as
an ``OriginStep`` value and handed to it, instead of being cached between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import OriginTask, TaskOutcome
from auto_resume.metaflow.datastore import Store, store_for
from auto_resume.metaflow.deployment import Deployment


@dataclass(frozen=True)
class TaskIndex:
    """A finished task's artifact index (name -> blob key, and per-artifact info), as stored.

    Exactly what a clone copies; a plain value, so that a clone process needs no second read.
    """

    attempt: int
    objects: dict[str, str]
    info: dict[str, Any]


@dataclass(frozen=True)
class OriginStep:
    """One step of an origin run: its tasks by foreach indices, and their artifact indexes."""

    run_id: str
    step_name: str
    tasks: dict[tuple[int, ...], OriginTask]
    # By pathspec; tasks whose index could not be read are absent (the cloner reads them again).
    indexes: dict[str, TaskIndex] = field(default_factory=dict)


def read_origin_step(store: Store, run_id: str, step_name: str) -> OriginStep:
    """The tasks of ``step_name`` in ``run_id`` whose latest attempt finished.

    Raises:
        MetaflowAccessError: The step's objects cannot be read from the datastore.
    """
    from metaflow.datastore.datastore_set import TaskDataStoreSet

    try:
        task_set = TaskDataStoreSet(
            store.flow_datastore,
            run_id,
            steps=[step_name],
            prefetch_data_artifacts=["_task_ok", "_foreach_stack"],
        )
    except Exception as exc:
        raise MetaflowAccessError(
            f"cannot read step {step_name} of {store.location.flow_name}/{run_id} from the datastore: {exc}"
        ) from exc
    tasks: dict[tuple[int, ...], OriginTask] = {}
    indexes: dict[str, TaskIndex] = {}
    for datastore in task_set:
        indices = tuple(frame.index for frame in datastore["_foreach_stack"])
        ok = bool(datastore["_task_ok"]) if "_task_ok" in datastore else False
        tasks[indices] = OriginTask(datastore.pathspec, datastore.pathspec.split("/")[2], ok)
        index = datastore.ds_metadata
        indexes[datastore.pathspec] = TaskIndex(datastore.attempt, index["objects"], index["info"])
    return OriginStep(run_id=run_id, step_name=step_name, tasks=tasks, indexes=indexes)


def task_outcome(store: Store, pathspec: str, step_type: str) -> TaskOutcome:
    """Foreach split count and chosen branches of a finished task."""
    if step_type not in ("foreach", "split-switch"):
        return TaskOutcome(None, None)
    run_id, step_name, task_id = pathspec.split("/")
    datastore = store.flow_datastore.get_task_datastore(run_id, step_name, task_id, mode="r")
    if step_type == "foreach":
        return TaskOutcome(int(datastore["_foreach_num_splits"]), None)
    transition = datastore["_transition"]
    next_steps = transition[0] if isinstance(transition, (list, tuple)) else transition
    if isinstance(next_steps, str):
        next_steps = [next_steps]
    return TaskOutcome(None, tuple(str(s) for s in next_steps))


class OriginReader:
    """The runs of one deployment, read-only: what ``auto-resume explain`` previews a plan from."""

    def __init__(self, deployment: Deployment) -> None:
        self._store = store_for(deployment)

    def origin_tasks(self, run_id: str, step_name: str) -> dict[tuple[int, ...], OriginTask]:
        """Tasks of ``step_name`` in ``run_id`` whose latest attempt finished, by foreach index."""
        return read_origin_step(self._store, run_id, step_name).tasks

    def task_outcome(self, pathspec: str, step_type: str) -> TaskOutcome:
        """Foreach split count and chosen branches of a finished task."""
        return task_outcome(self._store, pathspec, step_type)
