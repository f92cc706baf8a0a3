"""``auto-resume ui``: the Dagster UI on a throwaway embedded instance, with a failure to watch.

A temporary ``DAGSTER_HOME`` gets a SQLite instance (``dagster.yaml`` with default storage), a
policy whose sensor ticks every 5 s and starts running, and a workspace of two code locations:
``auto_resume`` and the foreach example compiled by metaflow-dagster into that home.
``dagster dev`` serves it (webserver and daemon) on loopback; once the sensor has ticked, one
run of the example is launched through the webserver's GraphQL API with an item that fails once,
so the sensor resumes it. Ctrl-C stops ``dagster dev`` and removes the home.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterRunStatus

from auto_resume.cli.demo import EXAMPLES, FLOW_FILE, JOB_NAME
from auto_resume.core.errors import MetaflowAccessError
from auto_resume.dagster import tags
from auto_resume.dagster.runs import FINISHED_STATUSES
from auto_resume.dagster.sensor import SENSOR_NAME
from auto_resume.metaflow.commands import compile_definitions

FLOW_LOCATION = "foreach_flow"
AUTO_RESUME_LOCATION = "auto_resume"
REPOSITORY = "__repository__"  # the repository name Dagster gives a code location's Definitions
SENSOR_INTERVAL_SECONDS = 5  # the daemon's fastest tick
START_TIMEOUT_S = 300.0  # dagster dev loads two code locations, each importing Metaflow
STOP_TIMEOUT_S = 60.0
POLL_S = 1.0
HOST = "127.0.0.1"
# Run statuses as the GraphQL API spells them (DagsterRunStatus values).
_FINISHED = frozenset(status.value for status in FINISHED_STATUSES)

# The embedded instance: Dagster's default storage (SQLite under DAGSTER_HOME) and, as in the
# repo's dagster.yaml, runs queued for the daemon.
INSTANCE_YAML = """\
# Written by `auto-resume ui`: a throwaway SQLite instance (Dagster's default storage).
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 5
telemetry:
  enabled: false
nux:
  enabled: false
