"""Memory of the auto_resume code location: loaded, then evaluating its sensor over a burst.

On a new PostgreSQL database, writes ``--failures`` failed runs of ``LinearFlow`` (as
benchmarks/sensor_burst.py does), then starts a fresh Python process that does what the
location's code server does, and reports its memory after each stage:

1. ``import dagster`` and the ``auto_resume`` package;
2. ``build_definitions(policy)`` with the end-to-end tests' policy (the seven example flows:
   one resume job each, flow shapes loaded through Metaflow);
3. the instance opened (one query), and one sensor tick with nothing to decide;
4. one ``auto_resume_sensor`` tick over the burst (the sensor definition's ``evaluate_tick``,
   as the code server runs it for the daemon), cursor before the first failure;
5. ``--ticks`` more such ticks (does memory keep growing?).

Peak is ``VmHWM`` and current is ``VmRSS`` (/proc/self/status). ``ru_maxrss``
(``resource.getrusage``) is printed too, but on Linux it survives ``execve``: until the
process outgrows it, it shows the parent's resident size at ``fork`` (this script's own
process, with Dagster imported), not the child's.

    METAFLOW_USER=bench .venv/bin/python benchmarks/memory_peak.py [--failures 100] [--ticks 5]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import ROOT, machine, postgres_instance


def _memory() -> tuple[float, float, float]:
    """(VmHWM, VmRSS, ru_maxrss) of this process, MiB."""
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return int(status["VmHWM"][0]) / 1024, int(status["VmRSS"][0]) / 1024, maxrss


def child(policy: Path, ticks: int) -> None:
    """The measured process: prints one JSON line per stage."""
    stages = []

    def stage(name: str, seconds: float, note: str = "") -> None:
        peak, current, maxrss = _memory()
        stages.append(
            {
                "stage": name,
                "peak": peak,
                "current": current,
                "maxrss": maxrss,
                "seconds": seconds,
                "note": note,
            }
        )

    started = time.perf_counter()
    from dagster import DagsterInstance, build_sensor_context

    import auto_resume.dagster.code_location
    import auto_resume.dagster.sensor

    stage("import dagster + auto_resume", time.perf_counter() - started)
    started = time.perf_counter()
    defs = auto_resume.dagster.code_location.build_definitions(policy)
    jobs = len(list(defs.jobs or []))
    stage("build_definitions (code location loaded)", time.perf_counter() - started, f"{jobs} resume jobs")
    sensor = defs.get_sensor_def(auto_resume.dagster.sensor.SENSOR_NAME)
    started = time.perf_counter()
    instance = DagsterInstance.get()
    runs = instance.get_runs_count()
    stage("instance opened, one query", time.perf_counter() - started, f"{runs} runs stored")
    started = time.perf_counter()
    sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=json.dumps({"after": 1 << 62})))
    stage("one tick with nothing to decide", time.perf_counter() - started)
    cursor = json.dumps({"after": 0, "pending": []})
    for index in range(1 + ticks):
        started = time.perf_counter()
        data = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor))
        requests = len(data.run_requests or [])
        name = "one tick over the burst" if index == 0 else f"after {index + 1} ticks"
        if index == 0 or index == ticks:
            stage(name, time.perf_counter() - started, f"{requests} run requests")
    instance.dispose()
    print(json.dumps(stages))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", type=int, default=100, help="failed runs in the burst (default 100)")
    parser.add_argument("--ticks", type=int, default=5, help="more ticks over the same burst (default 5)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")
    if args.child:
        child(args.child, args.ticks)
        return

    from tests.e2e.harness import write_policy
    from tests.support.failed_runs import create_failed_run

    print(machine())
    with postgres_instance() as instance, tempfile.TemporaryDirectory() as scratch:
        policy = Path(scratch) / "policy.yaml"
        write_policy(policy)
        for _ in range(args.failures):
            create_failed_run(instance, "LinearFlow")  # type: ignore[arg-type]
        command = [sys.executable, __file__, "--child", str(policy), "--ticks", str(args.ticks)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        stages = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"a fresh process; {args.failures} failed runs to decide (MiB)")
    print(f"{'stage':<42} {'VmHWM':>7} {'VmRSS':>7} {'maxrss':>7} {'time':>7}  note")
    for row in stages:
        memory = f"{row['peak']:>7.1f} {row['current']:>7.1f} {row['maxrss']:>7.1f}"
        print(f"{row['stage']:<42} {memory} {row['seconds']:>6.2f}s  {row['note']}")
    idle, burst = stages[3]["peak"], stages[4]["peak"]
    print(f"peak added by deciding the burst: {burst - idle:.1f} MiB over a tick with nothing to decide")


if __name__ == "__main__":
    main()
