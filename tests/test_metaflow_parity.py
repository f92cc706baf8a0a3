"""A resume by ``<job>_resume`` against ``python flow.py resume`` on the same failure, field by field.

One flow (tests/support/parity_flow.py: start with a card -> process -> a 3-item foreach body with
a card -> join -> end), one failure, run twice, each side on a local datastore and metadata of its
own:

- Metaflow: ``python flow.py run`` fails, ``python flow.py resume`` (Metaflow's own runtime),
  once or, for a resume of a resume, twice.
- auto-resume: an origin fails, made by the ``flow_file:`` job or as metaflow-dagster's job
  makes it (``init``, one ``step`` subprocess per task, task ``1`` left without a record), then
  ``<job>_resume`` runs in-process, once or twice.

Both sides also write ``current.origin_run_id`` from the flow's code, which must agree.

Then what the Metaflow client returns for the resumed run (asked from a fresh process, as a user's
notebook would) is compared: every run id is replaced by its role (``<origin>``, ``<resume>``...)
and every task id by its step and foreach index, since both differ by design. Whatever still
differs must be listed in ``ALLOWED`` with its reason (docs/internals.md, "What the Metaflow
client sees", says the same).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster.flow_job import build_flow_job, flow_file_deployment, flow_run_config
from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
from auto_resume.metaflow import commands
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.flows import FlowFile, load_flow_file
from tests.support import ROOT
from tests.support.client_probe import client_probe

pytestmark = pytest.mark.slow

FLOW_FILE = ROOT / "tests" / "support" / "parity_flow.py"
FLOW = "ParityFlow"

# Differences by design, hidden by normalising both documents before they are compared.
NORMALISED = {
    "run ids": "metaflow-dagster's `dagster-<sha1 of the Dagster run id>[:12]`; Metaflow's local "
    "provider numbers its runs: each is replaced by its role (<origin>, <resume1>, <resume>)",
    "task ids": "metaflow-dagster's ids (`1`, `1-<foreach index>`), which a resume keeps so either kind "
    "of run resumes the other; Metaflow numbers its tasks: each task (and `origin-task-id`) is named "
    "by its foreach index instead",
    "datastore root": "each side has a folder of its own (in the `workdir` artifact)",
    "`date:` system tag": "the day each run was made",
}

# What still differs, with why: (scenario, path of the field in the compared documents, with
# the foreach index as []) -> reason. Exact: a difference that goes away must leave the list.
_RECORDLESS = (
    "metaflow-dagster's task id `1` leaves no task record in the local metadata, so the client "
    "cannot open the origin task (Task(...) raises MetaflowNotFound): a clone of it cannot carry "
    "`origin-task-id` (the client reads the origin's metadata through it, and would fail), so its "
    "origin_pathspec is None; it names its origin in `auto-resume-origin-pathspec` instead. Making "
    "the record would write into the origin run"
)
_NO_CARD = (
    "the origin made no card: metaflow-dagster's task `1` has none, since `card create` opens "
    "Task(<its pathspec>), which the client cannot find (its stderr: 'Card render failed ... does "
    "not exist'). Metaflow's own origin has one, and get_cards follows the clone (or the clone of a "
    "clone) back to it"
)
ALLOWED: dict[tuple[str, str], str] = {
    **{
        ("foreach", f"steps/{step}/[]/{name}"): _RECORDLESS
        for step in ("start", "process")
        for name in ("origin-task-id", "origin_pathspec")
    },
    **{
        (scenario, f"steps/start/[]/cards/{name}"): _NO_CARD
        for scenario in ("foreach", "resume-of-resume")
        for name in ("error", "of_task", "origin_pathspec", "types")
    },
}


PROBE = r"""
import json, sys
from metaflow import Flow, Run, namespace
from metaflow.cards import get_cards
namespace(None)

def cards(task):
    try:
        found = get_cards(task)
    except Exception as exc:
        return {"error": type(exc).__name__}
    # A card's path: <flow>/runs/<run>/steps/<step>/tasks/<task>/cards/<type>-<uuid>.html
    owners = ["/".join(card.path.split("/")[i] for i in (0, 2, 4, 6)) for card in found]
    return {"types": sorted(card.type for card in found), "origin_pathspec": found.origin_pathspec,
            "of_task": sorted(owners)}

