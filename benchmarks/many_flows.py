"""The ``auto_resume`` code location with many flows in its policy: load time, memory, tick cost.

``--flows`` copies of the example ``LinearFlow`` (flow file and metaflow-dagster definitions
file, the class and job renamed ``Fleet00Flow``, ``Fleet01Flow``...) are written to a temporary
directory, with two policies: one that lists the first flow only, and one that lists them all.
On a new PostgreSQL database holding one failed run of ``Fleet00Flow``, a fresh Python process
per policy does what the location's code server does and reports:

- the load: importing Dagster and ``auto_resume``, then ``build_definitions(policy)`` (one
  resume job per flow, each flow's shape loaded through Metaflow), its time and the peak
  resident memory (VmHWM) after it;
- the tick: ``auto_resume_sensor``'s ``evaluate_tick`` deciding that one failure, median of
  ``--ticks`` evaluations (the cursor is not stored, so each decides it again).

The two processes alternate ``--rounds`` times (the machine's load drifts); the ratios are of
the medians. Goals (issue 14): with 50 flows, the location loads in <= 15 s, stays under
400 MiB, and a tick costs no more than 1.5x a tick over one flow.

    METAFLOW_USER=bench .venv/bin/python benchmarks/many_flows.py [--flows 50] [--ticks 20] [--rounds 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import ROOT, machine, postgres_instance

EXAMPLE_FLOW = ROOT / "auto_resume" / "examples" / "linear_flow.py"
EXAMPLE_DEFINITIONS = ROOT / "examples" / "generated" / "linear_flow_dagster.py"


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(policy: Path, ticks: int) -> None:
    """The measured process: prints one JSON line."""
    started = time.perf_counter()
    from dagster import DagsterInstance, build_sensor_context

    import auto_resume.dagster.code_location
    import auto_resume.dagster.sensor

    imported = time.perf_counter() - started
    started = time.perf_counter()
    defs = auto_resume.dagster.code_location.build_definitions(policy)
    built = time.perf_counter() - started
    loaded_peak = _peak_mib()
    sensor = defs.get_sensor_def(auto_resume.dagster.sensor.SENSOR_NAME)
    instance = DagsterInstance.get()
    cursor = json.dumps({"after": 0, "pending": []})
    seconds, requests = [], 0
    for _ in range(ticks):
        started = time.perf_counter()
        data = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor))
        seconds.append(time.perf_counter() - started)
        requests = len(data.run_requests or [])
    instance.dispose()
    result = {
        "jobs": len(list(defs.jobs or [])),
        "import": imported,
        "build": built,
        "loaded_peak": loaded_peak,
        "tick": statistics.median(seconds),
        "requests": requests,
        "peak": _peak_mib(),
    }
    print(json.dumps(result))


def _write_fleet(directory: Path, count: int) -> list[Path]:
    """``count`` renamed copies of LinearFlow: their definitions files."""
    (directory / "demo_support.py").write_text((EXAMPLE_FLOW.parent / "demo_support.py").read_text())
    flow_source = EXAMPLE_FLOW.read_text()
    definitions_source = EXAMPLE_DEFINITIONS.read_text()
    files = []
    for index in range(count):
        name = f"Fleet{index:02d}Flow"
        flow_file = directory / f"fleet{index:02d}_flow.py"
        flow_file.write_text(flow_source.replace("LinearFlow", name))
        definitions = definitions_source.replace(str(EXAMPLE_FLOW), str(flow_file)).replace(
            "LinearFlow", name
        )
        path = directory / f"fleet{index:02d}_flow_dagster.py"
        path.write_text(definitions)
        files.append(path)
    return files


def _policy(path: Path, files: list[Path]) -> Path:
    entries = "".join(f"  - definitions_file: {file}\n" for file in files)
    path.write_text(
        "version: 1\nsensor:\n  minimum_interval_seconds: 5\n  default_status: running\n"
        f"defaults:\n  max_attempts: 1\nflows:\n{entries}"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=50, help="flows in the big policy (default 50)")
    parser.add_argument("--ticks", type=int, default=20, help="tick evaluations per process (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two processes")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")
    if args.child:
        child(args.child, args.ticks)
        return

    from tests.support.failed_runs import create_failed_run

    print(machine())
    with postgres_instance() as instance, tempfile.TemporaryDirectory(prefix="auto-resume-fleet-") as scratch:
        files = _write_fleet(Path(scratch), args.flows)
        policies = {
            1: _policy(Path(scratch) / "one.yaml", files[:1]),
            args.flows: _policy(Path(scratch) / "all.yaml", files),
        }
        create_failed_run(instance, "Fleet00Flow")  # type: ignore[arg-type]
        results: dict[int, list[dict[str, float]]] = {n: [] for n in policies}
        for _ in range(args.rounds):
            for flows, policy in policies.items():
                command = [sys.executable, __file__, "--child", str(policy), "--ticks", str(args.ticks)]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-3000:])
                results[flows].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"a fresh process per policy, {args.rounds} rounds alternating; medians (one failure to decide)")
    print(f"{'flows':>5} {'jobs':>5} {'import':>7} {'build':>7} {'peak':>9} {'tick':>8}  requests")
    median: dict[int, dict[str, float]] = {}
    for flows, rows in results.items():
        median[flows] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        m = median[flows]
        print(
            f"{flows:>5} {m['jobs']:>5.0f} {m['import']:>6.2f}s {m['build']:>6.2f}s "
            f"{m['peak']:>5.0f} MiB {m['tick'] * 1000:>6.1f}ms  {m['requests']:.0f}"
        )
    one, many = median[1], median[args.flows]
    load = many["import"] + many["build"]
    print(f"{args.flows} flows: location load (import + build_definitions) {load:.1f}s (goal <= 15 s)")
    print(f"{args.flows} flows: peak memory {many['peak']:.0f} MiB (goal < 400 MiB)")
    print(f"tick over {args.flows} flows / over 1 flow: {many['tick'] / one['tick']:.2f}x (goal <= 1.5x)")
    print(f"(load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())})")


if __name__ == "__main__":
    main()
