"""Failure -> sensor -> resume job -> finished Metaflow run, on the real daemon and PostgreSQL.

Each example flow is launched with a non-default parameter and a step that fails on its first
run. The counter files its user code writes show what ran again after the automatic resume.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterRun, DagsterRunStatus

from auto_resume.dagster import tags
from auto_resume.dagster.run_facts import metaflow_run_id
from tests.e2e.harness import ROOT, Deployment, counts, wait_for_resume_of, wait_for_run

pytestmark = pytest.mark.e2e

ALPHA = 42  # every example flow's default is 1


@dataclass(frozen=True)
class Scenario:
    location: str
    job: str
    config: dict[str, object]


SCENARIOS = {
    "linear": Scenario("linear_flow", "LinearFlow", {"alpha": ALPHA, "fail_at": "process"}),
    "branch": Scenario("branch_flow", "BranchFlow", {"alpha": ALPHA, "fail_at": "right"}),
    "foreach": Scenario("foreach_flow", "ForeachFlow", {"alpha": ALPHA, "width": 6, "fail_at": "body:4"}),
}


@dataclass(frozen=True)
class Outcome:
    workdir: Path
    failed: DagsterRun
    resume: DagsterRun
    origin_metaflow_run_id: str
    resumed_metaflow_run_id: str
    failure_to_launch_s: float
    resume_duration_s: float


@pytest.fixture(scope="module")
def outcomes(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Launch every scenario at once, then wait for each failure and its automatic resume."""
    instance = deployment.instance()
    launched = {}
    for name, scenario in SCENARIOS.items():
        workdir = tmp_path_factory.mktemp(f"core-{name}")
        config = {**scenario.config, "workdir": str(workdir)}
        launched[name] = (workdir, deployment.launch(scenario.location, scenario.job, config))
    results = {}
    for name, (workdir, run_id) in launched.items():
        failed = wait_for_run(instance, run_id)
        assert failed.status == DagsterRunStatus.FAILURE, f"{name}: the injected failure did not fail the run"
        resume = wait_for_resume_of(instance, run_id, deployment=deployment)
        resume = wait_for_run(instance, resume.run_id)
        failed_record = instance.get_run_record_by_id(run_id)
        resume_record = instance.get_run_record_by_id(resume.run_id)
        assert failed_record and resume_record and failed_record.end_time and resume_record.end_time
        assert resume_record.start_time
        results[name] = Outcome(
            workdir=workdir,
            failed=failed,
            resume=resume,
            origin_metaflow_run_id=metaflow_run_id(instance, run_id) or "",
            resumed_metaflow_run_id=metaflow_run_id(instance, resume.run_id) or "",
            failure_to_launch_s=resume_record.create_timestamp.timestamp() - failed_record.end_time,
            resume_duration_s=resume_record.end_time - resume_record.start_time,
        )
    for name, outcome in results.items():
        print(
            f"{name}: failure -> resume run created {outcome.failure_to_launch_s:.1f}s, "
            f"resume run {outcome.resume_duration_s:.1f}s"
        )
    return results


def _metaflow_run(flow_name: str, run_id: str):  # type: ignore[no-untyped-def]
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(ROOT)
    from metaflow import Flow, namespace

    namespace(None)
    return Flow(flow_name)[run_id]


def _assert_resumed(outcome: Outcome, expected_counts: dict[str, int], flow_name: str) -> None:
    assert outcome.resume.status == DagsterRunStatus.SUCCESS
    assert counts(outcome.workdir) == expected_counts
    assert (outcome.workdir / "alpha.txt").read_text().split()[0] == str(ALPHA)
    assert outcome.resume.tags[tags.PARENT_RUN_ID] == outcome.failed.run_id
    assert outcome.resume.tags[tags.ROOT_RUN_ID] == outcome.failed.run_id
    assert outcome.resume.tags[tags.ATTEMPT] == "1"
    assert outcome.resume.tags[tags.ORIGIN_METAFLOW_RUN_ID] == outcome.origin_metaflow_run_id
    assert outcome.origin_metaflow_run_id.startswith("dagster-")
    assert outcome.resumed_metaflow_run_id not in ("", outcome.origin_metaflow_run_id)
    run = _metaflow_run(flow_name, outcome.resumed_metaflow_run_id)
    assert run.successful
    assert run["end"].task.data.alpha == ALPHA


def test_linear_flow_resumes_only_the_failed_step(outcomes: dict[str, Outcome]) -> None:
    _assert_resumed(outcomes["linear"], {"start": 1, "process": 2, "end": 1}, "LinearFlow")


def test_split_join_resumes_only_the_failed_branch(outcomes: dict[str, Outcome]) -> None:
    _assert_resumed(
        outcomes["branch"], {"start": 1, "left": 1, "right": 2, "join": 1, "end": 1}, "BranchFlow"
    )


def test_foreach_resumes_only_the_failed_item(outcomes: dict[str, Outcome]) -> None:
    expected = {"start": 1, "join": 1, "end": 1, **{f"body-{i}": 1 for i in range(6)}}
    expected["body-4"] = 2
    _assert_resumed(outcomes["foreach"], expected, "ForeachFlow")
