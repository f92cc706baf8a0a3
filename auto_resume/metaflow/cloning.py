"""Cloning finished tasks of an origin run into a new run, without running their code.

A clone is what ``metaflow.clone_util.clone_task_helper`` does (artifact index,
``origin-run-id`` / ``origin-task-id`` / ``attempt`` / ``attempt_ok`` metadata, DONE marker) minus
the system metadata it registers again for every task (user, runtime, versions: the client reads
them through ``origin-task-id`` from the origin task), which is half of the files a clone writes
on the local provider. The origin is only read.

The origin step is read first (``auto_resume.metaflow.origin``) and handed in: the cloner reuses
the artifact indexes read there instead of opening every origin task a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from auto_resume.metaflow import clone_pool, internals
from auto_resume.metaflow.datastore import Store, StoreLocation, open_store
from auto_resume.metaflow.origin import OriginStep, TaskIndex
from auto_resume.metaflow.records import copied_system_metadata, ensure_step_record, register_clone_metadata

# Fewest clones worth a process of their own (starting one costs a few milliseconds).
_CLONES_PER_PROCESS_MIN = 32

# (origin pathspec, new task id, the origin's artifact index if it was read)
_Clone = tuple[str, str, TaskIndex | None]


def clone_task(store: Store, origin: OriginStep, origin_pathspec: str, run_id: str, task_id: str) -> None:
    """Copy one finished task of ``origin`` into ``run_id`` as ``task_id``.

    Raises:
        Exception: Whatever Metaflow raises when the origin task cannot be read or the clone
            cannot be written.
    """
    ensure_step_record(store, run_id, origin.step_name)
    copied = copied_system_metadata(store, origin_pathspec)
    index = origin.indexes.get(origin_pathspec)
    _clone(store, (origin_pathspec, task_id, index), run_id, origin.step_name, copied)


def clone_tasks(
    store: Store, origin: OriginStep, clones: Sequence[tuple[str, str]], run_id: str, processes: int
) -> dict[str, str]:
    """Clone many tasks of one step: ``(origin pathspec, new task id)`` pairs.

    A clone is a few milliseconds of small file writes and Python around them, bound by the
    GIL: on a wide step, up to ``processes`` clone processes (see ``clone_pool``) clone a share
    each, which scales with the cores. Narrow steps clone in this process.

    Returns:
        An error message for each task id that could not be cloned (empty when all were).
    """
    step_name = origin.step_name
    errors = missing_artifacts(store, origin, clones)
    work: list[_Clone] = [
        (pathspec, task_id, origin.indexes.get(pathspec))
        for pathspec, task_id in clones
        if task_id not in errors
    ]
    if not work:
        return errors
    # Shared by every clone of the step: written or read once, before any clone starts.
    ensure_step_record(store, run_id, step_name)
    copied = copied_system_metadata(store, work[0][0])
    processes = max(1, min(processes, len(work) // _CLONES_PER_PROCESS_MIN))
    if processes == 1 or not clone_pool.available():
        _, failed = clone_share(store.location, work, run_id, step_name, copied)
        return {**errors, **failed}
    chunks = [work[i : i + _CLONES_PER_PROCESS_MIN] for i in range(0, len(work), _CLONES_PER_PROCESS_MIN)]
    try:
        results = _clone_in_processes(store.location, chunks, run_id, step_name, copied, processes)
    except (OSError, RuntimeError, AssertionError):  # e.g. a daemonic process may not start any
        results = [None] * len(chunks)
    for chunk, result in zip(chunks, results, strict=True):
        if result is None:
            # The clone process could not start or died (a main script that is not guarded by
            # `if __name__ == "__main__":`, killed, out of memory...): clone its chunk here.
            # Cloning a task again writes the same files.
            result = clone_share(store.location, chunk, run_id, step_name, copied)
        errors.update(_share_errors(chunk, *result))
    return errors


def _clone_in_processes(
    location: StoreLocation,
    chunks: Sequence[Sequence[_Clone]],
    run_id: str,
    step_name: str,
    copied: list[Any] | None,
    processes: int,
) -> list[tuple[list[str], dict[str, str]] | None]:
    """``clone_share`` of every chunk, by ``processes`` clone processes and by this process.

    The clone processes take chunks from the front; this process clones from the back every
    chunk that none of them has taken yet, so it works while they start (a cold fork server
    takes about half a second) instead of waiting. None for a chunk whose process died.
    """
    results: list[tuple[list[str], dict[str, str]] | None] = [None] * len(chunks)
    with clone_pool.pool(processes) as executor:
        futures = [
            executor.submit(clone_share, location, chunk, run_id, step_name, copied) for chunk in chunks
        ]
        for index in reversed(range(len(chunks))):
            if not futures[index].cancel():
                break
            results[index] = clone_share(location, chunks[index], run_id, step_name, copied)
        for index, future in enumerate(futures):
            if not future.cancelled():
                results[index] = _share_result(future)
    return results


def _share_result(
    future: Future[tuple[list[str], dict[str, str]]],
) -> tuple[list[str], dict[str, str]] | None:
    try:
        return future.result()
    except BrokenProcessPool:
        return None


def _share_errors(share: Sequence[_Clone], cloned: list[str], failed: dict[str, str]) -> dict[str, str]:
    done = set(cloned)
    return {
        task_id: failed.get(task_id, f"cloning {pathspec} failed: the cloning process did not report it")
        for pathspec, task_id, _ in share
        if task_id not in done
    }


def clone_share(
    location: StoreLocation, share: Sequence[_Clone], run_id: str, step_name: str, copied: list[Any] | None
) -> tuple[list[str], dict[str, str]]:
    """Clone ``share`` into ``run_id``; run in this process or in a clone process.

    Returns:
        The task ids cloned, and an error message by task id for the others.
    """
    store = open_store(location)
    cloned: list[str] = []
    errors: dict[str, str] = {}
    for clone in share:
        try:
            _clone(store, clone, run_id, step_name, copied)
            cloned.append(clone[1])
        except Exception as exc:
            errors[clone[1]] = f"cloning {clone[0]} failed: {exc!r}"
    return cloned, errors


def _clone(store: Store, clone: _Clone, run_id: str, step_name: str, copied: list[Any] | None) -> None:
    origin_pathspec, task_id, index = clone
    origin_run_id, _, origin_task_id = origin_pathspec.split("/")
    datastore = store.flow_datastore
    if index is None:
        origin = datastore.get_task_datastore(origin_run_id, step_name, origin_task_id)
    else:  # the index read with the origin step: no second read
        origin = datastore.get_task_datastore(
            origin_run_id,
            step_name,
            origin_task_id,
            attempt=index.attempt,
            data_metadata={"objects": index.objects, "info": index.info},
        )
    output = datastore.get_task_datastore(run_id, step_name, task_id, attempt=0, mode="w")
    output.init_task()
    output.clone(origin)
    register_clone_metadata(store, run_id, step_name, task_id, origin_pathspec, copied)
    output.done()


def missing_artifacts(store: Store, origin: OriginStep, clones: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The clones whose origin task names an artifact the datastore no longer holds.

    A clone copies the origin's artifact index, not the artifacts: a lost blob would only
    surface later as an obscure error in whatever task reads it. One existence check per
    distinct blob of the step, before anything is written.
    """
    wanted: dict[str, list[tuple[str, str, str]]] = {}  # blob key -> (task id, origin, artifact)
    for origin_pathspec, task_id in clones:
        index = origin.indexes.get(origin_pathspec)
        if index is None:
            continue  # the clone reads it and reports what it cannot read
        for name, key in index.objects.items():
            wanted.setdefault(key, []).append((task_id, origin_pathspec, name))
    if not wanted:
        return {}
    keys = sorted(wanted)
    storage, paths = internals.blob_locations(store.flow_datastore, keys)
    errors: dict[str, str] = {}
    for key, path, present in zip(keys, paths, storage.is_file(paths), strict=True):
        if present:
            continue
        for task_id, origin_pathspec, name in wanted[key]:
            errors.setdefault(
                task_id,
                f"artifact {name!r} of {store.location.flow_name}/{origin_pathspec} is missing from the "
                f"datastore ({storage.full_uri(path)}): the task cannot be cloned; resuming this run "
                f"executes {origin.step_name} again",
            )
    return errors
