"""Soak: a steady stream of failures of many flows on the real daemon, with faults; the accounting.

Not part of CI (20 minutes by default). A private deployment as ``tests/e2e/harness.py``
``SeparateDeployment`` makes it (new PostgreSQL database, ``DAGSTER_HOME`` with this repo's
``dagster.yaml``, the real ``dagster-daemon`` on ``workspace.yaml``), with:

- a policy of ``--flows`` renamed copies of the example ``LinearFlow`` (as
  ``benchmarks/many_flows.py`` writes them), one attempt, a backoff of ``--wait`` seconds before
  each resume (so that most decisions are a wait that ends), and an error rule giving up at once
  on the message ``soak: give up``;
- the run queue held (``max_concurrent_runs: 0``): thousands of run workers would swamp the
  machine; what is soaked is deciding and queueing. A resume is a queued resume run.

For ``--minutes`` it writes ``--failures`` failed runs (``create_failed_run``, round-robin over
the flows, every ``--give-up-every``-th one with the give-up message), evenly spread; every
``--kill-every`` seconds it kills the daemon with SIGKILL and starts a new one; with
``--restart-postgres`` it restarts the PostgreSQL server once, half way (``pg_ctlcluster ...
restart``: only on a server nobody else is using). It samples the resident memory of the
daemon and of its code server every ``--sample-every`` seconds.

Then it waits until every failure is answered (or ``--settle`` seconds) and prints the
accounting: each failure must end with exactly one resume run, or a give-up recorded on it
(tag ``auto_resume/gave_up``) and no resume run. Lost: neither. Doubled: more than one resume
run, or a resume run and a give-up. Also: memory growth of each daemon lifetime after its
warm-up (goal: under 10%), and processes of this deployment left behind after it stopped
(orphans; goal: none).

    METAFLOW_USER=bench .venv/bin/python benchmarks/soak.py [--failures 2000] [--minutes 20] \\
        [--flows 10] [--kill-every 240] [--restart-postgres]
"""

import argparse
import collections
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import ROOT, machine
from many_flows import _write_fleet

GIVE_UP = "soak: give up"


