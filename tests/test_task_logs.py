"""Tests for auto_resume.metaflow.task_logs: an attempt's output saved as Metaflow's runtime saves it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auto_resume.metaflow import task_logs
from auto_resume.metaflow.datastore import store_for
from auto_resume.metaflow.task_logs import AttemptLog
from tests.support.linear_origin import linear_deployment


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))


def _read(tmp_path: Path, stream: str, attempt: int) -> list[bytes]:
    """The stream as the client reads it: every log source of the attempt, merged by mflog."""
    from metaflow.mflog import LOG_SOURCES
    from metaflow.mflog.mflog import merge_logs

    store = store_for(linear_deployment(tmp_path))
    datastore = store.flow_datastore.get_task_datastore(
        "run", "start", "1", attempt=attempt, mode="r", allow_not_done=True
    )
    logs = datastore.load_logs(LOG_SOURCES, stream, attempt_override=attempt)
    return [line.msg for line in merge_logs([blob for _, blob in logs])]


def _attempt(tmp_path: Path, attempt: int, lines: list[tuple[str, bytes]], returncode: int) -> None:
    store = store_for(linear_deployment(tmp_path))
    datastore = store.flow_datastore.get_task_datastore("run", "start", "1", attempt=attempt, mode="w")
    datastore.init_task()  # what the step subprocess does first
    log = AttemptLog()
    for stream, line in lines:
        log.add(stream, line)
    log.save(store, "run/start/1", attempt, returncode)


def test_each_attempt_keeps_its_own_output_and_a_failure_says_so(tmp_path: Path) -> None:
    _attempt(tmp_path, 0, [("stdout", b"first try\n"), ("stderr", b"Traceback...\n")], 1)
    _attempt(tmp_path, 1, [("stdout", b"second try\n"), ("stdout", b"done\n")], 0)
    assert _read(tmp_path, "stdout", 0) == [b"first try"]
    assert _read(tmp_path, "stderr", 0) == [b"Traceback...", b"Task failed."]
    assert _read(tmp_path, "stdout", 1) == [b"second try", b"done"]
    assert _read(tmp_path, "stderr", 1) == []


def test_a_stream_is_cut_at_metaflows_maximum_log_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_logs, "MAX_LOG_SIZE", 200)
    _attempt(tmp_path, 0, [("stdout", b"x" * 60 + b"\n")] * 5, 0)
    lines = _read(tmp_path, "stdout", 0)
    assert lines[-1] == b"[TRUNCATED - MAXIMUM LOG FILE SIZE REACHED]"
    assert len(lines) < 5
