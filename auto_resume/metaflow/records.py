"""The run, step and task records Metaflow's client lists, written through the metadata provider.

metaflow-dagster's task id ``1`` is an integer, for which Metaflow's local provider writes no
record; without them the client sees no steps and calls a finished run unsuccessful. The runs
auto-resume makes get their records here. A metadata service keeps its records itself, and
Metaflow's service holds none for a task that the client names with an integer: there such a
task has only its metadata, as in the run metaflow-dagster made.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from auto_resume.metaflow import internals
from auto_resume.metaflow.datastore import Store
from auto_resume.metaflow.deployment import Deployment

# Local metadata writes from this process's threads are serialised: Metaflow's local provider
# is not thread safe. (Clone processes each write only their own tasks' directories.)
_METADATA_LOCK = threading.Lock()
# Metadata a clone writes for itself, never copied from its origin task.
_OWN_FIELDS = frozenset({"attempt", "attempt_ok", "attempt-done", "origin-run-id", "origin-task-id"})


def register_run(store: Store, deployment: Deployment, run_id: str, extra_tags: Sequence[str] = ()) -> None:
    """Make ``run_id`` known to the metadata provider (and so to the client).

    The run carries the ``--tag`` values the definitions file passes to its steps, and a
    resume's own (``extra_tags``): the client shows tags per run, as for ``--tag`` on
    ``python flow.py run`` or ``resume``.
    """
    tags = sorted({tag for options in deployment.steps.values() for tag in options.tags} | set(extra_tags))
    with _METADATA_LOCK:
        store.metadata.register_run_id(run_id, tags=tags)


def register_task(
    store: Store,
    deployment: Deployment,
    run_id: str,
    step_name: str,
    task_id: str,
    extra_tags: Sequence[str] = (),
) -> None:
    """Create the step and task records of a task about to run, whatever its id."""
    tags = list(dict.fromkeys((*deployment.step_options(step_name).tags, *extra_tags)))
    with _METADATA_LOCK:
        internals.new_task(store.metadata, run_id, step_name, task_id, tags)


def ensure_step_record(store: Store, run_id: str, step_name: str) -> None:
    """The step record the client lists (the local provider skips it for integer task ids)."""
    if internals.keeps_own_records(store.metadata):
        return
    with _METADATA_LOCK:
        internals.ensure_record(store.metadata, "step", run_id, step_name, None)


def ensure_task_record(store: Store, run_id: str, step_name: str, task_id: str) -> None:
    """The record of a cloned task; ``register_task_id`` would also write system metadata again."""
    if internals.keeps_own_records(store.metadata):
        if not task_id.isdigit():  # the service holds no record for an integer id
            with _METADATA_LOCK:
                store.metadata.register_task_id(run_id, step_name, task_id)
        return
    # A task's own directory: no other thread or process writes there.
    internals.ensure_record(store.metadata, "task", run_id, step_name, task_id)


def copied_system_metadata(store: Store, origin_pathspec: str) -> list[Any] | None:
    """None if the origin task has a record the client can follow; else what a clone copies.

    The copy (user, versions, ``ds-type``, ``ds-root``...: the same for every task of a step)
    leaves out the attempt fields and origin links, which are the clone's own. Read it once per
    step and pass it to every clone.
    """
    from metaflow.metadata_provider.metadata import MetaDatum

    run_id, step_name, task_id = origin_pathspec.split("/")
    flow_name = store.location.flow_name
    if not task_id.isdigit():
        return None  # the local provider and the service record every task id that is not an integer
    with _METADATA_LOCK:
        if internals.task_record(store.metadata, flow_name, run_id, step_name, task_id):
            return None
        found = internals.task_metadata(store.metadata, flow_name, run_id, step_name, task_id)
    return [
        MetaDatum(field=m["field_name"], value=m["value"], type=m["type"], tags=["attempt_id:0"])
        for m in found
        if m.get("field_name") not in _OWN_FIELDS
    ]


def register_clone_metadata(
    store: Store,
    run_id: str,
    step_name: str,
    task_id: str,
    origin_pathspec: str,
    copied: Sequence[Any] | None,
) -> None:
    """The metadata of a clone: its origin, attempt 0 and its success (``attempt_ok``).

    A clone of a task without a record (``copied`` is not None) gets the origin's system
    metadata and names its origin in ``auto-resume-origin-pathspec`` instead of
    ``origin-task-id``, which the client could not follow; nothing is written into the origin.
    """
    from metaflow.metadata_provider.metadata import MetaDatum

    origin_run_id, _, origin_task_id = origin_pathspec.split("/")
    tags = ["attempt_id:0"]
    if copied is None:
        link = [MetaDatum(field="origin-task-id", value=origin_task_id, type="origin-task-id", tags=tags)]
    else:
        link = [
            *copied,
            MetaDatum(
                field="auto-resume-origin-pathspec",
                value=f"{store.location.flow_name}/{origin_pathspec}",
                type="auto-resume-origin-pathspec",
                tags=tags,
            ),
        ]
    ensure_task_record(store, run_id, step_name, task_id)
    store.metadata.register_metadata(
        run_id,
        step_name,
        task_id,
        [
            *link,
            MetaDatum(field="origin-run-id", value=origin_run_id, type="origin-run-id", tags=tags),
            MetaDatum(field="attempt", value="0", type="attempt", tags=tags),
            MetaDatum(field="attempt_ok", value="True", type="internal_attempt_status", tags=tags),
        ],
    )


def client_view(flow_name: str, run_id: str) -> tuple[bool, list[str]]:
    """What Metaflow's client says of a run: whether it succeeded, and its steps."""
    from metaflow.client.core import Flow, namespace

    namespace(None)
    run = Flow(flow_name)[run_id]
    return bool(run.successful), sorted(step.id for step in run)
