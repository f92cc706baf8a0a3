"""Does deciding a failure cost more when the failed run logged a lot? 100 vs 50,000 events.

On a new PostgreSQL database, writes failed runs of ``LinearFlow`` whose event logs hold N
entries each, laid out as metaflow-dagster leaves them: a few engine lines, the first Metaflow
command line (``$ python flow.py ... --run-id dagster-...``, logged before the first step's
subprocess starts), then the steps' output lines, then the RUN_FAILURE event. The bulk lines
go in with the storage's own batch insert (the rows ``store_event`` writes, thousands per
statement), so 50,000 events take seconds rather than minutes.

Then times, ``--repeat`` times each and prints the median (and the fastest):

- ``facts``: ``failed_run_facts`` (auto_resume/run_facts.py: the paged search of the log for the
  Metaflow run id, and the failure event's details) plus ``decide``;
- ``tick``: one whole ``auto_resume_sensor`` evaluation (auto_resume/sensor.py ``evaluate``) whose
  cursor sits just before that run's failure: read the failure, the run, the facts, decide,
  build and validate the RunRequest;
- ``no command line``: ``facts`` for a run of N events none of which is a command line (a run
  that failed before its first step): the search reads the whole log, the worst case.

    METAFLOW_USER=bench .venv/bin/python benchmarks/event_log_size.py [--small 100] [--large 50000]
"""

import argparse
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from _support import ROOT, machine, postgres_instance

JOB = "LinearFlow"
EVENTS_BEFORE_COMMAND = 8  # RUN_STARTING, RUN_START, engine and step-start lines
BATCH = 2000


def _log_line(run_id: str, message: str) -> object:
    from dagster._core.events.log import EventLogEntry

    return EventLogEntry(
        error_info=None,
        level=logging.INFO,
        user_message=message,
        run_id=run_id,
        timestamp=time.time(),
        job_name=JOB,
        step_key="op_process",
    )


def _write_lines(instance: object, run_id: str, messages: list[str]) -> None:
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage  # type: ignore[attr-defined]
    assert isinstance(storage, SqlEventLogStorage)
    for start in range(0, len(messages), BATCH):
        entries = [_log_line(run_id, m) for m in messages[start : start + BATCH]]
        with storage._connect() as connection:
            connection.execute(storage.prepare_insert_event_batch(entries))


def started_run(instance: object, events: int, with_command: bool = True) -> str:
    """A run whose event log holds ``events - 1`` entries (its failure comes later); its run id."""
    from dagster import DagsterRun, DagsterRunStatus

    run = instance.add_run(  # type: ignore[attr-defined]
        DagsterRun(job_name=JOB, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED)
    )
    metaflow_run = "dagster-" + uuid.uuid4().hex[:12]
    head = [f"engine line {i}" for i in range(EVENTS_BEFORE_COMMAND)]
    command = (
        "$ python /srv/flows/linear_flow.py --quiet --no-pylint --metadata=local --datastore=local "
        f"step start --run-id {metaflow_run} --task-id 1 --input-paths {metaflow_run}/_parameters/params"
    )
    body_count = events - len(head) - 2  # the command line and the failure event
    body = [
        f"[{metaflow_run}/process/1 (pid 4242)] epoch {i}: loss=0.{i % 997:03d} lr=0.001 batch=128"
        for i in range(body_count)
    ]
    _write_lines(instance, run.run_id, [*head, command if with_command else "engine line", *body])
    return run.run_id


