"""A failed LinearFlow origin made the way metaflow-dagster runs a flow, in a datastore of its own.

``init``, then one ``step`` subprocess per task with task id ``1`` (which leaves no task records
in Metaflow's local metadata); ``process`` fails on its first run. Shared by the unit tests that
run the resume job in-process against such an origin.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from auto_resume.metaflow.deployment import Deployment, read_deployment
from tests.support import ROOT


def linear_deployment(datastore: Path) -> Deployment:
    """The linear example's deployment, on a local datastore under ``datastore``."""
    base = read_deployment(ROOT / "examples" / "generated" / "linear_flow_dagster.py")
    top_args = tuple(
        f"--datastore-root={datastore / '.metaflow'}" if arg.startswith("--datastore-root=") else arg
        for arg in base.top_args
    )
    return dataclasses.replace(
        base,
        top_args=top_args,
        step_env={**base.step_env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(datastore)},
    )


def failed_linear_origin(
    deployment: Deployment, run_id: str, workdir: Path, alpha: int | None = None
) -> None:
    """init, start and a failing process as ``run_id``; counter files go to ``workdir``."""
    flow = [sys.executable, str(deployment.flow_file), *deployment.top_args]
    env = {
        **os.environ,
        **deployment.step_env,
        "METAFLOW_INIT_WORKDIR": str(workdir),
        "METAFLOW_INIT_FAIL_AT": "process",
        **({"METAFLOW_INIT_ALPHA": str(alpha)} if alpha is not None else {}),
    }
    commands = [
        ["init", f"--run-id={run_id}", "--task-id=params"],
        ["step", "start", f"--run-id={run_id}", "--task-id=1", f"--input-paths={run_id}/_parameters/params"],
        ["step", "process", f"--run-id={run_id}", "--task-id=1", f"--input-paths={run_id}/start/1"],
    ]
    for index, command in enumerate(commands):
        result = subprocess.run([*flow, *command], env=env, capture_output=True, text=True, check=False)
        failed_as_planned = (result.returncode != 0) == (index == len(commands) - 1)
        assert failed_as_planned, result.stderr[-2000:]


def example_linear_run(workdir: Path, definitions_file: Path, user: str, fail_at: str | None = None) -> str:
    """A LinearFlow run by Metaflow's own runtime in the examples' datastore (the repo's); its id.

    Args:
        workdir: Where the run id file and the flow's counter files go.
        definitions_file: The LinearFlow example compiled by metaflow-dagster.
        user: ``METAFLOW_USER`` of the run.
        fail_at: The step to fail (the run must then fail), or None for a run that finishes.
    """
    deployment = read_deployment(definitions_file)
    env = {**os.environ, "METAFLOW_USER": user, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(ROOT)}
    command = [
        sys.executable,
        str(deployment.flow_file),
        *deployment.top_args,
        "run",
        f"--run-id-file={workdir / 'run-id'}",
        f"--workdir={workdir / 'work'}",
        *((f"--fail_at={fail_at}",) if fail_at else ()),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if fail_at:
        assert result.returncode != 0, "the injected failure did not fail the Metaflow run"
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    return (workdir / "run-id").read_text().strip()
