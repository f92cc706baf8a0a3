"""Flows using Metaflow's newer features, failed and resumed on the real daemon and PostgreSQL.

Two test flows (``tests/e2e/flows``), compiled by metaflow-dagster at session start and served
each as its own code location (``tests/e2e/harness.py``, ``TEST_FLOWS``):

- ``ConfigMutatorFlow``: a ``Config`` read from a file, a ``FlowMutator`` applied bare (the
  module-level name is the mutator, not the class) that adds a parameter and an
  ``@environment`` from the config, a ``StepMutator`` that adds ``@retry``, a user step
  decorator, a JSON parameter and one whose default is a ``config_expr``.
- ``ProjectFlow`` under ``@project(name="feature_demo")``, compiled with ``--branch=e2e``: its job
  is ``feature_demo_ProjectFlow``.

Each is launched with a step that fails once; the sensor resumes it through ``<job>_resume``. The
counter files the flows write show that no completed task ran again, and Metaflow's client sees
the resumed run successful, with the origin's config values, in the origin's project and branch.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterRun, DagsterRunStatus

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster.run_facts import metaflow_run_id
from tests.e2e.harness import ROOT, Deployment, counts, wait_for_resume_of, wait_for_run

pytestmark = pytest.mark.e2e

SETTINGS = {"greeting": "hello from the config", "scale": 3, "env": {"FEATURE_MODE": "from-config"}}


def _fail_and_resume(
    deployment: Deployment, location: str, job: str, config: dict[str, object]
) -> DagsterRun:
    """Launch ``job`` (its run fails), wait for the sensor's resume of it; the finished resume."""
    instance = deployment.instance()
    failed = wait_for_run(instance, deployment.launch(location, job, config))
    assert failed.status == DagsterRunStatus.FAILURE, deployment.diagnostics()
    resume = wait_for_run(instance, wait_for_resume_of(instance, failed.run_id, deployment=deployment).run_id)
    assert resume.status == DagsterRunStatus.SUCCESS, deployment.diagnostics()
    assert resume.job_name == f"{job}_resume"
    assert metaflow_run_id(instance, failed.run_id) == make_run_id(failed.run_id)
    return resume


@pytest.fixture()
def metaflow_client() -> Iterator[Any]:
    """Metaflow's client on the deployment's datastore (the repo root), in every namespace."""
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(ROOT)
    import metaflow

    metaflow.namespace(None)
    yield metaflow
    metaflow.namespace(None)


def test_config_and_mutators_flow_is_resumed(
    deployment: Deployment, tmp_path: Path, metaflow_client: Any
) -> None:
    workdir = tmp_path / "counters"
    config = {"workdir": str(workdir), "fail_at": "process,end", "weights": '{"a": 5}', "ratio": 0.25}
    resume = _fail_and_resume(deployment, "config_mutator_flow", "ConfigMutatorFlow", config)

    # process failed once in the origin and its mutator-added @retry ran it again; end failed.
    # The resume cloned start and process and ran end alone.
    assert counts(workdir) == {"start": 1, "process": 2, "end": 2}
    origin = json.loads((workdir / "result.json").read_text())
    assert origin.pop("origin_run_id") == resume.tags["auto_resume/origin_metaflow_run_id"]
    assert origin == {
        "greeting": "hello from the config",  # a parameter whose default is a config_expr
        "total": 15,  # scale (added by the FlowMutator, from the config) * the JSON weights
        "ratio": 0.25,
        "mode": "from-config",  # the @environment the FlowMutator added
        "stamp": "start:first",  # the user step decorator's artifact, cloned with start
        "settings": SETTINGS,
    }

    run = metaflow_client.Flow("ConfigMutatorFlow")[make_run_id(resume.run_id)]
    assert run.successful
    assert sorted(step.id for step in run) == ["end", "process", "start"]
    end = run["end"].task
    assert dict(end["settings"].data) == SETTINGS
    assert (end["scale"].data, end["weights"].data, end["ratio"].data) == (3, {"a": 5}, 0.25)


def test_project_flow_is_resumed_on_its_branch(
    deployment: Deployment, tmp_path: Path, metaflow_client: Any
) -> None:
    workdir = tmp_path / "counters"
    config = {"alpha": 7, "workdir": str(workdir), "fail_at": "process"}
    resume = _fail_and_resume(deployment, "project_flow", "feature_demo_ProjectFlow", config)

    assert counts(workdir) == {"start": 1, "process": 2, "end": 1}
    assert json.loads((workdir / "result.json").read_text()) == {
        "alpha": 7,
        "branch": "test.e2e",
        "project": "feature_demo",
        "project_flow_name": "feature_demo.test.e2e.ProjectFlow",
    }

    resumed_id = make_run_id(resume.run_id)
    origin_id = resume.tags["auto_resume/origin_metaflow_run_id"]
    flow = metaflow_client.Flow("ProjectFlow")
    resumed, origin = flow[resumed_id], flow[origin_id]
    assert resumed.successful and not origin.successful
    assert {"project:feature_demo", "project_branch:test.e2e"} <= origin.system_tags
    assert resumed.system_tags == origin.system_tags
    # Found in the branch's namespace, its steps too, as a run that never failed would be.
    metaflow_client.namespace("project_branch:test.e2e")
    latest = metaflow_client.Flow("ProjectFlow").latest_successful_run
    assert latest is not None and latest.id == resumed_id
    assert sorted(step.id for step in latest) == ["end", "process", "start"]
    assert latest["process"].task.data.branch == "test.e2e"
