"""A burst of failures across flows, with and without Dagster's sensor threads, side by side.

For each variant, a private deployment as ``tests/e2e/harness.py`` ``SeparateDeployment`` makes
it (new PostgreSQL database, ``DAGSTER_HOME`` with this repo's ``dagster.yaml``, the real
``dagster-daemon``, a policy of every example flow ticking at 5 s): the daemon is stopped,
``--failures`` failed runs are written round-robin over the example flows' jobs (so that all
are there at the next tick, however long writing them takes), and the daemon is started again.
The failures become eligible when the restarted daemon's sensor first ticks; the script waits
until every one of them has a queued resume run and prints:

- first tick -> last resume run queued (goal: 60 s), and how that splits between the sensor's
  evaluations and the daemon creating the runs;
- the ticks that created runs;
- lost (no resume run) and doubled (more than one) failures: both must be 0.

The run queue is held (``max_concurrent_runs: 0`` in this deployment's copy of
``dagster.yaml``): 1,000 run workers would swamp the machine, and what is measured is the
queueing. Variants: ``plain`` is the repo's ``dagster.yaml`` without a ``sensors:`` block;
``threads`` adds ``sensors: {use_threads: true, num_workers: N, num_submit_workers: M}``
(the keys of dagster 1.13's ``sensors_daemon_config``, dagster/_core/instance/config.py; the
submit pool creates a tick's run requests in parallel, dagster/_daemon/sensor.py
``_submit_run_requests``); ``pgbouncer`` is ``threads`` with the daemon and its code servers
reaching PostgreSQL through PgBouncer (Debian's ``pgbouncer``, session pooling, started by this
script as the ``postgres`` user): dagster-postgres opens a connection per query, and PgBouncer
answers it without PostgreSQL starting a backend for it.

    METAFLOW_USER=bench .venv/bin/python benchmarks/failure_burst.py [--failures 1000] \\
        [--variants plain,threads,pgbouncer] [--num-workers 4] [--num-submit-workers 4]
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from _support import ROOT, machine

EXAMPLES = ROOT / "examples" / "generated"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", type=int, default=1000, help="failures in the burst (default 1000)")
    parser.add_argument(
        "--variants", default="plain,threads", help="comma-separated: plain, threads, pgbouncer"
    )
    parser.add_argument("--num-workers", type=int, default=4, help="sensors: num_workers (default 4)")
    parser.add_argument(
        "--num-submit-workers", type=int, default=4, help="sensors: num_submit_workers (default 4)"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the queue")
    parser.add_argument("--keep", action="store_true", help="keep the deployments' directories (daemon logs)")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")
    print(machine())
    jobs = _example_jobs()
    print(f"{args.failures} failures round-robin over {len(jobs)} jobs: {', '.join(jobs)}")
    results = {}
    for variant in args.variants.split(","):
        sensors = "" if variant == "plain" else _sensors_block(args.num_workers, args.num_submit_workers)
        setting = sensors.strip().replace("\n", " ") or "no sensors: block (Dagster's default)"
        print(f"\n== {variant}: {setting}")
        if variant == "pgbouncer":
            print("   the daemon and its code servers reach PostgreSQL through PgBouncer")
        results[variant] = _one_burst(
            sensors, jobs, args.failures, args.timeout, args.keep, pooled=variant == "pgbouncer"
        )
        print(f"   (load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    if len(results) > 1:
        print("\nside by side: first tick -> last resume run queued")
        base = next(iter(results.values()))
        for variant, seconds in results.items():
            print(f"  {variant:8s} {seconds:7.1f}s  {seconds / base:.2f}x  (goal 60 s)")


def _sensors_block(workers: int, submit_workers: int) -> str:
    return (
        f"\nsensors:\n  use_threads: true\n  num_workers: {workers}\n  num_submit_workers: {submit_workers}\n"
    )


def _example_jobs() -> list[str]:
    from auto_resume.metaflow.deployment import read_deployment

    return sorted(read_deployment(path).job_name for path in EXAMPLES.glob("*_dagster.py"))


@contextmanager
def _pgbouncer() -> Iterator[int]:
    """PgBouncer on a free loopback port in front of the test server (127.0.0.1:5432): its port."""
    from tests.support.processes import free_port
    from tests.support.waiting import wait_until

    port = free_port()
    # It runs as postgres (it refuses root), so in a directory of its own that postgres may use.
    directory = Path(tempfile.mkdtemp(prefix="auto-resume-pgbouncer-"))
    directory.chmod(0o777)
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\npool_mode = session\nmax_client_conn = 1000\n"
        f"default_pool_size = 40\nunix_socket_dir =\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    (directory / "users.txt").write_text('"root" ""\n')
    bouncer = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        assert bouncer.poll() is None, f"pgbouncer exited with status {bouncer.returncode}"
        return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

    try:
        wait_until(ready, 30, "pgbouncer did not accept connections", interval=0.2)
        yield port
    finally:
        bouncer.terminate()
        bouncer.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _one_burst(
    sensors: str, jobs: list[str], count: int, timeout: float, keep: bool, pooled: bool = False
) -> float:
    from tests.e2e.harness import SeparateDeployment

    class Burst(SeparateDeployment):
        def configure_home(self, home: Path) -> str:
            text = (ROOT / "dagster.yaml").read_text()
            held, found = re.subn(r"max_concurrent_runs: \d+", "max_concurrent_runs: 0", text)
            assert found == 1, "dagster.yaml changed; update this benchmark"
            held = re.sub(r"\nsensors:\n(  .*\n)+", "\n", held)  # the repo's setting, if any
            (home / "dagster.yaml").write_text(held + sensors)
            return "workspace.yaml"

    base = Path(tempfile.mkdtemp(prefix="auto-resume-bench-burst-"))
    try:
        with Burst(base) as separate:
            deployment = separate.deployment
            assert deployment is not None
            instance = deployment.instance()
            separate.stop_daemon()
            failed, written = _write_burst(instance, jobs, count)
            print(f"   {count} failed runs written in {written:.1f}s, daemon stopped; queue held")
            with ExitStack() as stack:
                if pooled:
                    port = stack.enter_context(_pgbouncer())
                    url = deployment.env["DAGSTER_PG_URL"]
                    deployment.env["DAGSTER_PG_URL"] = url.replace(":5432/", f":{port}/", 1)
                    assert deployment.env["DAGSTER_PG_URL"] != url, f"no :5432/ in {url}"
                restarted = time.time()
                separate.start_daemon()
                try:
                    return _measure(instance, failed, restarted, timeout)
                finally:
                    separate.stop_daemon()  # before PgBouncer goes
    finally:
        if keep:
            print(f"   kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _write_burst(instance: object, jobs: list[str], count: int) -> tuple[dict[str, str], float]:
    from tests.support.failed_runs import create_failed_run

    started = time.perf_counter()
    failed = {}
    for index in range(count):
        job = jobs[index % len(jobs)]
        failed[create_failed_run(instance, job, step="start")] = job  # type: ignore[arg-type]
    return failed, time.perf_counter() - started


def _measure(instance: Any, failed: dict[str, str], restarted: float, timeout: float) -> float:
    from dagster import RunsFilter

    from auto_resume.dagster import tags
    from tests.e2e.harness import sensor_ticks

    resume_jobs = sorted({f"{job}_resume" for job in failed.values()})
    deadline = time.monotonic() + timeout
    while True:
        records = instance.get_run_records(RunsFilter(tags={tags.SOURCE_JOB: sorted(set(failed.values()))}))
        by_parent = collections.Counter(
            r.dagster_run.tags.get(tags.PARENT_RUN_ID)
            for r in records
            if r.dagster_run.job_name in resume_jobs
        )
        answered = sum(1 for run_id in failed if by_parent[run_id])
        if answered == len(failed) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    time.sleep(2 * 5.0)  # two more ticks: a doubled request would show now
    records = [
        r
        for r in instance.get_run_records(RunsFilter(tags={tags.SOURCE_JOB: sorted(set(failed.values()))}))
        if r.dagster_run.job_name in resume_jobs
    ]
    by_parent = collections.Counter(r.dagster_run.tags.get(tags.PARENT_RUN_ID) for r in records)
    lost = [run_id for run_id in failed if not by_parent[run_id]]
    doubled = [run_id for run_id, n in by_parent.items() if n > 1]
    statuses = collections.Counter(r.dagster_run.status.value for r in records)
    ticks = sensor_ticks(instance, after=restarted)
    first = ticks[0].timestamp
    created = sorted(r.create_timestamp.timestamp() for r in records)
    used = [t for t in ticks if t.tick_data.run_ids]
    print(f"   daemon start -> first tick           {first - restarted:.1f}s (workspace load)")
    last = created[-1] - first if created else float("nan")
    print(f"   first tick -> last resume run queued  {last:.1f}s  (goal <= 60 s)")
    if created:
        print(f"   first tick -> first run created      {created[0] - first:.1f}s")
    print(f"   resume runs: {len(records)} {dict(statuses)}; lost {len(lost)}, doubled {len(doubled)}")
    per_tick = [len(t.tick_data.run_ids) for t in used]
    print(f"   ticks that created runs: {len(used)} (runs per tick: {per_tick})")
    for tick in used:
        data = tick.tick_data
        took = f"{data.end_timestamp - data.timestamp:.1f}s" if data.end_timestamp else "?"
        print(f"     tick at +{data.timestamp - first:.1f}s took {took}: {len(data.run_ids)} runs")
    return last


if __name__ == "__main__":
    main()
