"""Flows that use Metaflow's features resume like any other: ``Config`` with mutators, ``@project``,
``@timeout`` and ``@resources``, user step decorators.

Each flow of ``tests/e2e/flows`` is compiled by metaflow-dagster into a datastore of the test's
own; its job fails once (in a Python child, ``tests.support.in_child``) and ``<job>_resume``
resumes it. The counter files its code writes show what ran; Metaflow's client, asked from a
fresh process, must see the resumed run as it sees the origin: the same system tags (the
project and its branch), the config values, successful. The end-to-end test
(``tests/e2e/test_flow_features_e2e.py``) does the same on the real daemon.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from auto_resume.core.run_ids import make_run_id
from auto_resume.metaflow.commands import compile_definitions
from auto_resume.metaflow.deployment import read_deployment
from tests.support import ROOT
from tests.support.client_probe import client_probe
from tests.support.in_child import run_in_child

FLOWS = ROOT / "tests" / "e2e" / "flows"

_PROBE = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
run = Flow(sys.argv[1])[sys.argv[2]]
view = {"successful": run.successful, "system_tags": sorted(run.system_tags),
        "steps": sorted(step.id for step in run)}
if len(sys.argv) > 3:  # STEP NAME...: those artifacts of the step's task
    task = run[sys.argv[3]].task
    view["artifacts"] = {name: json.loads(json.dumps(task[name].data, default=dict)) for name in sys.argv[4:]}
print(json.dumps(view))
"""

_IN_PROJECT = """
import json, sys
from metaflow import Flow, namespace
namespace("project_branch:" + sys.argv[2])
latest = Flow(sys.argv[1]).latest_successful_run
steps = {step.id: sorted(task.id for task in step) for step in latest} if latest else {}
print(json.dumps({"latest_successful": latest.id if latest else None, "steps": steps}))
"""


def _environment(sysroot: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")},
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "auto-resume"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(sysroot),
        "PYTHONPATH": str(ROOT),
    }


def _fail_and_resume(
    tmp_path: Path, flow_file: Path, backends: tuple[str, ...], params: dict[str, Any]
) -> tuple[str, str, dict[str, Any], str]:
    """Compile ``flow_file``, fail a run of its job, resume it: (origin, resume, summary, flow)."""
    sysroot = tmp_path / "datastore"
    sysroot.mkdir()
    env = _environment(sysroot)
    definitions = tmp_path / f"{flow_file.stem}_dagster.py"
    compile_definitions(flow_file, definitions, env, ("--datastore=local", "--metadata=local", *backends))
    origin = run_in_child("origin", env, tmp_path, str(definitions), json.dumps(params))
    assert origin["success"] is False
    origin_run = make_run_id(origin["run_id"])
    resumed = run_in_child("resume", env, tmp_path, str(definitions), origin_run)
    assert resumed["success"] is True, resumed
    return origin_run, make_run_id(resumed["run_id"]), resumed, read_deployment(definitions).flow_name


def _counts(workdir: Path) -> dict[str, int]:
    return {path.stem: len(path.read_text().splitlines()) for path in workdir.glob("*.count")}


def test_project_flow_resumes_on_its_branch(tmp_path: Path) -> None:
    workdir = tmp_path / "counters"
    params = {"alpha": 7, "workdir": str(workdir), "fail_at": "process"}
    origin, resume, _, flow = _fail_and_resume(tmp_path, FLOWS / "project_flow.py", ("--branch=e2e",), params)
    assert _counts(workdir) == {"start": 1, "process": 2, "end": 1}
    assert json.loads((workdir / "result.json").read_text()) == {
        "alpha": 7,
        "branch": "test.e2e",
        "project": "feature_demo",
        "project_flow_name": "feature_demo.test.e2e.ProjectFlow",
    }

    env = _environment(tmp_path / "datastore")
    before = client_probe(_PROBE, flow, origin, env=env)
    after = client_probe(_PROBE, flow, resume, env=env)
    assert after["successful"] is True and after["steps"] == ["end", "process", "start"]
    # The resumed run is in the origin's project and branch, as `metaflow resume` puts it.
    project_tags = ["project:feature_demo", "project_branch:test.e2e"]
    assert set(project_tags) <= set(before["system_tags"])
    assert after["system_tags"] == before["system_tags"]
    # Its steps and tasks too: the client lists only the children in the namespace.
    in_branch = client_probe(_IN_PROJECT, flow, "test.e2e", env=env)
    assert in_branch == {
        "latest_successful": resume,
        "steps": {"start": ["1"], "process": ["1"], "end": ["1"]},
    }


