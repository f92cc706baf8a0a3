"""The job auto-resume builds for a ``flow_file:`` policy entry, executed in-process.

Each test runs real Metaflow step subprocesses on a datastore of its own; counter files written
by the flows' code show what ran. The flow job's runs must be interchangeable with
metaflow-dagster's: same run id scheme and task ids, resumable by the companion resume job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster.flow_job import build_flow_job, flow_file_deployment, flow_run_config
from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.flows import FlowFile, load_flow_file

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ROOT / "examples" / "flows"


def _local(flow: FlowFile, deployment: Deployment, datastore: Path) -> tuple[FlowFile, Deployment]:
    """``flow`` and ``deployment`` on a datastore of their own under ``datastore``."""
    top_args = tuple(
        f"--datastore-root={datastore / '.metaflow'}" if arg.startswith("--datastore-root=") else arg
        for arg in deployment.top_args
    )
    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(datastore)}
    flow = dataclasses.replace(flow, top_args=top_args, step_env=env)
    return flow, dataclasses.replace(deployment, top_args=top_args, step_env=env)


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))


def _counts(workdir: Path) -> dict[str, int]:
    return {path.stem: len(path.read_text().splitlines()) for path in workdir.glob("*.count")}


def _client(deployment: Deployment, run_id: str) -> dict[str, object]:
    probe = (
        "import json, sys\n"
        "from metaflow import Flow, namespace\n"
        "namespace(None)\n"
        "run = Flow(sys.argv[1])[sys.argv[2]]\n"
        "print(json.dumps({'successful': run.successful, 'alpha': run['end'].task.data.alpha,\n"
        "    'steps': sorted(s.id for s in run)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, deployment.flow_name, run_id],
        env={**os.environ, **deployment.step_env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _setup(name: str, tmp_path: Path) -> tuple[FlowFile, Deployment]:
    flow = load_flow_file(FLOWS / name)
    return _local(flow, flow_file_deployment(flow), tmp_path)


def test_conditional_flow_runs_the_branch_it_took(tmp_path: Path) -> None:
    flow, deployment = _setup("switch_flow.py", tmp_path)
    workdir = tmp_path / "counters"
    job = build_flow_job(deployment, flow)
    assert job.name == "SwitchFlow"
    config = flow_run_config(deployment, {"alpha": 42, "branch": "low", "workdir": str(workdir)})
    result = job.execute_in_process(run_config=config, instance=DagsterInstance.ephemeral())
    assert result.success
    assert _counts(workdir) == {"start": 1, "low": 1, "merge": 1, "end": 1}
    assert (workdir / "alpha.txt").read_text().split() == ["42", "-42"]
    seen = _client(deployment, make_run_id(result.run_id))
    assert seen["successful"] is True and seen["alpha"] == 42
    assert seen["steps"] == ["end", "low", "merge", "start"]


def test_failed_flow_run_is_resumed_by_the_resume_job(tmp_path: Path) -> None:
    flow, deployment = _setup("foreach_flow.py", tmp_path)
    workdir = tmp_path / "counters"
    instance = DagsterInstance.ephemeral()
    config = flow_run_config(
        deployment, {"alpha": 42, "width": 4, "fail_at": "body:2", "workdir": str(workdir)}
    )
    failed = build_flow_job(deployment, flow).execute_in_process(
        run_config=config, instance=instance, raise_on_error=False
    )
    assert not failed.success
    origin = make_run_id(failed.run_id)
    # metaflow-dagster's task ids, so either kind of run resumes the other.
    body = tmp_path / ".metaflow" / "ForeachFlow" / origin / "body"
    assert sorted(p.name for p in body.iterdir() if p.name != "_meta") == ["1-0", "1-1", "1-2", "1-3"]
    # The items that did not fail finished, though one failed beside them.
    assert _counts(workdir) == {"start": 1, "body-0": 1, "body-1": 1, "body-2": 1, "body-3": 1}

    resume = build_resume_job(deployment, flow.shape).execute_in_process(
        run_config=resume_run_config(deployment, origin), instance=instance
    )
    assert resume.success
    assert _counts(workdir) == {
        "start": 1,
        "body-0": 1,
        "body-1": 1,
        "body-2": 2,
        "body-3": 1,
        "join": 1,
        "end": 1,
    }
    assert _client(deployment, make_run_id(resume.run_id))["alpha"] == 42


def test_retry_and_environment_decorators_are_honoured(tmp_path: Path) -> None:
    flow, deployment = _setup("decorated_flow.py", tmp_path)
    assert deployment.step_options("flaky").max_user_code_retries == 1
    assert deployment.step_options("end").extra_env == {
        "AUTO_RESUME_EXAMPLE_VAR": "from-environment-decorator"
    }
    workdir = tmp_path / "counters"
    parameters = {
        "alpha": 42,
        "ratio": 2.5,
        "label": "two words",
        "loud": True,
        "config": {"layers": [3, 4], "name": "x"},
        "workdir": str(workdir),
    }
    result = build_flow_job(deployment, flow).execute_in_process(
        run_config=flow_run_config(deployment, parameters), instance=DagsterInstance.ephemeral()
    )
    assert result.success
    assert _client(deployment, make_run_id(result.run_id))["alpha"] == 42


def test_unknown_parameter_is_a_config_error(tmp_path: Path) -> None:
    flow, deployment = _setup("linear_flow.py", tmp_path)
    with pytest.raises(DagsterInvalidConfigError) as info:
        build_flow_job(deployment, flow).execute_in_process(
            run_config=flow_run_config(deployment, {"alpah": 3}), instance=DagsterInstance.ephemeral()
        )
    assert "alpah" in str(info.value)


def test_flow_file_with_two_flows_needs_flow_class(tmp_path: Path) -> None:
    flow_file = tmp_path / "two_flows.py"
    flow_file.write_text(
        "from metaflow import FlowSpec, step\n"
        "class AFlow(FlowSpec):\n    @step\n    def start(self):\n        self.next(self.end)\n"
        "    @step\n    def end(self):\n        pass\n"
        "class BFlow(AFlow):\n    pass\n"
    )
    with pytest.raises(MetaflowAccessError, match=r"defines 2 flow classes .*flow_class:"):
        load_flow_file(flow_file)
    assert load_flow_file(flow_file, "BFlow").shape.name == "BFlow"
