"""Reading runs from the datastore: the tasks of an origin step, and what a finished task chose.

Reads only: nothing here writes to a run. What the cloner needs from the origin is returned as
an ``OriginStep`` value and handed to it, instead of being cached between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import OriginTask, TaskOutcome
from auto_resume.metaflow import internals
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
    try:
        datastores = _finished_tasks(store, run_id, step_name)
    except Exception as exc:
        raise MetaflowAccessError(
            f"cannot read step {step_name} of {store.location.flow_name}/{run_id} from the datastore: {exc}"
        ) from exc
    tasks: dict[tuple[int, ...], OriginTask] = {}
    indexes: dict[str, TaskIndex] = {}
    for datastore in datastores:
        indices = tuple(frame.index for frame in datastore["_foreach_stack"])
        ok = bool(datastore["_task_ok"]) if "_task_ok" in datastore else False
        tasks[indices] = OriginTask(datastore.pathspec, datastore.pathspec.split("/")[2], ok)
        index = datastore.ds_metadata
        indexes[datastore.pathspec] = TaskIndex(datastore.attempt, index["objects"], index["info"])
    return OriginStep(run_id=run_id, step_name=step_name, tasks=tasks, indexes=indexes)


def _finished_tasks(store: Store, run_id: str, step_name: str) -> list[Any]:
    """The datastores of the step's tasks whose latest attempt finished, ``_task_ok`` and
    ``_foreach_stack`` loaded in one batch (as ``TaskDataStoreSet`` prefetches them).

    ``TaskDataStoreSet`` (``FlowDataStore.get_task_datastores``) finds each task's latest
    attempt by probing three files of every possible attempt (18 look-ups a task). Here one
    listing of the step and one of each task directory, through the datastore's storage (local,
    S3, ...), name the attempts that exist, and ``get_task_datastores`` reads each task at its
    latest attempt only. Metaflow's rule is kept: the latest attempt started (below
    ``MAX_ATTEMPTS``) counts, and only if it finished (its DONE marker, checked by Metaflow).
    """
    from metaflow.datastore.task_datastore import TaskDataStore
    from metaflow.metaflow_config import MAX_ATTEMPTS

    flow_datastore = store.flow_datastore
    storage = internals.storage_of(flow_datastore)
    step_path = storage.path_join(store.location.flow_name, run_id, step_name)
    task_paths = [entry.path for entry in storage.list_content([step_path]) if not entry.is_file]
    latest: dict[str, int] = {}
    for entry in storage.list_content(task_paths):
        if not entry.is_file:
            continue
        *_, task_id, name = storage.path_split(entry.path.rstrip("/"))
        attempt, _, suffix = name.partition(".")
        if (
            suffix == TaskDataStore.METADATA_ATTEMPT_SUFFIX
            and attempt.isdigit()
            and int(attempt) < MAX_ATTEMPTS
        ):
            latest[task_id] = max(latest.get(task_id, 0), int(attempt))
    by_attempt: dict[int, list[str]] = {}
    for task_id, attempt in latest.items():
        by_attempt.setdefault(attempt, []).append(f"{run_id}/{step_name}/{task_id}")
    datastores = [
        datastore
        for attempt, pathspecs in sorted(by_attempt.items())
        for datastore in flow_datastore.get_task_datastores(pathspecs=pathspecs, attempt=attempt)
    ]
    internals.prefetch_artifacts(flow_datastore, datastores, ["_task_ok", "_foreach_stack"])
    return datastores


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