def fail(instance: object, run_id: str) -> None:
    """Report the run failed, as its run worker would, with a Metaflow traceback."""
    from dagster import DagsterEvent, DagsterEventType
    from dagster._core.events import JobFailureData, RunFailureReason
    from dagster._core.execution.plan.objects import StepFailureData
    from dagster_shared.error import SerializableErrorInfo

    run = instance.get_run_by_id(run_id)  # type: ignore[attr-defined]
    stderr = (
        'Traceback (most recent call last):\n  File "linear_flow.py", line 21, in process\n'
        "    raise RuntimeError()\nRuntimeError: injected failure\n\nTask failed.\n"
    )
    error = SerializableErrorInfo(f"Command failed (exit 1):\n{stderr}", [], "RuntimeError")
    step_failure = DagsterEvent(
        event_type_value=DagsterEventType.STEP_FAILURE.value,
        job_name=JOB,
        step_key="op_process",
        event_specific_data=StepFailureData(error=error, user_failure_data=None),
    )
    instance.report_run_failed(  # type: ignore[attr-defined]
        run,
        job_failure_data=JobFailureData(
            error=None, failure_reason=RunFailureReason.STEP_FAILURE, first_step_failure_event=step_failure
        ),
    )


def _timed(function: Callable[[], object], repeat: int) -> list[float]:
    function()  # warm caches and connections
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100, help="events in the small run (default 100)")
    parser.add_argument("--large", type=int, default=50_000, help="events in the large run (default 50000)")
    parser.add_argument("--repeat", type=int, default=30, help="timed evaluations per case (default 30)")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    import sqlalchemy as db
    from dagster import DagsterEventType, build_sensor_context
    from dagster._core.event_api import RunStatusChangeRecordsFilter

    from auto_resume.dagster.resume_job import build_resume_job
    from auto_resume.dagster.sensor import evaluate
    from auto_resume.metaflow.deployment import read_deployment
    from auto_resume.metaflow.flows import load_flow_shape
    from auto_resume.policy.loading import load_policy

    deployment = read_deployment(ROOT / "examples" / "generated" / "linear_flow_dagster.py")
    job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
    by_job = {deployment.job_name: deployment, deployment.resume_job_name: deployment}
    print(machine())
    with postgres_instance() as instance:
        policy_file = Path(os.environ["DAGSTER_HOME"]) / "policy.yaml"
        policy_file.write_text(f"version: 1\nflows:\n  - definitions_file: {deployment.definitions_file}\n")
        rules = load_policy(policy_file).settings_for(deployment.definitions_file, deployment.job_name)
        # Every run's log is written first, so each case is timed against the same table; the
        # failures are reported one at a time, so that a tick whose cursor sits before a run's
        # failure sees that failure only.
        cases = []
        for label, events, with_command in (
            (f"{args.small} events", args.small, True),
            (f"{args.large} events", args.large, True),
            (f"{args.large} events, no command line", args.large, False),
        ):
            started = time.perf_counter()
            cases.append((label, started_run(instance, events, with_command), with_command))
            print(f"wrote {label} in {time.perf_counter() - started:.1f}s")

        with instance.event_log_storage._connect() as connection:
            analysed_at = connection.execute(
                db.text(
                    "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables "
                    "WHERE relname = 'event_logs'"
                )
            ).scalar()
        now = time.strftime("%H:%M:%S", time.gmtime())
        print(
            "as the sensor meets them, before an explicit ANALYZE "
            f"(now {now} UTC; event_logs last analysed: {analysed_at or 'never'})"
        )
        print(f"{'failed run':<36} {'facts+decide':>13} {'(fastest)':>10} {'tick':>8} {'(fastest)':>10}")
        medians: dict[str, float] = {}
        ticks: dict[str, float] = {}
        records = {}
        for label, run_id, with_command in cases:
            fail(instance, run_id)
            record = instance.fetch_run_status_changes(
                RunStatusChangeRecordsFilter(event_type=DagsterEventType.RUN_FAILURE), limit=1
            ).records[0]
            assert record.event_log_entry.run_id == run_id
            records[label] = record
            cursor = f'{{"after": {record.storage_id - 1}, "pending": []}}'

            def tick(cursor: str = cursor) -> object:
                context = build_sensor_context(instance=instance, cursor=cursor)
                return evaluate(context, by_job, {job.name: job}, policy_file)

            repeat = args.repeat if with_command else min(args.repeat, 3)
            facts_times = _facts_times(instance, run_id, record, with_command, rules, repeat)
            medians[label] = statistics.median(facts_times)
            tick_text = f"{'-':>8} {'-':>10}"
            if with_command:
                requests = tick().run_requests  # type: ignore[attr-defined]
                assert requests and len(requests) == 1, requests
                tick_times = _timed(tick, repeat)
                ticks[label] = statistics.median(tick_times)
                tick_text = f"{1000 * ticks[label]:>6.1f}ms {1000 * min(tick_times):>8.1f}ms"
            facts_text = f"{1000 * medians[label]:>11.1f}ms {1000 * min(facts_times):>8.1f}ms"
            print(f"{label:<36} {facts_text} {tick_text}")
        small, large = f"{args.small} events", f"{args.large} events"
        print(
            f"ratio {large} / {small} (medians of {args.repeat}): "
            f"facts+decide {medians[large] / medians[small]:.2f}x, "
            f"tick {ticks[large] / ticks[small]:.2f}x (goal: within 1.5x)"
        )
        _first_page(instance, cases[:2], args.repeat)

        # PostgreSQL's planner estimates a run's row count from table statistics; until
        # autovacuum's ANALYZE has seen a run's events, it expects a handful and sorts them all.
        with instance.event_log_storage._connect() as connection:
            connection.execute(db.text("ANALYZE event_logs"))
        print("after ANALYZE event_logs (statistics up to date)")
        print(f"{'failed run':<36} {'facts+decide':>13} {'(fastest)':>10}")
        analysed: dict[str, float] = {}
        for label, run_id, with_command in cases:
            repeat = args.repeat if with_command else min(args.repeat, 3)
            facts_times = _facts_times(instance, run_id, records[label], with_command, rules, repeat)
            analysed[label] = statistics.median(facts_times)
            print(f"{label:<36} {1000 * analysed[label]:>11.1f}ms {1000 * min(facts_times):>8.1f}ms")
        print(f"ratio {large} / {small}: facts+decide {analysed[large] / analysed[small]:.2f}x")
        _first_page(instance, cases[:2], args.repeat)
    # An upper bound of what deciding such a failure costs the code location in memory: this
    # process also wrote the logs and holds Dagster, Metaflow and the resume job as it does.
    peak = next(
        int(line.split()[1]) / 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    print(f"peak memory (VmHWM) of this process: {peak:.0f} MiB")


def _first_page(instance: object, cases: list[tuple[str, str, bool]], repeat: int) -> None:
    """The storage query behind the run-id search alone: run_facts' page of 200, and a page of 20."""
    for limit in (200, 20):
        cells = []
        for label, run_id, _ in cases:
            times = _timed(lambda: instance.get_records_for_run(run_id, limit=limit), repeat)  # type: ignore[attr-defined]  # noqa: B023
            cells.append(f"{label} {1000 * statistics.median(times):.1f}ms")
        print(f"  first page alone, get_records_for_run(limit={limit}), median: " + ", ".join(cells))


def _facts_times(
    instance: object, run_id: str, record: object, with_command: bool, rules: object, repeat: int
) -> list[float]:
    """Times of ``failed_run_facts`` + ``decide`` on one failed run (the sensor's per-failure work)."""
    from auto_resume.core.decision import Situation, decide
    from auto_resume.dagster.run_facts import failed_run_facts

    run = instance.get_run_by_id(run_id)  # type: ignore[attr-defined]
    entry = record.event_log_entry  # type: ignore[attr-defined]
    facts = failed_run_facts(instance, run, entry)  # type: ignore[arg-type]
    assert (facts.metaflow_run_id is not None) == with_command, facts

    def facts_and_decision() -> object:
        return decide(failed_run_facts(instance, run, entry), rules, Situation(now=time.time()))  # type: ignore[arg-type]

    return _timed(facts_and_decision, repeat)


if __name__ == "__main__":
    main()
