"""Reading an origin step: the same tasks, attempts and artifact indexes as Metaflow's own read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from auto_resume.metaflow.datastore import store_for
from auto_resume.metaflow.origin import read_origin_step
from tests.support.linear_origin import failed_linear_origin, linear_deployment

RUN = "dagster-0c0c0c0c0c0c"


def _metaflow_read(store, step: str) -> dict[str, tuple[int, bool, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """What ``TaskDataStoreSet`` (Metaflow's read, probing every attempt) finds in the step."""
    from metaflow.datastore.datastore_set import TaskDataStoreSet

    found = TaskDataStoreSet(store.flow_datastore, RUN, steps=[step], prefetch_data_artifacts=["_task_ok"])
    return {
        ds.pathspec: (
            ds.attempt,
            bool(ds["_task_ok"]) if "_task_ok" in ds else False,
            ds.ds_metadata["objects"],
        )
        for ds in found
    }


def _ours(store, step: str) -> dict[str, tuple[int, bool, dict[str, str]]]:  # type: ignore[no-untyped-def]
    origin = read_origin_step(store, RUN, step)
    return {
        task.pathspec: (origin.indexes[task.pathspec].attempt, task.ok, origin.indexes[task.pathspec].objects)
        for task in origin.tasks.values()
    }


def test_latest_finished_attempt_as_metaflow_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    deployment = linear_deployment(tmp_path)
    failed_linear_origin(deployment, RUN, tmp_path / "counters")
    store = store_for(deployment)
    task = tmp_path / ".metaflow" / "LinearFlow" / RUN / "start" / "1"

    # One finished attempt each; the failed task's is done too, with _task_ok False.
    assert _ours(store, "start") == _metaflow_read(store, "start")
    assert [(a, ok) for a, ok, _ in _ours(store, "start").values()] == [(0, True)]
    assert _ours(store, "process") == _metaflow_read(store, "process")
    assert [(a, ok) for a, ok, _ in _ours(store, "process").values()] == [(0, False)]

    # A second attempt that finished (its files, as a retry writes them): attempt 1 is read.
    for name in ("attempt.json", "data.json", "DONE.lock"):
        shutil.copy(task / f"0.{name}", task / f"1.{name}")
    assert [a for a, _, _ in _ours(store, "start").values()] == [1]
    assert _ours(store, "start") == _metaflow_read(store, "start")

    # A third attempt started and not finished: the task is not finished, whatever came before.
    shutil.copy(task / "0.attempt.json", task / "2.attempt.json")
    assert _ours(store, "start") == _metaflow_read(store, "start") == {}

    # It finished: attempt 2 counts. An attempt past Metaflow's MAX_ATTEMPTS is not looked at.
    shutil.copy(task / "0.data.json", task / "2.data.json")
    shutil.copy(task / "0.DONE.lock", task / "2.DONE.lock")
    shutil.copy(task / "0.attempt.json", task / "99.attempt.json")
    assert [a for a, _, _ in _ours(store, "start").values()] == [2]
    assert _ours(store, "start") == _metaflow_read(store, "start")


def test_a_missing_step_has_no_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    deployment = linear_deployment(tmp_path)
    failed_linear_origin(deployment, RUN, tmp_path / "counters")
    origin = read_origin_step(store_for(deployment), RUN, "end")
    assert origin.tasks == {} and origin.indexes == {}