def task_view(task):
    meta = task.metadata_dict
    return {
        "id": task.id,
        "index": [frame.index for frame in task["_foreach_stack"].data],
        "origin-run-id": meta.get("origin-run-id"),
        "origin-task-id": meta.get("origin-task-id"),
        "attempt": meta.get("attempt"),
        "attempt_ok": meta.get("attempt_ok"),
        "ds-type": meta.get("ds-type"),
        "user": meta.get("user"),
        "origin_pathspec": task.origin_pathspec,
        "successful": task.successful,
        "finished": task.finished,
        "artifacts": {a.id: repr(a.data) for a in task if a.id != "name"},
        "stdout": task.stdout,
        "stderr": task.stderr,
        "cards": cards(task),
    }

def ids(run):  # only what maps task ids to foreach indices: the runs before the one compared
    return {"steps": {
        step.id: {"tasks": [{"id": t.id, "index": [f.index for f in t["_foreach_stack"].data]} for t in step]}
        for step in run
    }}

def view(run):
    return {
    "successful": run.successful,
    "finished": run.finished,
    "origin_pathspec": run.origin_pathspec,
    "system_tags": sorted(t for t in run.system_tags if not t.startswith("date:")),
    "user_tags": sorted(run.user_tags),
    "end_task": run.end_task.pathspec if run.end_task else None,
    "latest_run": Flow(flow).latest_run.pathspec,
    "latest_successful_run": Flow(flow).latest_successful_run.pathspec,
    "steps": {
        step.id: {"origin_pathspec": step.origin_pathspec, "tasks": [task_view(t) for t in step]}
        for step in run
    },
    }

flow, compared, others = sys.argv[1], sys.argv[2], sys.argv[3:]
documents = {run_id: ids(Run(f"{flow}/{run_id}")) for run_id in others}
documents[compared] = view(Run(f"{flow}/{compared}"))
print(json.dumps(documents))
"""


@dataclass(frozen=True)
class Side:
    """One side of the comparison: its datastore, and the runs it made (role -> run id)."""

    root: Path
    workdir: Path
    runs: dict[str, str]
    # What the client returned, by run id (filled by _probe).
    documents: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "METAFLOW_USER": os.environ.get("METAFLOW_USER", "tester"),
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(self.root),
        }

    @property
    def flow_file(self) -> Path:
        """The flow, copied beside the datastore: steps run in the flow's folder and write
        their cards under the first ``.metaflow`` found from there (the client reads them
        under the task's ``ds-root``)."""
        return self.root / FLOW_FILE.name


def _side(root: Path) -> Side:
    side = Side(root=root, workdir=root / "side-effects", runs={})
    (root / ".metaflow").mkdir(parents=True)
    shutil.copyfile(FLOW_FILE, side.flow_file)
    return side


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))


def _parameters(fail_at: str, fail_times: int, workdir: Path) -> dict[str, Any]:
    return {"alpha": 7, "width": 3, "fail_at": fail_at, "fail_times": fail_times, "workdir": str(workdir)}


def _metaflow_side(root: Path, fail_at: str, resumes: int) -> Side:
    """``python flow.py run`` (fails), then ``resume`` ``resumes`` times, each from the last run."""
    side = _side(root)
    flow = [sys.executable, str(side.flow_file), "--datastore=local", "--metadata=local", "--no-pylint"]
    options = [f"--{name}={value}" for name, value in _parameters(fail_at, resumes, side.workdir).items()]
    run_id_file = root / "run-id"
    argvs = [[*flow, "run", *options, f"--run-id-file={run_id_file}"]]
    for _ in range(resumes):
        argvs.append([*flow, "resume", "--origin-run-id", "{last}", f"--run-id-file={run_id_file}"])
    roles = _roles(resumes)
    for index, command in enumerate(argvs):
        argv = [arg.replace("{last}", side.runs.get(roles[index - 1], "")) for arg in command]
        result = subprocess.run(argv, env=side.env, cwd=root, capture_output=True, text=True, check=False)
        assert (result.returncode == 0) == (index == resumes), result.stderr[-3000:]
        side.runs[roles[index]] = run_id_file.read_text().strip()
    return side


def _deployment(side: Side) -> tuple[FlowFile, Deployment]:
    """The flow's deployment on the side's datastore (as tests/test_flow_job.py makes it)."""
    flow = load_flow_file(side.flow_file)
    top_args = tuple(
        f"--datastore-root={side.root / '.metaflow'}" if arg.startswith("--datastore-root=") else arg
        for arg in flow.top_args
    )
    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(side.root)}
    flow = replace(flow, top_args=top_args, step_env=env)
    return flow, replace(flow_file_deployment(flow), top_args=top_args, step_env=env)