"""


class UiError(Exception):
    """The example did not compile, or ``dagster dev`` did not start or stopped on its own."""


@dataclass(frozen=True)
class Sandbox:
    """The throwaway home and what ``dagster dev`` serves from it."""

    home: Path
    workspace: Path
    policy: Path
    workdir: Path
    log_file: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DAGSTER_HOME"] = str(self.home)
        env["AUTO_RESUME_POLICY"] = str(self.policy)
        env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(self.home)
        # Metaflow refuses to run without a user name, and root does not count as one.
        env.setdefault("METAFLOW_USER", "auto-resume")
        return env


def make_sandbox(home: Path) -> Sandbox:
    """Write the instance, policy and workspace files into ``home``; compile the example there."""
    sandbox = Sandbox(
        home=home,
        workspace=home / "workspace.yaml",
        policy=home / "policy.yaml",
        workdir=home / "counters",
        log_file=home / "dagster-dev.log",
    )
    definitions_file = home / "foreach_flow_dagster.py"
    try:
        compile_definitions(EXAMPLES / FLOW_FILE, definitions_file, sandbox.env())
    except MetaflowAccessError as exc:
        raise UiError(str(exc)) from exc
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    sandbox.policy.write_text(
        "version: 1\n"
        f"sensor:\n  minimum_interval_seconds: {SENSOR_INTERVAL_SECONDS}\n  default_status: running\n"
        "defaults:\n  max_attempts: 2\n"
        f"flows:\n  - definitions_file: {definitions_file.name}\n"
    )
    sandbox.workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: auto_resume.definitions\n"
        f"      location_name: {AUTO_RESUME_LOCATION}\n"
        "  - python_file:\n"
        f"      relative_path: {definitions_file.name}\n"
        f"      location_name: {FLOW_LOCATION}\n"
    )
    return sandbox


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def run_ui(echo: Callable[[str], None], port: int | None, keep: bool, width: int, fail_index: int) -> None:
    """Serve the UI until Ctrl-C (or SIGTERM), reporting each stage through ``echo``.

    Raises:
        UiError: The example did not compile, or ``dagster dev`` did not start or stopped by itself.
    """
    home = Path(tempfile.mkdtemp(prefix="auto-resume-ui-"))
    echo(f"1. throwaway DAGSTER_HOME {home} (SQLite); compiling {EXAMPLES / FLOW_FILE} with metaflow-dagster")
    try:
        with _sigterm_as_interrupt():
            sandbox = make_sandbox(home)
            _serve(echo, sandbox, port or free_port(), width, fail_index, keep)
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        if keep:
            user = os.environ.get("METAFLOW_USER", "auto-resume")
            echo(
                f"kept {home}; serve it again with: cd {home} && DAGSTER_HOME={home} "
                f"METAFLOW_USER={user} dagster dev -w workspace.yaml"
            )
        else:
            shutil.rmtree(home, ignore_errors=True)


def _serve(
    echo: Callable[[str], None], sandbox: Sandbox, port: int, width: int, fail_index: int, keep: bool
) -> None:
    """Run ``dagster dev`` and the example; return only by an exception (Ctrl-C, or UiError)."""
    with _dagster_dev(sandbox, port) as (url, dev):
        echo(f"2. Dagster UI: {url}  (dagster dev: webserver and daemon; log {sandbox.log_file})")
        _watch(echo, url, dev, sandbox, width, fail_index)
        echo("Ctrl-C stops the UI" + ("." if keep else f" and removes {sandbox.home}."))
        while dev.poll() is None:
            time.sleep(POLL_S)
        raise UiError(f"dagster dev stopped with status {dev.returncode}: see {sandbox.log_file}")


def _watch(
    echo: Callable[[str], None],
    url: str,
    dev: subprocess.Popen[bytes],
    sandbox: Sandbox,
    width: int,
    fail_index: int,
) -> None:
    """Launch the failing example once the sensor has ticked; report the run and its resume."""
    # The sensor's first tick starts its cursor at the newest failure: only failures after it count.
    _wait(dev, sandbox, lambda: _sensor_ticked(url))
    echo(f"3. {SENSOR_NAME} is running and ticked (every {SENSOR_INTERVAL_SECONDS} s): {url}/automation")
    config = {"alpha": 7, "width": width, "workdir": str(sandbox.workdir), "fail_at": f"body:{fail_index}"}
    run_id = _launch(url, config)
    echo(f"4. launched {JOB_NAME} with {config}: item {fail_index} fails once")
    echo(f"   {url}/runs/{run_id}")
    status = _wait(dev, sandbox, lambda: _finished_status(url, run_id))
    echo(f"   run {run_id}: {status}")
    if status != DagsterRunStatus.FAILURE.value:
        return
    sensor_page = f"{url}/locations/{AUTO_RESUME_LOCATION}/sensors/{SENSOR_NAME}"
    echo(f"   waiting for {SENSOR_NAME} to resume it (its ticks: {sensor_page})")
    resume_id = _wait(dev, sandbox, lambda: _resume_of(url, run_id))
    echo(f"5. the sensor launched {JOB_NAME}_resume: {url}/runs/{resume_id}")
    status = _wait(dev, sandbox, lambda: _finished_status(url, resume_id))
    echo(f"   resume run {resume_id}: {status}")


@contextlib.contextmanager
def _dagster_dev(sandbox: Sandbox, port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``dagster dev`` on 127.0.0.1:port, in a session of its own so that Ctrl-C reaches only this
    process, which stops it with one SIGINT (as Ctrl-C in its own terminal would)."""
    url = f"http://{HOST}:{port}"
    dagster = Path(sys.executable).parent / "dagster"
    argv = [str(dagster), "dev", "-w", str(sandbox.workspace), "-h", HOST, "-p", str(port)]
    with sandbox.log_file.open("wb") as log:
        dev = subprocess.Popen(
            argv,
            cwd=sandbox.home,
            env=sandbox.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(dev, sandbox, lambda: _serving(url), timeout=START_TIMEOUT_S)
        yield url, dev
    finally:
        _stop(dev)


def _stop(dev: subprocess.Popen[bytes]) -> None:
    if dev.poll() is None:
        dev.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            dev.wait(timeout=STOP_TIMEOUT_S)
    # Whatever it left behind (webserver, daemon, code servers, run workers) is in its session.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(dev.pid, signal.SIGKILL)
    dev.wait()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _wait(
    dev: subprocess.Popen[bytes], sandbox: Sandbox, probe: Callable[[], Any], timeout: float | None = None
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail if ``dagster dev`` stops."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if dev.poll() is not None:
            raise UiError(f"dagster dev stopped with status {dev.returncode}: see {sandbox.log_file}")
        value = probe()
        if value:
            return value
        if deadline is not None and time.monotonic() > deadline:
            raise UiError(f"dagster dev not ready after {timeout:.0f} s: see {sandbox.log_file}")
        time.sleep(POLL_S)


def _serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            document: dict[str, Any] = json.load(response)
    except OSError as exc:
        raise UiError(f"the webserver at {url} does not answer ({exc})") from exc
    if document.get("errors"):
        raise UiError(f"GraphQL error from {url}: {document['errors']}")
    data: dict[str, Any] = document["data"]
    return data


_SENSOR_TICKS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 1) { status } } }
  }
}
"""


def _sensor_ticked(url: str) -> bool:
    selector = {
        "repositoryLocationName": AUTO_RESUME_LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": SENSOR_NAME,
    }
    sensor = _graphql(url, _SENSOR_TICKS, {"selector": selector})["sensorOrError"]
    # Until the code location has loaded, the sensor is not found.
    return sensor["__typename"] == "Sensor" and bool(sensor["sensorState"]["ticks"])


def _launch(url: str, config: dict[str, Any]) -> str:
    from dagster_graphql import DagsterGraphQLClient

    address = urllib.parse.urlsplit(url)
    assert address.hostname is not None
    client = DagsterGraphQLClient(address.hostname, port_number=address.port)
    return client.submit_job_execution(
        JOB_NAME,
        repository_location_name=FLOW_LOCATION,
        repository_name=REPOSITORY,
        run_config={"ops": {"op_start": {"config": config}}},
    )


_RUNS = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId jobName status } } }
}
"""


def _runs(url: str, runs_filter: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = _graphql(url, _RUNS, {"filter": runs_filter})["runsOrError"]["results"]
    return results


def _finished_status(url: str, run_id: str) -> str | None:
    runs = _runs(url, {"runIds": [run_id]})
    status = runs[0]["status"] if runs else None
    return status if status in _FINISHED else None


def _resume_of(url: str, run_id: str) -> str | None:
    runs = _runs(url, {"tags": [{"key": tags.PARENT_RUN_ID, "value": run_id}]})
    return str(runs[0]["runId"]) if runs else None
