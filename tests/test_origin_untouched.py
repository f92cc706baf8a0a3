"""A resume reads its origin run and never writes to it.

The origin is made the way metaflow-dagster runs a flow (``init``, then one ``step`` subprocess
per task with task id ``1``, which leaves no task records in the local metadata), in a datastore
of its own. The companion resume job then runs in-process. Every file of the origin run's
directory, and every content-addressed blob that existed before, must be byte-identical after;
the Metaflow client must still read the new run and its cloned tasks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from dagster import DagsterInstance

from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.flows import load_flow_shape
from tests.support.client_probe import client_probe
from tests.support.linear_origin import failed_linear_origin, linear_deployment

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "dagster-0a1b2c3d4e5f"


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def linear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """The linear example deployed on a datastore in ``tmp_path``."""
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    return linear_deployment(tmp_path)


def test_resume_leaves_origin_byte_identical(linear: Deployment, tmp_path: Path) -> None:
    workdir = tmp_path / "counters"
    failed_linear_origin(linear, ORIGIN, workdir, alpha=42)
    flow_root = tmp_path / ".metaflow" / "LinearFlow"
    run_before = checksums(flow_root / ORIGIN)
    blobs_before = checksums(flow_root / "data")
    assert any(name.startswith("start/1/") for name in run_before)

    job = build_resume_job(linear, load_flow_shape(linear.flow_file, linear.flow_name))
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config=resume_run_config(linear, ORIGIN), instance=instance, raise_on_error=False
    )
    assert result.success

    assert checksums(flow_root / ORIGIN) == run_before
    blobs_after = checksums(flow_root / "data")
    assert {name: blobs_after.get(name) for name in blobs_before} == blobs_before
    counters = {path.stem: len(path.read_text().splitlines()) for path in workdir.glob("*.count")}
    assert counters == {"start": 1, "process": 2, "end": 1}

    # The client sees the new run, its cloned start task with the origin's data and metadata.
    new_runs = [p.name for p in flow_root.iterdir() if p.name.startswith("dagster-") and p.name != ORIGIN]
    assert len(new_runs) == 1
    probe = (
        "import json, sys\n"
        "from metaflow import Flow, namespace\n"
        "namespace(None)\n"
        "run = Flow('LinearFlow')[sys.argv[1]]\n"
        "start = run['start'].task\n"
        "print(json.dumps({'successful': run.successful, 'value': start.data.value,\n"
        "    'alpha': run['end'].task.data.alpha, 'finished': start.finished,\n"
        "    'metadata': start.metadata_dict}))\n"
    )
    seen = client_probe(probe, new_runs[0], env={**os.environ, **linear.step_env})
    assert seen["successful"] is True
    assert seen["value"] == 420 and seen["alpha"] == 42 and seen["finished"] is True
    assert seen["metadata"]["origin-run-id"] == ORIGIN
    assert seen["metadata"]["ds-type"] == "local"  # copied from the origin task, for logs