def _auto_resume_side(root: Path, fail_at: str, resumes: int, origin: str) -> Side:
    """A failed origin, then ``<job>_resume`` ``resumes`` times, each from the run before.

    The origin is a run of the ``flow_file:`` job (``origin="flow job"``), or made as
    metaflow-dagster's job makes it (``origin="metaflow-dagster"``): ``init`` and one ``step``
    subprocess per task, none registered first, so task ``1`` has no record in the metadata.
    """
    side = _side(root)
    flow, deployment = _deployment(side)
    instance = DagsterInstance.ephemeral()
    roles = _roles(resumes)
    parameters = _parameters(fail_at, resumes, side.workdir)
    if origin == "flow job":
        result = build_flow_job(deployment, flow).execute_in_process(
            run_config=flow_run_config(deployment, parameters), instance=instance, raise_on_error=False
        )
        assert not result.success
        side.runs["origin"] = make_run_id(result.run_id)
    else:
        side.runs["origin"] = "dagster-0a1b2c3d4e5f"
        _metaflow_dagster_origin(deployment, side.runs["origin"], parameters)
    job = build_resume_job(deployment, flow.shape)
    for index in range(1, resumes + 1):
        result = job.execute_in_process(
            run_config=resume_run_config(deployment, side.runs[roles[index - 1]]),
            instance=instance,
            raise_on_error=False,
        )
        assert result.success == (index == resumes)
        side.runs[roles[index]] = make_run_id(result.run_id)
    return side


def _metaflow_dagster_origin(deployment: Deployment, run_id: str, parameters: dict[str, Any]) -> None:
    """The tasks metaflow-dagster's job runs, with its task ids, up to the first failed step."""
    init = commands.init_command(deployment, run_id, "params")
    assert commands.run_init(deployment, init, parameters).returncode == 0
    width = parameters["width"]
    tasks: list[tuple[str, str, list[str], int | None]] = [
        ("start", "1", [f"{run_id}/_parameters/params"], None),
        ("process", "1", [f"{run_id}/start/1"], None),
        *((("body", f"1-{i}", [f"{run_id}/process/1"], i)) for i in range(width)),
        ("join", "1", [f"{run_id}/body/1-{i}" for i in range(width)], None),
        ("end", "1", [f"{run_id}/join/1"], None),
    ]
    failed_step = None
    for step, task_id, inputs, split in tasks:
        if failed_step not in (None, step):
            return  # the steps after a failed one do not start; its siblings do
        command = commands.step_command(deployment, step, run_id, task_id, inputs, split, 0, None)
        if commands.run_step(deployment, command, step).returncode != 0:
            failed_step = step
    raise AssertionError("the origin was meant to fail")


def _roles(resumes: int) -> list[str]:
    return ["origin", *(f"resume{i}" for i in range(1, resumes)), "resume"]


def _view(side: Side, role: str) -> dict[str, Any]:
    """The client's document of the side's run ``role``, with every run id replaced by its role
    and every task id by its foreach index (``[1]``), in text and in ``origin-task-id``; each
    step's tasks keyed by foreach index (the client lists them by creation time)."""
    runs = {run_id: f"<{name}>" for name, run_id in side.runs.items()}
    keys = _task_keys(side)

    def text(value: str) -> str:
        value = value.replace(str(side.root), "<root>")
        for run_id, name in runs.items():
            value = re.sub(rf"(?<![\w-]){re.escape(run_id)}(?![\w-])", name, value)
        return re.sub(
            rf"{FLOW}/(<\w+>)/(\w+)/([\w-]+)",
            lambda m: f"{FLOW}/{m[1]}/{m[2]}/{_key(keys, m[1], m[2], m[3])}",
            value,
        )

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return text(value) if isinstance(value, str) else value

    document = _probe(side, side.runs[role])
    steps: dict[str, Any] = {}
    for step, data in document["steps"].items():
        tasks: dict[str, Any] = {"origin_pathspec": walk(data["origin_pathspec"])}
        for task in data["tasks"]:
            task = dict(task)
            task_id = task.pop("id")
            origin_task = task["origin-task-id"]
            if origin_task is not None:
                origin_run = runs.get(task["origin-run-id"], task["origin-run-id"])
                task["origin-task-id"] = _key(keys, origin_run, step, origin_task)
            tasks[_key(keys, f"<{role}>", step, task_id)] = walk(task)
        steps[step] = tasks
    return {**walk({k: v for k, v in document.items() if k != "steps"}), "steps": steps}


