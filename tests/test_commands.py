"""Tests for auto_resume.metaflow.commands: the step command line, and running it with its log."""

from __future__ import annotations

import sys
from pathlib import Path

from auto_resume.metaflow import commands
from auto_resume.metaflow.task_logs import AttemptLog
from tests.support.linear_origin import linear_deployment


def _step(origin_run_id: str | None) -> list[str]:
    deployment = linear_deployment(Path("/nonexistent"))
    return commands.step_command(
        deployment, "process", "dagster-new", "1", ["dagster-new/start/1"], None, 0, origin_run_id
    )


def test_a_resumed_task_records_its_origin_as_metaflow_resume_does() -> None:
    # Metaflow's runtime passes --clone-run-id to every task of `resume`; on `step` it sets
    # current.origin_run_id and the origin-run-id metadata, and clones nothing.
    assert _step("dagster-origin")[-1] == "--clone-run-id=dagster-origin"
    assert not any(arg.startswith("--clone-run-id") for arg in _step(None))


def test_run_step_feeds_each_line_to_the_attempt_log_as_written(tmp_path: Path) -> None:
    deployment = linear_deployment(tmp_path)
    script = "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\nsys.exit(3)\n"
    log = AttemptLog()
    result = commands.run_step(deployment, [sys.executable, "-c", script], "start", log)
    assert result.returncode == 3
    assert result.stdout == log.text("stdout") == "one\nthree\n"
    assert result.stderr == log.text("stderr") == "two\n"
