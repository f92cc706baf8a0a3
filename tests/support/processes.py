"""Long-running helper processes that die with the test process, and free ports for them.

A test run killed from outside (a CI time limit, ``kill -9`` of pytest) runs no teardown, so
nothing the tests started may depend on teardown to stop. Each process here is started under
``setpriv --pdeathsig KILL`` (util-linux): the kernel SIGKILLs it when the thread that started
it dies. That is the thread, not the process: start these from the thread that lives as long
as they should (pytest's main thread), never from a short-lived worker thread.

What such a process starts in turn is not covered by the kernel; for ``dagster-daemon`` that
is its gRPC code servers, which shut themselves down once their heartbeat from the daemon
stops (30 s), and run workers, which finish the run they were given. The end-to-end test
``test_killed_pytest.py`` proves the whole tree is gone within a minute.

At normal teardown the daemon is stopped with SIGTERM, as a service manager would, and its
process group (it leads one, with its code servers) is SIGKILLed only if it does not stop.
"""

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from tests.support import BIN, ROOT

DAEMON_STOP_TIMEOUT_S = 30.0


def start_tied_to_this_thread(
    argv: Sequence[str],
    *,
    log: IO[bytes] | IO[str],
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    own_process_group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` so that the kernel SIGKILLs it when the calling thread dies.

    Args:
        argv: The command.
        log: Where its stdout and stderr go.
        env: Its environment (default: this process's).
        cwd: Its working directory (default: the repository root).
        own_process_group: Start it in a new session, leading a process group of its own, so
            that it and everything it starts can be signalled at once (``kill_process_group``).
    """
    return subprocess.Popen(
        ["setpriv", "--pdeathsig", "KILL", "--", *argv],
        cwd=cwd,
        env=None if env is None else dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_process_group,
    )


def start_daemon(workspace: str | Path, env: Mapping[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """``dagster-daemon run -w workspace`` from the repository root, as the README deploys it.

    It leads a process group of its own (with the code servers it spawns), appends to
    ``log_file``, and is SIGKILLed by the kernel if the calling thread dies first.
    """
    with log_file.open("a") as log:
        return start_tied_to_this_thread(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            log=log,
            env=env,
            own_process_group=True,
        )


def stop_daemon(daemon: subprocess.Popen[bytes], timeout: float = DAEMON_STOP_TIMEOUT_S) -> None:
    """SIGTERM, as a service manager stops it; its whole process group SIGKILLed if it lingers."""
    daemon.terminate()
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(daemon)


def kill_process_group(leader: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``leader`` leads, as a host crash or the OOM killer would; reap it."""
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


def processes_of(home: Path) -> dict[int, str]:
    """Live processes whose environment names ``home`` as ``DAGSTER_HOME``: their command lines.

    A deployment's daemon, its code servers and run workers all carry it (they inherit the
    daemon's environment), whichever process group they are in.
    """
    marker = f"DAGSTER_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # empty for a zombie: it runs nothing
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if marker in environ.split(b"\0"):
            found[int(entry.name)] = command.strip()
    return found


def kill_processes_of(home: Path) -> None:
    """SIGKILL what is left of a deployment after its daemon stopped, before its database goes.

    A code server outlives a SIGTERMed daemon by up to its heartbeat timeout, and one whose
    database is dropped meanwhile never ends: its cleanup thread dies on the missing database
    (a ``DagsterPostgresException``) and with it the only path to shutting down. Test teardown
    therefore ends them itself.
    """
    for pid in processes_of(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