def _key(keys: dict[tuple[str, str, str], str], run: str, step: str, task_id: str) -> str:
    """A task's foreach index, from the client, or from metaflow-dagster's id for the tasks
    the client cannot list (``1`` -> ``[]``, ``1-2`` -> ``[2]``)."""
    if (run, step, task_id) in keys:
        return keys[(run, step, task_id)]
    if re.fullmatch(r"1(-\d+)*", task_id):
        return str([int(i) for i in task_id.split("-")[1:]])
    return task_id


def _task_keys(side: Side) -> dict[tuple[str, str, str], str]:
    """(<role>, step, task id) -> ``[indices]`` for every task the client lists in the side's runs."""
    keys: dict[tuple[str, str, str], str] = {}
    for role, run_id in side.runs.items():
        for step, data in _probe(side, run_id)["steps"].items():
            for task in data["tasks"]:
                keys[(f"<{role}>", step, task["id"])] = str(task["index"])
    return keys


def _probe(side: Side, run_id: str) -> dict[str, Any]:
    """The client's document of ``run_id``: the run compared in full, the others' task ids."""
    if not side.documents:
        others = [run for role, run in side.runs.items() if role != "resume"]
        side.documents.update(client_probe(PROBE, FLOW, side.runs["resume"], *others, env=side.env))
    document: dict[str, Any] = side.documents[run_id]
    return document


def _differences(expected: Any, actual: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            yield from _differences(expected.get(key), actual.get(key), f"{path}/{key}".lstrip("/"))
    elif expected != actual:
        yield path, expected, actual


def _compare(scenario: str, fail_at: str, resumes: int, origin: str, tmp_path: Path) -> None:
    # The two sides side by side: Metaflow's is subprocesses, waited for by a thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        metaflow_side = pool.submit(_metaflow_side, tmp_path / "metaflow", fail_at, resumes)
        ours = _auto_resume_side(tmp_path / "auto-resume", fail_at, resumes, origin)
        metaflow = metaflow_side.result()
    with ThreadPoolExecutor(max_workers=1) as pool:
        metaflow_view = pool.submit(_view, metaflow, "resume")
        actual = _view(ours, "resume")
        expected = metaflow_view.result()
    (tmp_path / "views.json").write_text(json.dumps({"metaflow": expected, "auto-resume": actual}, indent=1))
    found = {
        path: (want, got)
        for path, want, got in _differences(expected, actual)
        if (scenario, re.sub(r"/\[[\d, ]*\]/", "/[]/", path)) not in ALLOWED
    }
    assert not found, json.dumps(found, indent=1, default=str)
    # Every allowed difference is still there: the list says what a user sees, no more.
    allowed = {path for (name, path) in ALLOWED if name == scenario}
    seen = {re.sub(r"/\[[\d, ]*\]/", "/[]/", path) for path, _, _ in _differences(expected, actual)}
    assert seen == allowed
    # Flow code saw the same origin in every task it executed again.
    assert _origins_seen(metaflow) == _origins_seen(ours)


def _origins_seen(side: Side) -> dict[str, list[str]]:
    """``current.origin_run_id`` as each execution of each step wrote it, as roles."""
    roles = {run_id: f"<{role}>" for role, run_id in side.runs.items()}
    return {
        path.stem: [
            " ".join(roles.get(word, word) for word in line.split()) for line in path.read_text().splitlines()
        ]
        for path in sorted(side.workdir.glob("*.origin"))
    }


def test_a_resumed_linear_failure_reads_like_metaflow_resume(tmp_path: Path) -> None:
    # The origin is a run of the flow_file: job, whose tasks all have records: nothing differs.
    _compare("linear", "process", 1, "flow job", tmp_path)


def test_a_resumed_foreach_item_reads_like_metaflow_resume(tmp_path: Path) -> None:
    _compare("foreach", "body:1", 1, "metaflow-dagster", tmp_path)


def test_a_resume_of_a_resume_reads_like_metaflow_resume(tmp_path: Path) -> None:
    _compare("resume-of-resume", "body:1", 2, "metaflow-dagster", tmp_path)
