"""One real deployment shared by every end-to-end test of the session.

A fresh PostgreSQL database, a ``DAGSTER_HOME`` holding this repo's ``dagster.yaml``, and one
``dagster-daemon run`` started from the repo root, as the README deploys it, on this repo's
``workspace.yaml`` plus one code location per test flow (``TEST_FLOWS``, compiled by
metaflow-dagster when the session starts). The policy lists the example flows and the test flows,
ticks every 5 s and starts running.

The pieces shared with the unit tests and the benchmarks (databases, opening an instance, the
daemon's process, ``wait_until``, ``create_failed_run``) live in ``tests/support``.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from auto_resume.dagster import tags
from auto_resume.dagster.runs import FINISHED_STATUSES
from auto_resume.dagster.sensor import SENSOR_NAME
from auto_resume.metaflow.commands import compile_definitions
from auto_resume.metaflow.deployment import read_deployment
from tests.support import BIN, ROOT
from tests.support.instance import open_instance
from tests.support.postgres import create_database, drop_database, throwaway_database
from tests.support.processes import kill_processes_of, start_daemon, stop_daemon
from tests.support.waiting import wait_until

EXAMPLES = (
    "linear_flow",
    "branch_flow",
    "foreach_flow",
    "nested_foreach_flow",
    "multi_body_flow",
    "switch_flow",
    "decorated_flow",
)

# Flows only the end-to-end tests run, by code location: the session compiles each with
# metaflow-dagster, serves it beside the examples and lists it in the policy.
TEST_FLOWS = {
    # start and body carry a card; every task writes current.origin_run_id and prints.
    "parity_flow": ROOT / "tests" / "support" / "parity_flow.py",
    # A Config, a FlowMutator applied bare, a StepMutator, a user step decorator, a JSON parameter.
    "config_mutator_flow": ROOT / "tests" / "e2e" / "flows" / "config_mutator_flow.py",
    # @project: its job is feature_demo_ProjectFlow, its steps run on the branch test.e2e.
    "project_flow": ROOT / "tests" / "e2e" / "flows" / "project_flow.py",
}
# Top-level Metaflow options a test flow is compiled with, beside the local datastore and metadata.
TEST_FLOW_OPTIONS = {"project_flow": ("--branch=e2e",)}
# The flow of each compiled test flow's job (job name -> flow name), once compiled.
TEST_FLOW_JOBS: dict[str, str] = {}


FLOW_FILE_JOB = "SwitchFromFile"
# Resume runs whose origin OriginWatch found byte-identical, per finished session deployment
# (the e2e conftest prints it in pytest's summary).
VERIFIED_ORIGINS: list[int] = []
ORIGIN_WATCH_BACKOFF = "  backoff:\n    initial_seconds: 4\n"


@dataclass(eq=False)
class Deployment:
    """The running deployment: where it keeps things and how to reach it.

    Whoever made it calls ``close`` once its daemon is stopped: that disposes the instances
    ``instance`` opened.
    """

    home: Path
    env: dict[str, str]
    policy_file: Path
    log_file: Path
    # The workspace its daemon serves and `launch` submits to (relative to the repo root).
    workspace: str = "workspace.yaml"
    # Checksums of the Metaflow runs its resumes start from (None: not watched).
    origins: "OriginWatch | None" = None
    # One instance per thread that asked (the origin watch and some tests poll from threads of
    # their own, as they did with an instance each), disposed by `close`.
    _instances: dict[int, DagsterInstance] = field(default_factory=dict, init=False, repr=False)
    _instances_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def instance(self) -> DagsterInstance:
        """The deployment's Dagster instance (its home and database), for the calling thread."""
        with self._instances_lock:
            key = threading.get_ident()
            if key not in self._instances:
                self._instances[key] = open_instance(self.home, self.env["DAGSTER_PG_URL"])
            return self._instances[key]

    def close(self) -> None:
        """Dispose every instance ``instance`` opened (their engines and watcher threads)."""
        with self._instances_lock:
            instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            instance.dispose()

    def diagnostics(self) -> str:
        """The daemon's log tail and the sensor's last ticks, for failure messages."""
        from dagster._core.scheduler.instigation import InstigatorType

        instance = self.instance()
        lines = [f"--- last lines of {self.log_file}", self.log_file.read_text()[-4000:]]
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.name != SENSOR_NAME:
                continue
            for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=8):
                data = tick.tick_data
                error = data.error.to_string()[-1500:] if data.error else ""
                lines.append(
                    f"--- tick {tick.status.value} runs={list(data.run_ids)} skip={data.skip_reason!r} "
                    f"cursor={data.cursor!r}\n{error}"
                )
        return "\n".join(lines)

    def launch(self, location: str, job: str, config: dict[str, object]) -> str:
        """Submit a run of a metaflow-dagster ``job`` with ``config`` for its start op."""
        return self.launch_with(location, job, {"ops": {"op_start": {"config": config}}})

    def launch_resume(self, location: str, job: str, config: dict[str, object]) -> str:
        """Submit a run of a resume ``job`` with ``config`` for its origin op, as typed by hand."""
        if self.origins is not None and isinstance(config.get("origin_run_id"), str):
            self.origins.snapshot(job.removesuffix("_resume"), str(config["origin_run_id"]))
        return self.launch_with(location, job, {"ops": {f"{job}__origin": {"config": config}}})

    def launch_with(
        self,
        location: str,
        job: str,
        run_config: dict[str, object],
        run_tags: dict[str, str] | None = None,
    ) -> str:
        """Submit a run of ``job`` through the instance's queue, as the UI would; its run id."""
        run_id = str(uuid.uuid4())
        command = [
            str(BIN / "dagster"),
            "job",
            "launch",
            "-w",
            self.location_workspace(location),
            "-l",
            location,
            "-j",
            job,
            "--run-id",
            run_id,
            *(("--tags", json.dumps(run_tags)) if run_tags else ()),
            "--config-json",
            json.dumps(run_config),
        ]
        result = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return run_id

    def location_workspace(self, location: str) -> str:
        """A workspace file holding only ``location`` of ``workspace`` (in ``home``); its path.

        `dagster job launch -w` starts a server for every location of the workspace it is given,
        about 12 s more per launch with all of them; the run it submits names its location
        alone, so the daemon runs it the same way. The whole workspace if it has no ``location``.
        """
        workspace = ROOT / self.workspace
        config = yaml.safe_load(workspace.read_text())
        entries = [e for e in config["load_from"] if next(iter(e.values())).get("location_name") == location]
        if len(entries) != 1:
            return self.workspace
        _make_absolute(entries, workspace.parent)
        path = self.home / f"workspace.{location}.yaml"
        path.write_text(yaml.safe_dump({"load_from": entries}, sort_keys=False))
        return str(path)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``auto-resume ARGS`` against this deployment, as an operator would."""
        return subprocess.run(
            [str(BIN / "auto-resume"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )


def origin_checksums(flow_name: str, run_id: str, datastore: Path | None = None) -> dict[str, str]:
    """sha256 of every file of a Metaflow run on the local datastore, and of every blob it names.

    The run's directory (task data indexes, attempt markers, its local metadata) plus the
    content-addressed blobs its tasks' ``*.data.json`` indexes point at, under ``data/``.
    """
    root = (datastore or ROOT / ".metaflow") / flow_name
    run_dir = root / run_id
    sums: dict[str, str] = {}
    blobs: set[str] = set()
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file():
            continue
        content = path.read_bytes()
        sums[str(path.relative_to(root))] = hashlib.sha256(content).hexdigest()
        if path.name.endswith(".data.json"):
            blobs.update(json.loads(content).get("objects", {}).values())
    for key in sorted(blobs):
        blob = root / "data" / key[:2] / key
        sums[f"data/{key[:2]}/{key}"] = (
            hashlib.sha256(blob.read_bytes()).hexdigest() if blob.is_file() else "-"
        )
    return sums


class OriginWatch:
    """Proof that no resume writes to the Metaflow run it starts from.

    A thread polls the instance for failed runs and takes the checksums of each one's Metaflow
    run as soon as it has failed (the session's policy delays resumes by a few seconds, so this
    comes before the resume); ``Deployment.launch_resume`` takes them for origins named by hand.
    ``check`` then compares, for every finished resume run, its origin's files with those
    checksums, and fails if one changed or if the checksums were taken after the resume began.
    """

    def __init__(self, deployment: "Deployment") -> None:
        self._deployment = deployment
        self._lock = threading.Lock()
        self._snapshots: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._seen_failures: set[str] = set()
        self._checked: set[str] = set()
        self.verified = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="origin-watch", daemon=True)

    def start(self) -> "OriginWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def snapshot(self, flow_name: str, run_id: str) -> None:
        """Take the checksums of ``flow_name/run_id`` now, unless taken already."""
        key = (flow_name, run_id)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", run_id):
            return  # not a Metaflow run id (the hostile-input test types such values by hand)
        with self._lock:
            if key in self._snapshots or not (ROOT / ".metaflow" / flow_name / run_id).is_dir():
                return
        taken_at = time.time()
        sums = origin_checksums(flow_name, run_id)
        with self._lock:
            self._snapshots.setdefault(key, (taken_at, sums))

    def _poll(self) -> None:
        from auto_resume.dagster.run_facts import metaflow_run_id

        instance = self._deployment.instance()
        while not self._stop.wait(0.25):
            try:
                failed = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]), limit=50)
                for run in failed:
                    if run.run_id in self._seen_failures:
                        continue
                    self._seen_failures.add(run.run_id)
                    origin = metaflow_run_id(instance, run.run_id)
                    if origin:
                        self.snapshot(_flow_name(run), origin)
            except Exception:  # a database blip: poll again
                logging.getLogger(__name__).exception("origin watch")

    def check(self) -> None:
        """Assert that the origin of every finished resume run is byte-identical to before."""
        instance = self._deployment.instance()
        problems = []
        for run in instance.get_runs(RunsFilter(statuses=list(FINISHED_STATUSES))):
            if not run.job_name.endswith("_resume") or run.run_id in self._checked:
                continue
            self._checked.add(run.run_id)
            ops = (run.run_config or {}).get("ops", {})
            origin = ops.get(f"{run.job_name}__origin", {}).get("config", {}).get("origin_run_id")
            key = (_flow_name(run), str(origin))
            with self._lock:
                snapshot = self._snapshots.get(key)
            if snapshot is None:
                continue  # not a Metaflow run on this datastore (a made-up failure, a hostile id)
            taken_at, before = snapshot
            record = instance.get_run_record_by_id(run.run_id)
            assert record is not None
            if taken_at >= record.create_timestamp.timestamp():
                problems.append(f"{key}: checksums taken after resume {run.run_id} was created")
                continue
            after = origin_checksums(*key)
            if after != before:
                changed = sorted(
                    name for name in set(before) | set(after) if before.get(name) != after.get(name)
                )
                problems.append(f"resume {run.run_id} changed its origin {key}: {changed[:10]}")
            else:
                self.verified += 1
        assert not problems, "\n".join(problems)


def _flow_name(run: DagsterRun) -> str:
    """The Metaflow flow of a run: auto-resume's jobs tag it, metaflow-dagster's are named after it
    (or, under @project, ``<project>_<Flow>``: the compiled test flows say which)."""
    return (
        run.tags.get("auto_resume/flow")
        or TEST_FLOW_JOBS.get(run.job_name)
        or run.job_name.removesuffix("_resume")
    )


def deployment_env(home: Path, database: str, policy_file: Path) -> dict[str, str]:
    """The environment of a deployment's daemon and of the commands run against it."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": database,
        "AUTO_RESUME_POLICY": str(policy_file),
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "auto-resume"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A new, empty database on the test server; dropped at the end."""
    with throwaway_database() as url:
        yield url


def write_policy(
    path: Path, max_attempts: int = 2, extra: str = "", definitions_files: tuple[Path, ...] = ()
) -> None:
    """A policy listing the repo's example flows (and ``definitions_files``), ticking every 5 s,
    running from the start."""
    examples = tuple(ROOT / "examples" / "generated" / (name + "_dagster.py") for name in EXAMPLES)
    flows = "".join(f"  - definitions_file: {file}\n" for file in examples + definitions_files)
    path.write_text(
        "version: 1\n"
        "sensor:\n  minimum_interval_seconds: 5\n  default_status: running\n"
        f"defaults:\n  max_attempts: {max_attempts}\n{extra}"
        f"flows:\n{flows}"
        # A conditional flow run by auto-resume's own job (metaflow-dagster's fails on it).
        f"  - flow_file: {ROOT / 'examples' / 'flows' / 'switch_flow.py'}\n"
        f"    job_name: {FLOW_FILE_JOB}\n"
    )


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Deployment]:
    """dagster-daemon on this repo's workspace.yaml and dagster.yaml, sensor running."""
    base = tmp_path_factory.mktemp("deployment")
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    policy_file = base / "policy.yaml"
    test_flows = compile_test_flows(base / "generated")
    # Resumes wait a few seconds after a failure: OriginWatch takes the origin's checksums first.
    write_policy(policy_file, extra=ORIGIN_WATCH_BACKOFF, definitions_files=tuple(test_flows.values()))
    env = deployment_env(home, database, policy_file)
    running = Deployment(
        home=home,
        env=env,
        policy_file=policy_file,
        log_file=base / "daemon.log",
        workspace=write_workspace(base / "workspace.yaml", test_flows),
    )
    daemon = start_daemon(running.workspace, env, running.log_file)
    watch = running.origins = OriginWatch(running)
    try:
        wait_for_first_tick(running, daemon)
        watch.start()
        yield running
        watch.stop()
        watch.check()
        VERIFIED_ORIGINS.append(watch.verified)
    finally:
        watch.stop()
        stop_daemon(daemon)
        kill_processes_of(home)  # before the session's database is dropped
        running.close()


