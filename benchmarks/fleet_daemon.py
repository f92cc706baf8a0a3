"""The real daemon serving a fleet: the ``auto_resume`` location and one code location per flow.

What a deployment of ``--flows`` flows needs in memory. A private deployment as
``tests/e2e/harness.py`` ``SeparateDeployment`` makes it (new PostgreSQL database,
``DAGSTER_HOME`` with this repo's ``dagster.yaml``, the real ``dagster-daemon``), with
``--flows`` renamed copies of the example ``LinearFlow`` (as ``benchmarks/many_flows.py``
writes them), each served as a code location of its own (``python_file``, as metaflow-dagster
users deploy flows), and a policy listing them all. Once every code server is up, it samples
the resident memory of the daemon and of every process under it for ``--watch`` seconds while
the sensor ticks every 5 s, and prints:

- the daemon process itself, the ``auto_resume`` location's code server, a flow location's
  code server (median), and the total of the process tree (peak of the samples);
- the proportional set size (PSS) of the same tree, which counts pages shared between the
  processes once;
- how long the daemon took from start until every code server was up.

Goal (issue 14): report the daemon's total memory with the 50 flow locations.

    METAFLOW_USER=bench .venv/bin/python benchmarks/fleet_daemon.py [--flows 50] [--watch 60]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _support import ROOT, machine
from many_flows import _policy, _write_fleet


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _field_mib(pid: int, name: str, path: str = "status") -> float:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _workspace(path: Path, files: list[Path]) -> None:
    entries = [
        "  - python_module:\n      module_name: auto_resume.definitions\n"
        f"      working_directory: {ROOT}\n      location_name: auto_resume\n"
    ]
    entries += [
        f"  - python_file:\n      relative_path: {file}\n      location_name: fleet{index:02d}\n"
        for index, file in enumerate(files)
    ]
    path.write_text("load_from:\n" + "".join(entries))


@contextmanager
def fleet_deployment(flows: int) -> Iterator[tuple[Any, list[Path], Path]]:
    """A private deployment (``SeparateDeployment``) whose policy and workspace list ``flows``
    renamed copies of LinearFlow, each a code location of its own, and ``auto_resume``, with its
    daemon stopped for the caller to start (``start_daemon``); the flows' definitions files; the
    workspace file. Its files are removed after."""
    from tests.e2e.harness import SeparateDeployment

    base = Path(tempfile.mkdtemp(prefix="auto-resume-fleet-"))
    fleet = base / "flows"
    fleet.mkdir()
    files = _write_fleet(fleet, flows)
    workspace = base / "workspace.yaml"
    _workspace(workspace, [])  # the first start (the harness's policy): the auto_resume location only

    class Fleet(SeparateDeployment):
        def configure_home(self, home: Path) -> str:
            shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
            return str(workspace)

    try:
        with Fleet(base) as separate:
            assert separate.deployment is not None
            separate.stop_daemon()
            _policy(separate.deployment.policy_file, files)
            _workspace(workspace, files)
            yield separate, files, workspace
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=50, help="flows, each a code location (default 50)")
    parser.add_argument("--watch", type=float, default=60.0, help="seconds of sampling once all are up")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--up-timeout", type=float, default=900.0, help="seconds to wait for the servers")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    print(machine())
    with fleet_deployment(args.flows) as (separate, _, _):
        started = time.monotonic()
        separate.start_daemon()  # returns once the sensor has ticked
        daemon = separate._daemon.pid  # type: ignore[union-attr]
        servers: list[int] = []
        while time.monotonic() - started < args.up_timeout:
            servers = [p for p in _descendants(daemon) if " api grpc" in _command(p)]
            if len(servers) >= args.flows + 1:
                break
            time.sleep(1)
        up = time.monotonic() - started
        print(f"{args.flows} flow locations + auto_resume: {len(servers)} servers up at +{up:.0f}s")
        time.sleep(min(30.0, args.watch))  # let the locations finish loading their definitions
        samples = []
        end = time.monotonic() + args.watch
        others: set[str] = set()
        while time.monotonic() < end:
            tree = _descendants(daemon)
            ours = [p for p in tree if "--location-name auto_resume" in _command(p)]
            flows = [p for p in tree if " api grpc" in _command(p) and p not in ours]
            others |= {_command(p)[:100] for p in tree if p not in ours and p not in flows}
            samples.append(
                (
                    _field_mib(daemon, "VmRSS"),
                    max([_field_mib(p, "VmRSS") for p in ours] or [0.0]),
                    statistics.median([_field_mib(p, "VmRSS") for p in flows] or [0.0]),
                    _field_mib(daemon, "VmRSS") + sum(_field_mib(p, "VmRSS") for p in tree),
                    _field_mib(daemon, "Pss", "smaps_rollup")
                    + sum(_field_mib(p, "Pss", "smaps_rollup") for p in tree),
                    len(tree),
                    len(ours),
                    len(flows),
                )
            )
            time.sleep(args.sample_every)
        peak = [max(column) for column in zip(*samples, strict=True)]
        print(f"resident memory, MiB (peak of {len(samples)} samples, {args.sample_every:g}s apart):")
        print(f"  the daemon process: {peak[0]:.0f}")
        print(f"  the auto_resume location's code server (the largest of up to {peak[6]:.0f}): {peak[1]:.0f}")
        print(f"  a flow location's code server (median of up to {peak[7]:.0f}): {peak[2]:.0f}")
        print(f"  the daemon and all {peak[5]:.0f} processes under it: {peak[3]:.0f} RSS, {peak[4]:.0f} PSS")
        for command in sorted(others):
            print(f"  also under the daemon: {command}")
    print(f"(load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())})")


if __name__ == "__main__":
    main()
