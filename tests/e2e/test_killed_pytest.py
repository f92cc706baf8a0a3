"""A test run killed from outside (a CI time limit, ``kill -9`` of pytest) leaves nothing running,
and neither does a deployment that ends normally.

A pytest of its own (``killed_pytest_child.py``) starts a deployment, daemon and code servers
as every end-to-end test does, and is SIGKILLed once the sensor ticks: no teardown runs. The
kernel SIGKILLs the daemon (it runs under ``setpriv --pdeathsig KILL``), and the code servers
it spawned stop once its heartbeat does (20 s in dagster-daemon). Every process that carried
that deployment's ``DAGSTER_HOME`` in its environment must be gone within 90 s.
"""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import SeparateDeployment
from tests.support import ROOT
from tests.support.postgres import drop_database
from tests.support.processes import kill_processes_of, processes_of, start_tied_to_this_thread
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CHILD = Path(__file__).with_name("killed_pytest_child.py")


@pytest.mark.slow
def test_killed_pytest_leaves_no_dagster_process(tmp_path: Path) -> None:
    env = {**os.environ, "AUTO_RESUME_KILLED_PYTEST_BASE": str(tmp_path)}
    home = tmp_path / "deployment" / "dagster_home"
    log_file = tmp_path / "child.log"
    with log_file.open("wb") as log:
        child = start_tied_to_this_thread(
            [sys.executable, "-m", "pytest", str(CHILD), "-q", "-s", "-p", "no:cacheprovider"],
            log=log,
            env=env,
            cwd=ROOT,
        )

    def log_tail() -> str:
        return log_file.read_text()[-4000:]

    try:
        wait_until(
            lambda: (tmp_path / "ready").exists() or child.poll() is not None,
            300,
            "the child's deployment did not start",
            log_tail,
            interval=1,
        )
        assert child.poll() is None, f"the child pytest exited:\n{log_tail()}"
        before = processes_of(home)
        # The daemon and a code server per location (auto_resume, linear_flow), at least.
        assert len(before) >= 3, before
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed_at = time.monotonic()

        def running() -> str:
            return "still running:\n" + "\n".join(f"{pid} {cmd}" for pid, cmd in processes_of(home).items())

        wait_until(lambda: not processes_of(home), 90, "processes outlived the killed pytest", running, 1)
        commands = "\n".join(f"  {command[:100]}" for command in sorted(before.values()))
        print(f"gone {time.monotonic() - killed_at:.0f}s after the pytest's SIGKILL:\n{commands}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        kill_processes_of(home)  # a failed proof must not leave them running either
        if (tmp_path / "database").exists():
            drop_database((tmp_path / "database").read_text())


def test_an_ended_deployment_leaves_no_dagster_process(tmp_path: Path) -> None:
    # Its database is dropped on the way out: a code server left running would never end.
    with SeparateDeployment(tmp_path) as separate:
        assert separate.deployment is not None
        home = separate.deployment.home
        running = processes_of(home)
        assert any("api grpc" in command for command in running.values()), running
    assert processes_of(home) == {}
