"""A flow declared by ``flow_file:`` in the policy, end to end on the real daemon and PostgreSQL.

No compile step: auto-resume builds the flow's job (``SwitchFromFile``, a conditional flow that
metaflow-dagster 0.3.7 cannot run) in its own code location. A run of it fails in the branch the
switch chose; the sensor resumes it; only that branch's failed step and what follows run again.
"""

import os
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.flow_job import flow_run_config
from auto_resume.dagster.run_facts import metaflow_run_id
from tests.e2e.harness import FLOW_FILE_JOB, ROOT, Deployment, counts, wait_for_resume_of, wait_for_run

pytestmark = pytest.mark.e2e


def test_flow_file_job_fails_and_is_resumed(deployment: Deployment, tmp_path: Path) -> None:
    instance = deployment.instance()
    workdir = tmp_path / "counters"
    parameters = {"alpha": 42, "branch": "low", "fail_at": "merge", "workdir": str(workdir)}
    run_config = flow_run_config_for_job(parameters)
    failed_id = deployment.launch_with("auto_resume", FLOW_FILE_JOB, run_config)
    failed = wait_for_run(instance, failed_id)
    assert failed.status == DagsterRunStatus.FAILURE, deployment.diagnostics()
    # The same Metaflow run id scheme as metaflow-dagster, logged where the sensor reads it.
    assert metaflow_run_id(instance, failed_id) == make_run_id(failed_id)

    resume = wait_for_run(instance, wait_for_resume_of(instance, failed_id, deployment=deployment).run_id)
    assert resume.status == DagsterRunStatus.SUCCESS, deployment.diagnostics()
    assert resume.job_name == f"{FLOW_FILE_JOB}_resume"
    assert resume.tags[tags.ORIGIN_METAFLOW_RUN_ID] == make_run_id(failed_id)
    assert counts(workdir) == {"start": 1, "low": 1, "merge": 2, "end": 1}
    assert (workdir / "alpha.txt").read_text().split() == ["42", "-42"]

    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(ROOT)
    from metaflow import Flow, namespace

    namespace(None)
    run = Flow("SwitchFlow")[make_run_id(resume.run_id)]
    assert run.successful
    assert sorted(step.id for step in run) == ["end", "low", "merge", "start"]


def flow_run_config_for_job(parameters: dict[str, object]) -> dict[str, object]:
    """The run config of the flow-file job, as typed in the Launchpad."""
    return {"ops": {f"{FLOW_FILE_JOB}__params": {"config": parameters}}}


def test_run_config_helper_matches_the_job() -> None:
    from auto_resume.metaflow.deployment import Deployment as FlowDeployment

    deployment = FlowDeployment(
        definitions_file=Path("x.py"),
        job_name=FLOW_FILE_JOB,
        flow_file=Path("x.py"),
        flow_name="SwitchFlow",
        top_args=(),
        step_env={},
        steps={},
    )
    assert flow_run_config(deployment, {"alpha": 1}) == flow_run_config_for_job({"alpha": 1})