def test_config_and_mutators_flow_resumes_with_its_config(tmp_path: Path) -> None:
    workdir = tmp_path / "counters"
    params = {"workdir": str(workdir), "fail_at": "process,end", "weights": '{"a": 5}', "ratio": 0.25}
    origin, resume, resumed, flow = _fail_and_resume(tmp_path, FLOWS / "config_mutator_flow.py", (), params)
    # start and process (its failure absorbed by the @retry a StepMutator added) are cloned.
    assert _counts(workdir) == {"start": 1, "process": 2, "end": 2}
    assert any(line.startswith("step process: 1 task(s) cloned") for line in resumed["summary"])
    result = json.loads((workdir / "result.json").read_text())
    assert result == {
        "greeting": "hello from the config",  # a parameter whose default is a config_expr
        "total": 15,  # scale (a parameter the FlowMutator added, from the config) * weights (JSON)
        "ratio": 0.25,
        "mode": "from-config",  # @environment the FlowMutator added, with the config's values
        "stamp": "start:first",  # the user step decorator's artifact, cloned with start
        "settings": {"greeting": "hello from the config", "scale": 3, "env": {"FEATURE_MODE": "from-config"}},
        "origin_run_id": origin,
    }
    env = _environment(tmp_path / "datastore")
    names = ("settings", "scale", "weights", "greeting", "total", "mode", "stamp")
    # The client lists no step of the origin (metaflow-dagster's task `1` has no record): the
    # resumed run's cloned `process` task shows what the origin computed.
    before = client_probe(_PROBE, flow, origin, env=env)
    after = client_probe(_PROBE, flow, resume, "process", *names, env=env)
    assert after["successful"] is True and after["steps"] == ["end", "process", "start"]
    assert after["system_tags"] == before["system_tags"]
    assert after["artifacts"] == {
        "settings": result["settings"],
        "scale": 3,
        "weights": {"a": 5},
        "greeting": "hello from the config",
        "total": 15,
        "mode": "from-config",
        "stamp": "start:first",
    }
    ended = client_probe(_PROBE, flow, resume, "end", *names, env=env)["artifacts"]
    assert ended == after["artifacts"]  # the executed end task saw the origin's config and values


def test_timeout_and_resources_hold_in_the_resume(tmp_path: Path) -> None:
    """@timeout stops the re-executed task too; @resources reaches it as metaflow-dagster passes it."""
    sysroot = tmp_path / "datastore"
    sysroot.mkdir()
    env = _environment(sysroot)
    definitions = tmp_path / "limits_flow_dagster.py"
    compile_definitions(FLOWS / "limits_flow.py", definitions, env)
    deployment = read_deployment(definitions)
    assert deployment.step_options("slow").with_decorators == ("resources:cpu=1,memory=512",)

    workdir = tmp_path / "counters"
    # slow hangs on its first two runs: in the origin and in the first resume.
    params = json.dumps({"hang_runs": 2, "workdir": str(workdir)})
    started = time.monotonic()
    origin = run_in_child("origin", env, tmp_path, str(definitions), params)
    assert origin["success"] is False and time.monotonic() - started < 60  # not the 120 s sleep
    started = time.monotonic()
    first = run_in_child("resume", env, tmp_path, str(definitions), make_run_id(origin["run_id"]))
    assert first["success"] is False and time.monotonic() - started < 60
    second = run_in_child("resume", env, tmp_path, str(definitions), make_run_id(first["run_id"]))
    assert second["success"] is True, second
    assert _counts(workdir) == {"start": 1, "slow": 3, "end": 1}
    assert any(line.startswith("step start: 1 task(s) cloned") for line in second["summary"])

    view = client_probe(_PROBE, deployment.flow_name, make_run_id(second["run_id"]), "end", "took", env=env)
    assert view["successful"] is True and view["artifacts"]["took"] >= 0  # the user decorator ran


@pytest.fixture(autouse=True)
def _metaflow_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "auto-resume"))
