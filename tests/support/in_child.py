"""A flow's metaflow-dagster job, or auto-resume's resume job of it, run in a Python of its own.

Metaflow reads its configuration (datastore, metadata service) when first imported, so a test
that points a run at another backend (S3, a metadata service) runs each job in a child process
with that backend's environment: ``python -m tests.support.in_child origin|resume ...``.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from auto_resume.metaflow.deployment import read_deployment

# The jobs' console logs at ERROR: the child's last line of output is its JSON outcome.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def run_in_child(mode: str, env: dict[str, str], cwd: Path, *args: str) -> dict[str, Any]:
    """Run ``mode`` (origin: DEFINITIONS PARAMS_JSON; resume: DEFINITIONS ORIGIN_RUN) in a child.

    Returns:
        The child's outcome: ``success`` and ``run_id``, and for a resume the steps' ``summary``.
    """
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.in_child", mode, *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _run_origin(definitions: str, params: str) -> dict[str, Any]:
    """Execute the definitions file's job in-process, as a run of metaflow-dagster's job."""
    import runpy

    from dagster import DagsterInstance

    job = runpy.run_path(definitions)[read_deployment(Path(definitions)).job_name]
    result = job.execute_in_process(
        run_config={"ops": {"op_start": {"config": json.loads(params)}}, **QUIET},
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    return {"success": result.success, "run_id": result.run_id}


def _run_resume(definitions: str, origin_run: str) -> dict[str, Any]:
    """Execute auto-resume's companion job for the definitions file in-process."""
    from dagster import DagsterInstance

    from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
    from auto_resume.metaflow.flows import load_flow_shape

    deployment = read_deployment(Path(definitions))
    job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config={**resume_run_config(deployment, origin_run), **QUIET},
        instance=instance,
        raise_on_error=False,
    )
    summary = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message.startswith("step ")]
    return {"success": result.success, "run_id": result.run_id, "summary": summary}


if __name__ == "__main__":
    _mode, *_args = sys.argv[1:]
    _outcome = _run_origin(*_args) if _mode == "origin" else _run_resume(*_args)
    sys.stdout.write(json.dumps(_outcome) + "\n")