def compile_test_flows(directory: Path) -> dict[str, Path]:
    """Each of ``TEST_FLOWS`` compiled by metaflow-dagster into ``directory``, as setup.sh compiles
    the examples (local datastore under the repo root); its definitions file, by location."""
    directory.mkdir()
    env = {
        **os.environ,
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "auto-resume"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(ROOT),
    }
    compiled = {}
    for location, flow_file in TEST_FLOWS.items():
        compiled[location] = directory / f"{location}_dagster.py"
        options = ("--datastore=local", "--metadata=local", *TEST_FLOW_OPTIONS.get(location, ()))
        compile_definitions(flow_file, compiled[location], env, options)
        compiled_flow = read_deployment(compiled[location])
        TEST_FLOW_JOBS[compiled_flow.job_name] = compiled_flow.flow_name
    return compiled


def write_workspace(path: Path, locations: dict[str, Path]) -> str:
    """The repo's ``workspace.yaml`` (paths made absolute) plus a code location per definitions
    file in ``locations``, written to ``path``; that path."""
    config = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    _make_absolute(config["load_from"], ROOT)
    config["load_from"] += [
        {"python_file": {"relative_path": str(file), "location_name": location}}
        for location, file in locations.items()
    ]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _make_absolute(entries: list[dict[str, dict[str, str]]], base: Path) -> None:
    """Resolve the paths of workspace ``entries`` against ``base``, their file's directory."""
    for entry in entries:
        for target in entry.values():
            for key in ("working_directory", "relative_path"):
                if key in target:
                    target[key] = str((base / target[key]).resolve())


