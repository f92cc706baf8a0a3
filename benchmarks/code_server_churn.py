"""What the daemon's workspace refresh costs a fleet, against code servers run beside it.

``dagster-daemon run`` refreshes its workspace every 60 s (``RELOAD_WORKSPACE_INTERVAL`` and
``check_workspace_freshness`` in ``dagster/_daemon/controller.py``): it forgets every code server
it started for a ``python_file`` or ``python_module`` entry and starts a new one, and the old one
stops once its heartbeat does (20 s later). A ``grpc_server`` entry names a server run by someone
else (``dagster code-server start``, ``dagster api grpc``): the daemon only reconnects to it.

Side by side in one run, for ``--flows`` renamed copies of the example ``LinearFlow`` (as
``benchmarks/many_flows.py`` writes them) and the ``auto_resume`` location, on a private
deployment as ``tests/e2e/harness.py`` ``SeparateDeployment`` makes it (new PostgreSQL database,
this repo's ``dagster.yaml``, the real daemon, the sensor ticking every 5 s):

- ``managed``: the workspace lists the definitions files (``python_file``, as the README deploys);
- ``served``: this script starts a ``dagster api grpc`` server per location and the workspace lists
  them as ``grpc_server`` entries.

Once every location is up and 30 s have passed, it watches ``--watch`` seconds and prints the CPU
time used by the daemon, everything under it and (``served``) the servers, as cores; how many code
servers were started meanwhile; then it writes one failed run of the first flow and prints how long
until the sensor created its resume run (the sensor works either way).

    METAFLOW_USER=bench .venv/bin/python benchmarks/code_server_churn.py [--flows 50] [--watch 300]
"""

import argparse
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _support import ROOT, machine
from fleet_daemon import _command, _descendants, fleet_deployment

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children it has reaped, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the command.
    return sum(int(value) for value in fields[11:15]) / TICKS_PER_SECOND


def _tree_cpu(roots: list[int]) -> float:
    """CPU time of ``roots`` and everything under them, reaped or alive."""
    pids = set(roots)
    for root in roots:
        pids.update(_descendants(root))
    return sum(_cpu_seconds(pid) for pid in pids)


def _servers_under(daemon: int) -> set[int]:
    return {pid for pid in _descendants(daemon) if " api grpc" in _command(pid)}


def _served_workspace(path: Path, ports: dict[str, int]) -> None:
    entries = [
        f"  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: {name}\n"
        for name, port in ports.items()
    ]
    path.write_text("load_from:\n" + "".join(entries))


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _start_servers(env: dict[str, str], files: list[Path], log: Path) -> tuple[dict[str, int], list[Any]]:
    """A ``dagster api grpc`` server per location, as a team would run them: ports, processes."""
    from tests.support import BIN
    from tests.support.processes import free_port, start_tied_to_this_thread

    targets = {"auto_resume": ["--module-name", "auto_resume.definitions", "--working-directory", str(ROOT)]}
    targets |= {f"fleet{index:02d}": ["--python-file", str(file)] for index, file in enumerate(files)}
    ports, processes = {}, []
    with log.open("a") as out:
        for name, target in targets.items():
            ports[name] = free_port()
            argv = [str(BIN / "dagster"), "api", "grpc", "--host", "127.0.0.1", "--port", str(ports[name])]
            processes.append(
                start_tied_to_this_thread([*argv, "--location-name", name, *target], log=out, env=env)
            )
    return ports, processes


def _watch(label: str, roots: list[int], daemon: int, seconds: float) -> None:
    before_servers, seen = _servers_under(daemon), set()
    before_cpu, started = _tree_cpu(roots), time.monotonic()
    while time.monotonic() - started < seconds:
        seen |= _servers_under(daemon)
        time.sleep(1)
    used, elapsed = _tree_cpu(roots) - before_cpu, time.monotonic() - started
    print(
        f"{label}: {used:.0f} CPU s in {elapsed:.0f} s = {used / elapsed:.2f} cores; "
        f"code servers started by the daemon meanwhile: {len(seen - before_servers)} "
        f"({len(seen - before_servers) * 60 / elapsed:.1f} a minute)"
    )


def _resume_latency(label: str, instance: Any, job: str) -> None:
    from dagster import RunsFilter

    from auto_resume.dagster import tags
    from tests.support.failed_runs import create_failed_run

    failed, written = create_failed_run(instance, job), time.monotonic()
    while time.monotonic() - written < 180:
        if instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: failed})):
            waited = time.monotonic() - written
            print(f"{label}: a failure of {job} had its resume run created {waited:.1f} s later")
            return
        time.sleep(0.5)
    print(f"{label}: no resume run for a failure of {job} within 180 s")


def _seconds_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` holds (``wait_until``'s failure after ``timeout``)."""
    from tests.support.waiting import wait_until

    started = time.monotonic()
    wait_until(condition, timeout, what, interval=1)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=50, help="flows, each a code location (default 50)")
    parser.add_argument("--watch", type=float, default=300.0, help="seconds of watching once all are up")
    parser.add_argument("--up-timeout", type=float, default=900.0, help="seconds to wait for the servers")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    print(machine())
    with fleet_deployment(args.flows) as (separate, files, workspace):
        deployment = separate.deployment
        assert deployment is not None
        instance = deployment.instance()
        separate.start_daemon()
        daemon = separate._daemon.pid  # type: ignore[union-attr]
        up = _seconds_until(
            lambda: len(_servers_under(daemon)) >= args.flows + 1, args.up_timeout, "servers not up"
        )
        print(f"managed: {args.flows + 1} code servers up at +{up:.0f} s")
        time.sleep(30)
        _watch("managed", [daemon], daemon, args.watch)
        _resume_latency("managed", instance, "Fleet00Flow")
        separate.stop_daemon()

        ports, servers = _start_servers(deployment.env, files, workspace.with_name("servers.log"))
        up = _seconds_until(lambda: all(map(_answers, ports.values())), args.up_timeout, "servers not up")
        print(f"served: {len(ports)} code servers answering at +{up:.0f} s")
        _served_workspace(workspace, ports)
        separate.start_daemon()
        daemon = separate._daemon.pid  # type: ignore[union-attr]
        time.sleep(30)
        _watch("served", [daemon, *(server.pid for server in servers)], daemon, args.watch)
        _resume_latency("served", instance, "Fleet01Flow")
        separate.stop_daemon()
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait()
    print(f"(load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())})")


if __name__ == "__main__":
    main()