def _policy(path: Path, files: list[Path], wait: float) -> None:
    entries = "".join(f"  - definitions_file: {file}\n" for file in files)
    path.write_text(
        "version: 1\nsensor:\n  minimum_interval_seconds: 5\n  default_status: running\n"
        "defaults:\n  max_attempts: 1\n"
        f"  backoff:\n    initial_seconds: {wait}\n"
        f"  errors:\n    - action: never\n      message: '{GIVE_UP}'\n"
        f"flows:\n{entries}"
    )


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _processes_mentioning(text: str) -> list[str]:
    """Processes whose command line contains ``text`` (this deployment's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{entry.name}: {command[:120]}")
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class _Lifetimes:
    """Memory samples per daemon lifetime, MiB.

    Each sample: seconds since the daemon started, the daemon, the ``auto_resume`` location's
    code server, and every child of the daemon (the repo's workspace serves seven locations).
    """

    def __init__(self) -> None:
        self.samples: list[list[tuple[float, float, float, float]]] = []
        self._started = 0.0
        self._pid = 0

    def new(self, pid: int) -> None:
        self.samples.append([])
        self._started, self._pid = time.monotonic(), pid

    def sample(self) -> None:
        children = _children(self._pid)
        # The largest auto_resume code server, not their sum: the daemon replaces its code servers
        # now and then (the old ones log "No heartbeat received in 20 seconds, shutting down"),
        # and for a few seconds two serve the location; a sum would read that as growth.
        ours = max(
            (_rss_mib(c) for c in children if "--location-name auto_resume" in _command(c)), default=0.0
        )
        total = sum(_rss_mib(child) for child in children)
        self.samples[-1].append((time.monotonic() - self._started, _rss_mib(self._pid), ours, total))

    def report(self, warm_up: float) -> None:
        print(f"memory per daemon lifetime (MiB; after a {warm_up:.0f}s warm-up; goal: growth under 10%)")
        for index, rows in enumerate(self.samples):
            warm = [row for row in rows if row[0] >= warm_up]
            if len(warm) < 2:
                print(f"  lifetime {index + 1}: {len(rows)} samples, too short to judge")
                continue
            first, last = warm[0], warm[-1]

            growth = [_growth(first[column], last[column]) for column in (1, 2, 3)]
            print(
                f"  lifetime {index + 1} ({last[0]:.0f}s): daemon {growth[0]}, "
                f"auto_resume location (its largest server) {growth[1]}, "
                f"the daemon's children (code servers, summed) {growth[2]}"
            )


def _growth(first: float, last: float) -> str:
    return f"{first:.0f} -> {last:.0f} ({100 * (last / max(first, 1e-9) - 1):+.1f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--flows", type=int, default=10)
    parser.add_argument("--wait", type=float, default=10.0, help="backoff before each resume, s")
    parser.add_argument("--give-up-every", type=int, default=7, help="every Nth failure is given up")
    parser.add_argument("--kill-every", type=float, default=240.0, help="SIGKILL the daemon every N s")
    parser.add_argument("--restart-postgres", action="store_true", help="restart PostgreSQL once, half way")
    parser.add_argument("--sample-every", type=float, default=15.0)
    parser.add_argument("--warm-up", type=float, default=60.0, help="s of each daemon lifetime not judged")
    parser.add_argument("--settle", type=float, default=600.0, help="s to wait for the last answers")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    from tests.e2e.harness import SeparateDeployment

    class Held(SeparateDeployment):
        kill_leftovers = False  # they are what the orphan count below counts

        def configure_home(self, home: Path) -> str:
            text = (ROOT / "dagster.yaml").read_text()
            assert "max_concurrent_runs: 20" in text, "dagster.yaml changed; update this benchmark"
            (home / "dagster.yaml").write_text(
                text.replace("max_concurrent_runs: 20", "max_concurrent_runs: 0")
            )
            return "workspace.yaml"

    print(machine())
    base = Path(tempfile.mkdtemp(prefix="auto-resume-soak-"))
    fleet = base / "flows"
    fleet.mkdir()
    files = _write_fleet(fleet, args.flows)
    jobs = [f"Fleet{index:02d}Flow" for index in range(args.flows)]
    lifetimes = _Lifetimes()
    failed: dict[str, bool] = {}  # run id -> written with the give-up message
    kills = 0
    with Held(base) as separate:
        deployment = separate.deployment
        assert deployment is not None
        separate.stop_daemon()
        _policy(deployment.policy_file, files, args.wait)
        separate.start_daemon()
        lifetimes.new(separate._daemon.pid)  # type: ignore[union-attr]
        instance = deployment.instance()
        print(
            f"deployment up in {base}; {args.failures} failures of {args.flows} flows, {args.minutes:g} min"
        )
        started = time.monotonic()
        duration = args.minutes * 60
        next_kill, next_sample = started + args.kill_every, started
        restarted_postgres = not args.restart_postgres
        for index in range(args.failures):
            due = started + duration * index / args.failures
            while time.monotonic() < due:
                time.sleep(min(0.2, max(0.0, due - time.monotonic())))
            now = time.monotonic()
            if now >= next_sample:
                lifetimes.sample()
                next_sample = now + args.sample_every
            if now >= next_kill:
                kills += 1
                _kill_and_restart(separate, lifetimes, kills, now - started)
                next_kill = time.monotonic() + args.kill_every
            if not restarted_postgres and now - started >= duration / 2:
                restarted_postgres = True
                _restart_postgres(now - started)
            give_up = index % args.give_up_every == args.give_up_every - 1
            failed[_write_failure(instance, jobs[index % len(jobs)], give_up)] = give_up
        print(f"{len(failed)} failures written in {time.monotonic() - started:.0f}s; {kills} daemon SIGKILLs")
        answered = _settle(instance, failed, args.settle, lifetimes, args.sample_every)
        _account(instance, failed, answered)
        lifetimes.report(args.warm_up)
    time.sleep(30)  # a killed daemon's code server stops after its heartbeat times out (20 s)
    left = _processes_mentioning(str(base))
    print(f"processes of this deployment left 30 s after it stopped (goal: none): {len(left)}")
    for line in left:
        print(f"  {line}")
    print(f"(load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())})")


def _write_failure(instance: Any, job: str, give_up: bool) -> str:
    """One failed run; retried while PostgreSQL restarts."""
    from tests.support.failed_runs import create_failed_run

    message = GIVE_UP if give_up else "injected failure"
    for attempt in range(60):
        try:
            return create_failed_run(instance, job, step="process", message=message)
        except Exception as exc:  # the database restarting: psycopg2 OperationalError and kin
            if attempt == 59:
                raise
            print(f"  writing a failure failed ({type(exc).__name__}); again in 1 s")
            time.sleep(1)
    raise AssertionError("unreachable")


def _kill_and_restart(separate: Any, lifetimes: _Lifetimes, kills: int, at: float) -> None:
    daemon = separate._daemon
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    separate._daemon = None
    began = time.monotonic()
    separate.start_daemon()
    lifetimes.new(separate._daemon.pid)
    print(f"  +{at:.0f}s: daemon SIGKILLed ({kills}), a new one started in {time.monotonic() - began:.1f}s")


def _restart_postgres(at: float) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    began = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True)
    print(f"  +{at:.0f}s: PostgreSQL restarted in {time.monotonic() - began:.1f}s")


def _resume_counts(instance: Any, failed: dict[str, bool]) -> collections.Counter[str]:
    from dagster import RunsFilter

    from auto_resume.dagster import tags

    counts: collections.Counter[str] = collections.Counter()
    for record in instance.get_run_records(RunsFilter(tags={tags.PARENT_RUN_ID: list(failed)})):
        counts[record.dagster_run.tags[tags.PARENT_RUN_ID]] += 1
    return counts


def _gave_up(instance: Any, failed: dict[str, bool]) -> set[str]:
    from dagster import RunsFilter

    from auto_resume.dagster import tags

    records = instance.get_run_records(RunsFilter(run_ids=list(failed)))
    return {r.dagster_run.run_id for r in records if tags.GAVE_UP in r.dagster_run.tags}


def _settle(
    instance: Any, failed: dict[str, bool], timeout: float, lifetimes: _Lifetimes, every: float
) -> float:
    began = time.monotonic()
    while True:
        lifetimes.sample()
        resumed, gave_up = _resume_counts(instance, failed), _gave_up(instance, failed)
        open_ = [run_id for run_id in failed if not resumed[run_id] and run_id not in gave_up]
        if not open_ or time.monotonic() - began > timeout:
            print(f"settled {time.monotonic() - began:.0f}s after the last failure; {len(open_)} unanswered")
            return time.monotonic() - began
        time.sleep(every)


def _account(instance: Any, failed: dict[str, bool], settled: float) -> None:
    time.sleep(10)  # two more ticks: a doubled answer would show now
    resumed, gave_up = _resume_counts(instance, failed), _gave_up(instance, failed)
    rows: collections.Counter[str] = collections.Counter()
    for run_id, expect_give_up in failed.items():
        resumes, given_up = resumed[run_id], run_id in gave_up
        if resumes == 1 and not given_up:
            rows["one resume run" + ("  (expected a give-up!)" if expect_give_up else "")] += 1
        elif resumes == 0 and given_up:
            rows["given up (recorded), no resume" + ("" if expect_give_up else "  (expected a resume!)")] += 1
        elif resumes == 0:
            rows["LOST: no resume, no recorded decision"] += 1
        else:
            rows[f"DOUBLED: {resumes} resume runs{', and given up' if given_up else ''}"] += 1
    print(f"accounting of {len(failed)} failures")
    for row, count in sorted(rows.items()):
        print(f"  {count:6d}  {row}")
    lost = sum(c for r, c in rows.items() if r.startswith("LOST"))
    doubled = sum(c for r, c in rows.items() if r.startswith("DOUBLED"))
    print(f"lost {lost}, doubled {doubled} (goal: 0 and 0)")
    waits = _waits(instance, failed)
    if waits:
        print(
            "failure -> resume run created (each waited the backoff): "
            f"median {statistics.median(waits):.1f}s, max {max(waits):.1f}s"
        )


def _waits(instance: Any, failed: dict[str, bool]) -> list[float]:
    from dagster import DagsterEventType, RunsFilter

    from auto_resume.dagster import tags

    created = {
        r.dagster_run.tags[tags.PARENT_RUN_ID]: r.create_timestamp.timestamp()
        for r in instance.get_run_records(RunsFilter(tags={tags.PARENT_RUN_ID: list(failed)}))
    }
    waits = []
    for run_id, at in list(created.items())[:200]:  # a sample: one query per failure
        records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
        if records:
            waits.append(at - records[0].event_log_entry.timestamp)
    return waits


if __name__ == "__main__":
    main()