def wait_for_first_tick(running: Deployment, daemon: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until the sensor has stored its first cursor: failures after that are seen."""
    from dagster._core.scheduler.instigation import InstigatorType

    instance = running.instance()

    def ticked() -> bool:
        if daemon.poll() is not None:
            pytest.fail(f"dagster-daemon exited:\n{running.log_file.read_text()[-5000:]}")
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            data = state.instigator_data
            if state.name == SENSOR_NAME and data is not None and getattr(data, "cursor", None):
                return True
        return False

    def log_tail() -> str:
        return running.log_file.read_text()[-5000:]

    wait_until(ticked, timeout, f"{SENSOR_NAME} did not tick", log_tail, interval=1)


def wait_for_run(instance: DagsterInstance, run_id: str, timeout: float = 300) -> DagsterRun:
    """Until the run has finished; the finished run."""

    def finished() -> DagsterRun | None:
        run = instance.get_run_by_id(run_id)
        return run if run is not None and run.status in FINISHED_STATUSES else None

    return wait_until(finished, timeout, f"run {run_id} did not finish")


def wait_for_resume_of(
    instance: DagsterInstance,
    failed_run_id: str,
    timeout: float = 120,
    deployment: "Deployment | None" = None,
) -> DagsterRun:
    """Until the sensor has created the resume run answering ``failed_run_id``."""

    def resumed() -> DagsterRun | None:
        runs = instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: failed_run_id}))
        assert len(runs) <= 1, f"{len(runs)} resume runs for {failed_run_id}"
        return runs[0] if runs else None

    details = deployment.diagnostics if deployment else None
    return wait_until(resumed, timeout, f"no resume run for {failed_run_id}", details)


def counts(workdir: Path) -> dict[str, int]:
    """How many times each task's user code ran, from the flows' counter files."""
    return {path.stem: len(path.read_text().splitlines()) for path in workdir.glob("*.count")}


class SeparateDeployment:
    """A deployment of its own (database, ``DAGSTER_HOME``, policy, daemon) beside the session's.

    For tests that restart the daemon or edit the policy, so that they do not disturb the tests
    sharing the session deployment. Use as a context manager; the database is dropped after.

    Args:
        base: A new directory for ``DAGSTER_HOME``, the policy and the daemon's log.
        server_url: SQLAlchemy URL of the PostgreSQL server to create the database on
            (default: the test server).
    """

    # Whether __exit__ SIGKILLs the deployment's processes still running once the daemon has
    # stopped (tests/support/processes.py kill_processes_of). The soak benchmark counts them.
    kill_leftovers = True

    def __init__(self, base: Path, server_url: str | None = None) -> None:
        self.base = base
        self.server_url = server_url
        self.database = ""
        self.deployment: Deployment | None = None
        self._daemon: subprocess.Popen[bytes] | None = None

    def configure_home(self, home: Path) -> str:
        """Write ``home/dagster.yaml`` (the repo's); the workspace the daemon is to serve."""
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        return "workspace.yaml"

    def __enter__(self) -> "SeparateDeployment":
        self.database = create_database(self.server_url)
        try:
            home = self.base / "dagster_home"
            home.mkdir(parents=True)
            workspace = self.configure_home(home)
            policy_file = self.base / "policy.yaml"
            write_policy(policy_file)
            env = deployment_env(home, self.database, policy_file)
            self.deployment = Deployment(
                home=home,
                env=env,
                policy_file=policy_file,
                log_file=self.base / "daemon.log",
                workspace=workspace,
            )
            self.start_daemon()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_daemon(self) -> None:
        """Start ``dagster-daemon run`` and wait until the sensor has a cursor."""
        assert self.deployment is not None and self._daemon is None
        self._daemon = start_daemon(self.deployment.workspace, self.deployment.env, self.deployment.log_file)
        wait_for_first_tick(self.deployment, self._daemon)

    def stop_daemon(self) -> None:
        """Stop the daemon (SIGTERM, as a service manager would), keeping everything stored."""
        if self._daemon is None:
            return
        stop_daemon(self._daemon)
        self._daemon = None

    def __exit__(self, *exc_info: object) -> None:
        self.stop_daemon()
        if self.deployment is not None:
            if self.kill_leftovers:
                kill_processes_of(self.deployment.home)
            self.deployment.close()
        if self.database:
            drop_database(self.database, self.server_url)


def sensor_ticks(instance: DagsterInstance, after: float = 0.0) -> list[Any]:
    """The sensor's ticks that started after ``after`` (POSIX time), oldest first."""
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == SENSOR_NAME:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
            return sorted(ticks, key=lambda tick: tick.timestamp)
    return []


def wait_for_ticks(instance: DagsterInstance, count: int, after: float, timeout: float = 120) -> list[Any]:
    """Until ``count`` sensor ticks that started after ``after`` have finished; those ticks."""

    def finished_ticks() -> list[Any]:
        ticks = [t for t in sensor_ticks(instance, after) if t.status.value != "STARTED"]
        return ticks if len(ticks) >= count else []

    return wait_until(finished_ticks, timeout, f"fewer than {count} sensor ticks after {after}")
