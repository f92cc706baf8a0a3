"""Failure-to-launch latency and a burst of failures, with the real ``dagster-daemon``.

A private deployment, like the end-to-end tests' (tests/e2e/harness.py ``SeparateDeployment``):
a new PostgreSQL database, a ``DAGSTER_HOME`` with this repo's ``dagster.yaml``, and
``dagster-daemon run -w workspace.yaml`` from the repo root, with ``AUTO_RESUME_POLICY`` naming a
policy that ticks at the minimum interval (5 s) and starts running.

1. Latency: ``--failures`` failed runs of ``LinearFlow``, ``--spacing`` seconds apart (not a
   multiple of the tick, so the failures land at different points of it). For each, the time
   from its RUN_FAILURE event to the creation of the resume run the sensor requested, and to
   that run's start (RUN_START: the queue daemon dequeued it and its run worker came up).
   Prints median / p90 / max.
2. Burst: the daemon is stopped, ``--burst`` failed runs are written (so that they are all
   there at the next tick, however long writing them takes on a loaded machine), and the
   daemon is started again with the run queue held (``max_concurrent_runs: 0`` in this
   deployment's copy of ``dagster.yaml``, so 100 run workers do not swamp the machine: what is
   measured is the queueing). The sensor's cursor is in the instance, so the restarted daemon
   picks the failures up. Prints the time from the daemon's first tick to the last resume run
   queued, and the ticks that created runs.

The failed runs are made through the instance API (``create_failed_run``: run row, the
metaflow-dagster command line, a RUN_FAILURE event with the Metaflow traceback), which is all
the sensor reads. Their Metaflow run id does not exist, so the resume runs started in part 1
fail in their first op; the policy allows one attempt, so nothing chains.

    METAFLOW_USER=bench .venv/bin/python benchmarks/daemon_latency.py [--failures 10] [--burst 100]
"""

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import ROOT, machine, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--failures", type=int, default=10, help="spaced failures for the latency (default 10)"
    )
    parser.add_argument("--spacing", type=float, default=7.0, help="seconds between them (default 7)")
    parser.add_argument("--burst", type=int, default=100, help="failures in the burst; 0: skip (default 100)")
    parser.add_argument("--keep", action="store_true", help="keep the deployment's directory (daemon log)")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    from tests.e2e.harness import SeparateDeployment, write_policy

    print(machine())
    base = Path(tempfile.mkdtemp(prefix="auto-resume-bench-daemon-"))
    try:
        started = time.monotonic()
        with SeparateDeployment(base) as separate:
            deployment = separate.deployment
            assert deployment is not None
            # One attempt: the resume of a made-up Metaflow run fails, and should not be resumed.
            write_policy(deployment.policy_file, max_attempts=1)
            print(f"daemon up, sensor ticking, after {time.monotonic() - started:.1f}s")
            instance = deployment.instance()
            if args.failures:
                _latency(instance, args.failures, args.spacing)
            if args.burst:
                separate.stop_daemon()
                home_yaml = deployment.home / "dagster.yaml"
                text = (ROOT / "dagster.yaml").read_text()
                assert "max_concurrent_runs: 20" in text, "dagster.yaml changed; update this benchmark"
                home_yaml.write_text(text.replace("max_concurrent_runs: 20", "max_concurrent_runs: 0"))
                failed, written = _write_burst(instance, args.burst)
                restarted = time.time()
                separate.start_daemon()
                _burst(instance, failed, written, restarted)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _failure_time(instance: object, run_id: str) -> float:
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records  # type: ignore[attr-defined]
    return float(records[0].event_log_entry.timestamp)


