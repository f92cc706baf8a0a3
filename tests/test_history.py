"""Tests for auto_resume.cli.history on a real resume run: the counts come from output metadata.

The resume job of the LinearFlow example runs in-process against an origin made the way
metaflow-dagster runs the flow (``process`` failed). tests/test_cli.py covers the lineages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dagster import DagsterInstance

from auto_resume.cli.history import StepCounts, step_counts
from auto_resume.dagster.code_location import load_flow
from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
from auto_resume.policy.model import FlowEntry
from tests.support.linear_origin import failed_linear_origin, linear_deployment

REPO_ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "dagster-0a1b2c3d4e5f"


def test_step_counts_of_a_real_resume_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    linear = linear_deployment(tmp_path)
    failed_linear_origin(linear, ORIGIN, tmp_path / "counters")
    entry = FlowEntry(definitions_file=REPO_ROOT / "examples" / "generated" / "linear_flow_dagster.py")
    job = build_resume_job(linear, load_flow(entry).shape)
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config=resume_run_config(linear, ORIGIN), instance=instance, raise_on_error=False
    )
    assert result.success

    # start finished in the origin run; process failed there, and end never ran.
    assert step_counts(instance, result.run_id) == (
        StepCounts(step="start", cloned=1, executed=0),
        StepCounts(step="process", cloned=0, executed=1),
        StepCounts(step="end", cloned=0, executed=1),
    )
