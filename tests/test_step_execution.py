"""A task that a resume executes is a task of a Metaflow resume: its origin and its logs.

The origin is a run of the ``flow_file:`` job (metaflow-dagster's task ids) whose ``process``
fails once; the resume job then runs in-process. What the flow's code saw and what the client
reads must be what ``python flow.py resume`` leaves (tests/test_metaflow_parity.py compares the
two field by field).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster.flow_job import build_flow_job, flow_run_config
from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
from tests.support.client_probe import client_probe
from tests.support.parity_deployment import parity_deployment

PROBE = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
run = Flow('ParityFlow')[sys.argv[1]]
task = run['process'].task
print(json.dumps({'run_origin': run.origin_pathspec, 'step_origin': run['process'].origin_pathspec,
    'origin_run_id': task.metadata_dict.get('origin-run-id'), 'stdout': task.stdout,
    'stderr': task.stderr}))
"""


def test_an_executed_task_knows_its_origin_and_keeps_its_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))
    parity = parity_deployment(tmp_path)
    flow_file, flow, deployment = parity.flow_file, parity.flow, parity.deployment
    top_args, env = parity.top_args, parity.env
    workdir = tmp_path / "side-effects"
    instance = DagsterInstance.ephemeral()
    parameters = {"width": 1, "fail_at": "process", "workdir": str(workdir)}
    failed = build_flow_job(deployment, flow).execute_in_process(
        run_config=flow_run_config(deployment, parameters), instance=instance, raise_on_error=False
    )
    assert not failed.success
    origin = make_run_id(failed.run_id)

    resumed = build_resume_job(deployment, flow.shape).execute_in_process(
        run_config=resume_run_config(deployment, origin), instance=instance
    )
    run_id = make_run_id(resumed.run_id)
    lines = (workdir / "process.origin").read_text().splitlines()
    assert lines == [f"{origin} None", f"{run_id} {origin}"]  # current.origin_run_id
    seen = client_probe(PROBE, run_id, env={**os.environ, **deployment.step_env})
    assert seen == {
        "run_origin": f"ParityFlow/{origin}",
        "step_origin": f"ParityFlow/{origin}/process",
        "origin_run_id": origin,
        "stdout": "stdout of process\n",
        "stderr": "stderr of process\n",
    }
    # `python flow.py logs` reads the same logs.
    logs = subprocess.run(
        [sys.executable, str(flow_file), *top_args, "logs", f"{run_id}/process/1"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert "stdout of process" in logs.stdout and "stderr of process" in logs.stdout + logs.stderr
    # The op's log shows the task's output, though the task succeeded.
    messages = [
        record.event_log_entry.user_message for record in instance.get_records_for_run(resumed.run_id).records
    ]
    assert any("stdout of process" in message for message in messages)
    assert any("stderr of process" in message for message in messages)