def _latency(instance: object, failures: int, spacing: float) -> None:
    from dagster import RunsFilter

    from auto_resume.dagster import tags
    from tests.e2e.harness import sensor_ticks, wait_for_resume_of, wait_for_run
    from tests.support.failed_runs import create_failed_run

    phase_start = time.time()
    failed = []
    for index in range(failures):
        if index:
            time.sleep(spacing)
        failed.append(create_failed_run(instance, "LinearFlow"))  # type: ignore[arg-type]
    to_created, to_started, created_to_started = [], [], []
    for run_id in failed:
        resume = wait_for_resume_of(instance, run_id, timeout=120)  # type: ignore[arg-type]
        wait_for_run(instance, resume.run_id, timeout=300)  # type: ignore[arg-type]
        record = instance.get_run_records(RunsFilter(run_ids=[resume.run_id]))[0]  # type: ignore[attr-defined]
        assert record.dagster_run.tags[tags.PARENT_RUN_ID] == run_id
        failed_at = _failure_time(instance, run_id)
        created = record.create_timestamp.timestamp()
        assert record.start_time is not None, f"resume run {resume.run_id} never started"
        to_created.append(created - failed_at)
        to_started.append(record.start_time - failed_at)
        created_to_started.append(record.start_time - created)
    print(f"latency over {failures} failures, {spacing:g}s apart, sensor interval 5s  (median / p90 / max)")
    print(f"  RUN_FAILURE -> resume run created   {summary(to_created)}")
    print(f"  RUN_FAILURE -> resume run started   {summary(to_started)}")
    print(f"  created -> started (queue + worker) {summary(created_to_started)}")
    print(f"  each, RUN_FAILURE -> created: {', '.join(f'{t:.1f}' for t in sorted(to_created))} s")
    starts = [t.timestamp for t in sensor_ticks(instance, after=phase_start)]  # type: ignore[arg-type]
    gaps = sorted(b - a for a, b in itertools.pairwise(starts))
    if gaps:
        print(
            f"  sensor ticks meanwhile: {len(starts)}, gap between tick starts "
            f"min {gaps[0]:.1f}s / median {statistics.median(gaps):.1f}s / max {gaps[-1]:.1f}s"
        )


def _write_burst(instance: object, count: int) -> tuple[set[str], float]:
    from tests.support.failed_runs import create_failed_run

    started = time.perf_counter()
    failed = {create_failed_run(instance, "LinearFlow") for _ in range(count)}  # type: ignore[arg-type]
    return failed, time.perf_counter() - started


def _burst(instance: object, failed: set[str], written: float, restarted: float) -> None:
    from dagster import DagsterRunStatus, RunsFilter

    from auto_resume.dagster import tags
    from tests.e2e.harness import sensor_ticks
    from tests.support.waiting import wait_until

    count = len(failed)

    def all_queued() -> list[object]:
        records = [
            r
            for r in instance.get_run_records(  # type: ignore[attr-defined]
                RunsFilter(job_name="LinearFlow_resume", statuses=[DagsterRunStatus.QUEUED])
            )
            if r.dagster_run.tags.get(tags.PARENT_RUN_ID) in failed
        ]
        return records if len(records) >= count else []

    records: list[Any] = wait_until(all_queued, 600, f"not all {count} resume runs queued", interval=0.25)
    assert len(records) == count, f"{len(records)} of {count} resume runs queued"
    last = max(r.create_timestamp.timestamp() for r in records)
    ticks = sensor_ticks(instance, after=restarted)  # type: ignore[arg-type]
    first = ticks[0].timestamp
    used = [t for t in ticks if t.tick_data.run_ids]
    print(f"burst: {count} failed runs written in {written:.1f}s while the daemon was stopped; queue held")
    print(f"  daemon start -> first tick        {first - restarted:.1f}s (workspace load)")
    first_run = min(r.create_timestamp.timestamp() for r in records)
    print(f"  first tick -> last run queued     {last - first:.1f}s")
    print(f"    of which tick start -> first run created (evaluation)  {first_run - first:.1f}s")
    print(f"    and first -> last run created (the daemon submits them) {last - first_run:.1f}s")
    per_tick = [len(t.tick_data.run_ids) for t in used]
    print(f"  ticks that created runs: {len(used)} (runs per tick: {per_tick})")
    for tick in used:
        data = tick.tick_data
        took = f"{data.end_timestamp - data.timestamp:.1f}s" if data.end_timestamp else "?"
        print(f"    tick at +{data.timestamp - first:.1f}s took {took}: {len(data.run_ids)} runs")


if __name__ == "__main__":
    main()
