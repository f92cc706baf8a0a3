"""``auto-resume explain`` and ``auto-resume resume`` against the session's deployment.

One real ForeachFlow run (8 items, item 5 fails once), tagged ``auto_resume/opt_out=true`` so
that the running sensor leaves it alone. While it runs, both commands refuse it; once it has
failed, ``explain`` shows the sensor's decision (skip: opted out) and the plan (start and 7 items
cloned; item 5, join and end executed); ``resume`` refuses it, then with ``--force`` records a
request that the running sensor answers with the resume run (run key ``resume-of-<run id>``),
which the command reports. The daemon launches it; it succeeds,
carries the lineage tags and ``auto_resume/manual``, and the counter files show that only item
5 ran again. A bad run id, an unknown one and a run of a job missing from the given policy are refused.
"""

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterRunStatus, RunsFilter

from auto_resume.dagster import tags
from auto_resume.dagster.run_facts import metaflow_run_id
from auto_resume.dagster.runs import FINISHED_STATUSES
from tests.e2e.harness import ROOT, Deployment, counts, wait_for_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

WIDTH, FAILING = 8, 5


def _json(deployment: Deployment, *args: str) -> tuple[int, Any]:
    result = deployment.cli(*args, "--json")
    return result.returncode, json.loads(result.stdout)


def _launch_opted_out(deployment: Deployment, config: dict[str, object]) -> str:
    """Submit a ForeachFlow run tagged opt_out, as `dagster job launch --tags` does; its id."""
    return deployment.launch_with(
        "foreach_flow", "ForeachFlow", {"ops": {"op_start": {"config": config}}}, {tags.OPT_OUT: "true"}
    )


def _wait_until_started(deployment: Deployment, run_id: str, timeout: float = 120) -> None:
    instance = deployment.instance()

    def started() -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status == DagsterRunStatus.STARTED

    wait_until(started, timeout, f"run {run_id} did not start", deployment.diagnostics, interval=0.2)


def test_explain_and_manual_resume_of_a_real_failure(deployment: Deployment, tmp_path: Path) -> None:
    instance = deployment.instance()
    workdir = tmp_path / "counters"
    config = {"alpha": 7, "width": WIDTH, "workdir": str(workdir), "fail_at": f"body:{FAILING}"}
    failed_id = _launch_opted_out(deployment, config)

    # Still going: nothing to explain or resume yet.
    _wait_until_started(deployment, failed_id)
    for command in ("explain", "resume"):
        status, document = _json(deployment, command, failed_id)
        assert status == 1, document
        assert f"run {failed_id} (ForeachFlow) is still going (status " in document["error"]
    still_going = instance.get_run_by_id(failed_id)
    assert still_going is not None and still_going.status not in FINISHED_STATUSES, (
        "the run finished too soon"
    )

    failed = wait_for_run(instance, failed_id)
    assert failed.status == DagsterRunStatus.FAILURE, deployment.diagnostics()
    origin = metaflow_run_id(instance, failed_id)
    assert origin is not None and origin.startswith("dagster-")

    # explain: the sensor skips it (opted out); a resume would clone all but item 5, join, end.
    status, document = _json(deployment, "explain", failed_id)
    assert status == 0, document
    assert document["metaflow_run_id"] == origin
    assert document["failure"]["step"] == "body"
    assert document["failure"]["exception"] == "RuntimeError"
    assert f"injected failure in body:{FAILING}" in document["failure"]["message"]
    assert document["decision"]["action"] == "skip"
    assert document["decision"]["reason"] == f"run {failed_id} is tagged auto_resume/opt_out=true"
    plan = document["plan"]
    assert [(t["step"], t["task_id"], t["action"]) for t in plan["tasks"]] == [
        ("start", "1", "clone"),
        *[("body", f"1-{i}", "run" if i == FAILING else "clone") for i in range(WIDTH)],
        ("join", "1", "run"),
        ("end", "1", "run"),
    ]
    assert (plan["tasks_cloned"], plan["tasks_executed"]) == (WIDTH, 3)
    text = deployment.cli("explain", failed_id)
    assert text.returncode == 0, text.stderr
    print(text.stdout)  # the README's example
    assert "decision: skip: " in text.stdout
    assert f"    re-run body/1-{FAILING}" in text.stdout

    # resume: refused by the policy, then forced.
    status, document = _json(deployment, "resume", failed_id)
    assert status == 1
    assert document["error"] == (
        f"the policy refuses to resume run {failed_id} (skip): run {failed_id} is tagged "
        "auto_resume/opt_out=true; pass --force to resume it anyway"
    )
    assert instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: failed_id})) == []
    status, document = _json(deployment, "resume", failed_id, "--force")
    assert status == 0, document
    assert (document["resume"]["pending"], document["resume"]["manual"]) == (False, True), document
    resume_id = document["resume"]["run_id"]
    resume = wait_for_run(instance, resume_id)
    assert resume.status == DagsterRunStatus.SUCCESS, deployment.diagnostics()
    assert resume.job_name == "ForeachFlow_resume"
    expected_tags = {
        tags.ROOT_RUN_ID: failed_id,
        tags.PARENT_RUN_ID: failed_id,
        tags.ORIGIN_METAFLOW_RUN_ID: origin,
        tags.ATTEMPT: "1",
        tags.SOURCE_JOB: "ForeachFlow",
        tags.MANUAL: "forced",
        tags.DAGSTER_RUN_KEY: f"resume-of-{failed_id}",
    }
    assert {key: resume.tags.get(key) for key in expected_tags} == expected_tags
    # Only the failed item ran again; everything else was cloned.
    expected_counts = {"start": 1, "join": 1, "end": 1, **{f"body-{i}": 1 for i in range(WIDTH)}}
    expected_counts[f"body-{FAILING}"] = 2
    assert counts(workdir) == expected_counts
    # One resume of this failure, the manual one.
    assert [r.run_id for r in instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: failed_id}))] == [
        resume_id
    ]

    # A run of a job that the given policy does not list.
    other_policy = tmp_path / "linear-only.yaml"
    other_policy.write_text(
        f"version: 1\nflows:\n  - definitions_file: {ROOT / 'examples/generated/linear_flow_dagster.py'}\n"
    )
    status, document = _json(deployment, "resume", failed_id, "--policy", str(other_policy))
    assert status == 1
    assert f"run {failed_id} is a run of ForeachFlow, which is not in the policy" in document["error"]


def test_bad_and_unknown_run_ids_are_refused(deployment: Deployment) -> None:
    # (tests/test_cli_operator.py tries both commands with more values.)
    status, document = _json(deployment, "resume", "x;rm -rf /")
    assert status == 1
    assert "'x;rm -rf /' is not a Dagster run id" in document["error"]
    unknown = str(uuid.uuid4())
    result = deployment.cli("explain", unknown)
    assert result.returncode == 1
    assert f"auto-resume explain: no run {unknown} in this Dagster instance" in result.stderr
