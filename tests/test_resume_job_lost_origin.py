"""A resume whose origin run lost a task's artifact index (``0.data.json``) in the datastore.

The origin is made the way metaflow-dagster runs a flow (``init``, then one ``step`` subprocess
per task), in a datastore of its own; then its ``start`` task's index is deleted. The resume job
runs in-process: it must fail naming the step, the origin run and where its files are, and a
resume of that failed resume must execute ``start`` again and finish.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, JobDefinition

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.flows import load_flow_shape
from tests.support.linear_origin import failed_linear_origin, linear_deployment

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "dagster-1f2e3d4c5b6a"


@pytest.fixture()
def linear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """The linear example deployed on a datastore in ``tmp_path``."""
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    return linear_deployment(tmp_path)


def _failure_descriptions(instance: DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    descriptions = []
    for record in records:
        event = record.event_log_entry.dagster_event
        assert event is not None and event.step_failure_data.user_failure_data is not None
        descriptions.append(event.step_failure_data.user_failure_data.description or "")
    return descriptions


def test_lost_task_index_fails_clearly_and_the_next_resume_reruns_the_step(
    linear: Deployment, tmp_path: Path
) -> None:
    workdir = tmp_path / "counters"
    failed_linear_origin(linear, ORIGIN, workdir)
    start_dir = tmp_path / ".metaflow" / "LinearFlow" / ORIGIN / "start"
    (start_dir / "1" / "0.data.json").unlink()
    job = build_resume_job(linear, load_flow_shape(linear.flow_file, linear.flow_name))
    instance = DagsterInstance.ephemeral()

    first = job.execute_in_process(
        run_config=resume_run_config(linear, ORIGIN), instance=instance, raise_on_error=False
    )
    assert not first.success
    (description,) = _failure_descriptions(instance, first.run_id)
    assert description.startswith(
        f"the origin run's datastore objects of step start are missing or unreadable under {start_dir}/ ("
    )
    assert description.endswith(
        "Resuming this run instead executes step start and the steps after it again "
        f"(the new run {make_run_id(first.run_id)} has no task of them)."
    )
    assert _counts(workdir) == {"start": 1, "process": 1}

    _resume_again_executes_start(job, linear, instance, first.run_id, workdir)


def test_lost_artifact_blob_fails_the_clone_naming_it_and_the_next_resume_reruns_the_step(
    linear: Deployment, tmp_path: Path
) -> None:
    import json

    workdir = tmp_path / "counters"
    failed_linear_origin(linear, ORIGIN, workdir)
    flow_root = tmp_path / ".metaflow" / "LinearFlow"
    index = json.loads((flow_root / ORIGIN / "start" / "1" / "0.data.json").read_text())
    key = index["objects"]["value"]
    blob = flow_root / "data" / key[:2] / key
    blob.unlink()
    job = build_resume_job(linear, load_flow_shape(linear.flow_file, linear.flow_name))
    instance = DagsterInstance.ephemeral()

    first = job.execute_in_process(
        run_config=resume_run_config(linear, ORIGIN), instance=instance, raise_on_error=False
    )
    assert not first.success
    (description,) = _failure_descriptions(instance, first.run_id)
    assert f"start/1 could not be cloned: artifact 'value' of LinearFlow/{ORIGIN}/start/1" in description
    assert f"is missing from the datastore ({blob})" in description
    # Nothing ran: process reads start, which is not in the new run.
    assert _counts(workdir) == {"start": 1, "process": 1}

    _resume_again_executes_start(job, linear, instance, first.run_id, workdir)


def _counts(workdir: Path) -> dict[str, int]:
    """How many times each step's user code ran, from the flow's counter files."""
    return {p.stem: len(p.read_text().splitlines()) for p in workdir.glob("*.count")}


def _resume_again_executes_start(
    job: JobDefinition, linear: Deployment, instance: DagsterInstance, failed_run_id: str, workdir: Path
) -> None:
    """Resuming the failed resume executes start again, then the rest: the lineage ends there."""
    second = job.execute_in_process(
        run_config=resume_run_config(linear, make_run_id(failed_run_id)),
        instance=instance,
        raise_on_error=False,
    )
    assert second.success
    assert _counts(workdir) == {"start": 2, "process": 2, "end": 1}
