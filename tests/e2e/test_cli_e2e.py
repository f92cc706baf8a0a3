"""``auto-resume history`` against the session's deployment, on a failure this test makes itself.

LinearFlow fails at ``process``; the daemon's sensor resumes it; the console script, run with the
deployment's environment (DAGSTER_HOME, DAGSTER_PG_URL), must show the lineage: the original
failure, one successful attempt, the Metaflow run ids, and what the attempt cloned and executed.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterRunStatus

from auto_resume.dagster.run_facts import metaflow_run_id
from tests.e2e.harness import Deployment, wait_for_resume_of, wait_for_run

pytestmark = pytest.mark.e2e


def test_history_shows_the_automatic_resume(deployment: Deployment, tmp_path: Path) -> None:
    instance = deployment.instance()
    config = {"alpha": 3, "fail_at": "process", "workdir": str(tmp_path)}
    failed_id = deployment.launch("linear_flow", "LinearFlow", config)
    failed = wait_for_run(instance, failed_id)
    assert failed.status == DagsterRunStatus.FAILURE, "the injected failure did not fail the run"
    resume = wait_for_run(instance, wait_for_resume_of(instance, failed_id, deployment=deployment).run_id)
    assert resume.status == DagsterRunStatus.SUCCESS, deployment.diagnostics()

    result = deployment.cli("history", "LinearFlow", "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr[-3000:]
    lineages: list[dict[str, Any]] = json.loads(result.stdout)["lineages"]
    [lineage] = [lineage for lineage in lineages if lineage["root_run_id"] == failed_id]
    assert lineage["job_name"] == "LinearFlow"
    assert lineage["outcome"] == "succeeded"
    assert lineage["original"]["status"] == "FAILURE"
    assert lineage["original"]["metaflow_run_id"] == metaflow_run_id(instance, failed_id)
    [attempt] = lineage["attempts"]
    assert attempt["run_id"] == resume.run_id
    assert attempt["job_name"] == "LinearFlow_resume"
    assert attempt["status"] == "SUCCESS"
    assert attempt["origin_metaflow_run_id"] == lineage["original"]["metaflow_run_id"]
    assert attempt["metaflow_run_id"] == metaflow_run_id(instance, resume.run_id)
    assert attempt["metaflow_run_id"] not in (None, attempt["origin_metaflow_run_id"])
    # start completed before the failure: cloned; process failed and end never ran: executed.
    assert {step["step"]: (step["cloned"], step["executed"]) for step in attempt["steps"]} == {
        "start": (1, 0),
        "process": (0, 1),
        "end": (0, 1),
    }
    assert (attempt["tasks_cloned"], attempt["tasks_executed"]) == (1, 2)

    text = deployment.cli("history", "LinearFlow", "--limit", "1000")
    assert text.returncode == 0, text.stderr[-3000:]
    assert f"LinearFlow: failure {failed_id}, 1 resume attempt(s) -> succeeded" in text.stdout
    assert f"{resume.run_id}  SUCCESS" in text.stdout
    assert "cloned 1, executed 2" in text.stdout
