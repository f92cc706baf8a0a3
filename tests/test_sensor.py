"""Tests for auto_resume.dagster.sensor on a real DagsterInstance (SQLite, temporary).

Failed runs are real: one test executes a failing job named like the example flow in-process;
the others create the run, its metaflow-dagster command line and its RUN_FAILURE event through
the instance API (`create_failed_run`), which is what a run worker leaves in storage. The sensor
is evaluated with `build_sensor_context`, and the cursor it returns is fed to the next tick, as
the daemon does; a clock value is passed in so backoff and windows are tested without waiting.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorResult,
    build_sensor_context,
    instance_for_test,
    job,
    op,
)

from auto_resume.core.decision import failure_signature
from auto_resume.dagster import sensor as sensor_module
from auto_resume.dagster import tags
from auto_resume.dagster.disabled_flows import DisabledFlow
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.sensor import build_auto_resume_sensor, evaluate
from auto_resume.metaflow.deployment import Deployment, read_deployment
from auto_resume.metaflow.flows import load_flow_shape
from auto_resume.policy.loading import PolicyError, load_policy
from tests.support.failed_runs import create_failed_run, create_requested_run

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED = REPO_ROOT / "examples" / "generated"
FILES = ("linear_flow_dagster.py", "branch_flow_dagster.py")


@pytest.fixture(scope="module")
def watched() -> tuple[dict[str, Deployment], dict[str, JobDefinition]]:
    """The example flows as the code location sees them: by job name, and their resume jobs."""
    by_job: dict[str, Deployment] = {}
    jobs: dict[str, JobDefinition] = {}
    for name in FILES:
        deployment = read_deployment(GENERATED / name)
        resume_job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
        by_job[deployment.job_name] = by_job[deployment.resume_job_name] = deployment
        jobs[resume_job.name] = resume_job
    return by_job, jobs


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    """One instance for the module (each sensor starts its cursor after earlier failures)."""
    with instance_for_test() as test_instance:
        yield test_instance


class Sensor:
    """Ticks the sensor against one instance and policy file, keeping the cursor between ticks."""

    def __init__(self, instance: DagsterInstance, policy: Path, watched: tuple[dict, dict]) -> None:
        self.instance, self.policy, (self.by_job, self.jobs) = instance, policy, watched
        self.cursor: str | None = None
        self.write("")
        self.tick()  # the first tick only places the cursor

    def write(self, settings: str) -> None:
        flows = "".join(f"  - definitions_file: {GENERATED / name}\n" for name in FILES)
        self.policy.write_text(f"version: 1\n{settings}flows:\n{flows}")

    def tick(self, now: float | None = None, **options: float) -> SensorResult:
        context = build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = evaluate(context, self.by_job, self.jobs, self.policy, now=now, **options)
        self.cursor = result.cursor
        return result

    def pending(self) -> list[dict[str, object]]:
        assert self.cursor is not None
        return json.loads(self.cursor)["pending"]


@pytest.fixture
def ticker(instance: DagsterInstance, tmp_path: Path, watched: tuple[dict, dict]) -> Sensor:
    return Sensor(instance, tmp_path / "policy.yaml", watched)


def requests(result: SensorResult) -> list[RunRequest]:
    return list(result.run_requests or [])


@op
def op_process(context) -> None:  # type: ignore[no-untyped-def]
    context.log.info(
        "$ python /x/linear_flow.py --quiet step process --run-id dagster-abc123def456 --task-id 1"
    )
    raise RuntimeError(
        "Command failed (exit 1):\nTraceback (most recent call last):\n"
        '  File "linear_flow.py", line 20, in process\n    raise ValueError(n)\n'
        "ValueError: bad input 42\n\nTask failed.\n"
    )


@job(name="LinearFlow")
def failing_linear_flow() -> None:
    op_process()


def test_failed_job_executed_in_process_is_resumed(ticker: Sensor) -> None:
    ticker.write("defaults:\n  tags: {team/owner: ml}\n")
    result = failing_linear_flow.execute_in_process(instance=ticker.instance, raise_on_error=False)
    assert not result.success

    (request,) = requests(ticker.tick())
    run_id = result.run_id
    assert request.run_key == f"resume-of-{run_id}"
    assert request.job_name == "LinearFlow_resume"
    assert request.run_config == {
        "ops": {"LinearFlow_resume__origin": {"config": {"origin_run_id": "dagster-abc123def456"}}}
    }
    assert request.tags == {
        "team/owner": "ml",
        tags.ROOT_RUN_ID: run_id,
        tags.PARENT_RUN_ID: run_id,
        tags.ORIGIN_METAFLOW_RUN_ID: "dagster-abc123def456",
        tags.ATTEMPT: "1",
        tags.SOURCE_JOB: "LinearFlow",
        # The user's ValueError from the Metaflow traceback, not metaflow-dagster's RuntimeError.
        tags.PARENT_FAILURE: failure_signature("process", "ValueError", "bad input 42"),
    }
    assert ticker.pending() == []
    assert requests(ticker.tick()) == []  # decided once: the cursor moved past it


def test_first_tick_ignores_earlier_failures(instance: DagsterInstance, tmp_path: Path, watched) -> None:  # type: ignore[no-untyped-def]
    create_failed_run(instance, "LinearFlow")
    ticker = Sensor(instance, tmp_path / "policy.yaml", watched)
    assert requests(ticker.tick()) == []


def test_unwatched_job_is_ignored_and_passed(ticker: Sensor) -> None:
    create_failed_run(ticker.instance, "SomeOtherJob")
    result = ticker.tick()
    assert requests(result) == []
    assert ticker.pending() == []
    assert json.loads(ticker.cursor or "")["after"] > 0


def test_failure_already_resumed_is_skipped(ticker: Sensor, instance: DagsterInstance) -> None:
    # A resume already answers this failure (here a manual one, running): a second would redo it.
    run_id = create_failed_run(instance, "LinearFlow")
    resume = instance.add_run(
        DagsterRun(
            job_name="LinearFlow_resume",
            run_id=str(uuid.uuid4()),
            tags={tags.PARENT_RUN_ID: run_id, tags.MANUAL: "true"},
            status=DagsterRunStatus.STARTED,
        )
    )
    result = ticker.tick()
    assert requests(result) == []
    assert ticker.pending() == []
    assert result.skip_reason is not None
    assert f"run {run_id} (LinearFlow): skip: already resumed by run {resume.run_id}" in (
        result.skip_reason.skip_message or ""
    )


def test_backoff_wait_lives_in_the_cursor(ticker: Sensor, instance: DagsterInstance, watched) -> None:  # type: ignore[no-untyped-def]
    ticker.write("defaults:\n  backoff: {initial_seconds: 60}\n")
    run_id = create_failed_run(instance, "LinearFlow")
    failed_at = _failed_at(instance, run_id)
    assert requests(ticker.tick(now=failed_at + 1)) == []
    (waiting,) = ticker.pending()
    assert waiting["run_id"] == run_id
    assert failed_at + 59 < float(waiting["due_at"]) <= failed_at + 60  # type: ignore[arg-type]
    assert requests(ticker.tick(now=failed_at + 30)) == []
    assert requests(ticker.tick(now=failed_at + 58)) == []
    # A daemon restart: a new sensor object, only the stored cursor carries over.
    restarted = Sensor.__new__(Sensor)
    restarted.instance, restarted.policy, (restarted.by_job, restarted.jobs) = (
        instance,
        ticker.policy,
        watched,
    )
    restarted.cursor = ticker.cursor
    (request,) = requests(restarted.tick(now=failed_at + 61))
    assert request.run_key == f"resume-of-{run_id}"
    assert restarted.pending() == []


def test_backoff_grows_with_attempts(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write(
        "defaults:\n  max_attempts: 5\n  backoff: {initial_seconds: 10, multiplier: 3, max_seconds: 50}\n"
    )
    # Failed resume attempts 1 and 2: their resumes are attempts 2 and 3.
    second = create_failed_run(instance, "LinearFlow_resume", run_tags={tags.ATTEMPT: "1"})
    third = create_failed_run(instance, "LinearFlow_resume", run_tags={tags.ATTEMPT: "2"})
    ticker.tick()
    failed_at = {r: _failed_at(instance, r) for r in (second, third)}
    due = {p["run_id"]: float(p["due_at"]) - failed_at[p["run_id"]] for p in ticker.pending()}  # type: ignore[index, arg-type]
    assert due == {second: 30, third: 50}  # 10 * 3; 10 * 3**2 = 90 capped at max_seconds


def _failed_at(instance: DagsterInstance, run_id: str) -> float:
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    return record.event_log_entry.timestamp


def test_invalid_policy_edit_keeps_deciding_with_the_last_good_one(
    ticker: Sensor, instance: DagsterInstance
) -> None:
    """The sensor's first tick recorded the valid policy; a bad edit then stops nothing."""
    ticker.write("  mode: observe\n".replace("  ", "defaults:\n  ", 1))
    ticker.tick()  # records this policy as the last good one
    ticker.policy.write_text(ticker.policy.read_text() + "    max_atempts: 3\n")  # in the last entry
    first = create_failed_run(instance, "LinearFlow")
    result = ticker.tick()
    reason = result.skip_reason.skip_message if result.skip_reason else ""
    assert reason.startswith("policy file invalid, deciding with the last good policy (in force since ")
    assert f"{ticker.policy}:7: flows[1].max_atempts: unknown field" in reason
    assert "fix: rename it to `max_attempts`" in reason
    assert f"run {first} (LinearFlow): observe mode, would resume" in reason  # the last good policy
    ticker.write("")  # fixed (and no longer observe): in force from the next tick
    second = create_failed_run(instance, "LinearFlow")
    result = ticker.tick()
    assert [r.run_key for r in requests(result)] == [f"resume-of-{second}"]


def test_invalid_policy_without_a_last_good_one_fails_the_tick_and_loses_nothing(
    fresh: Sensor, tmp_path: Path
) -> None:
    never = copy.copy(fresh)  # the same instance and cursor, a policy file never valid there
    never.policy = tmp_path / "never_valid.yaml"
    never.policy.write_text("version: 1\ndefaults:\n  max_atempts: 3\n")
    before = never.cursor
    first = create_failed_run(never.instance, "LinearFlow")
    with pytest.raises(PolicyError, match="max_atempts: unknown field"):
        never.tick()
    assert never.cursor == before  # the daemon keeps the cursor of a failed tick
    second = create_failed_run(never.instance, "LinearFlow")
    never.write("")
    result = never.tick()
    assert sorted(r.run_key or "" for r in requests(result)) == sorted(
        [f"resume-of-{first}", f"resume-of-{second}"]
    )


def test_a_disabled_flow_is_named_every_tick_and_its_failures_once(
    ticker: Sensor, instance: DagsterInstance
) -> None:
    broken = DisabledFlow(
        "flows[2].definitions_file",
        Path("/deploy/broken_dagster.py"),
        "definitions file /deploy/broken_dagster.py is not valid Python (line 560): unexpected indent; "
        "regenerate it",
        refused=False,
        job_names=("BrokenFlow", "BrokenFlow_resume"),
    )

    def tick() -> str:
        context = build_sensor_context(instance=instance, cursor=ticker.cursor)
        result = evaluate(context, ticker.by_job, ticker.jobs, ticker.policy, disabled=[broken])
        ticker.cursor = result.cursor
        return result.skip_reason.skip_message if result.skip_reason else ""

    failed = create_failed_run(instance, "BrokenFlow")
    first = tick()
    assert first.startswith(
        "flow disabled (broken, not resumed): flows[2].definitions_file: definitions file "
        "/deploy/broken_dagster.py is not valid Python (line 560): unexpected indent; regenerate it; "
    )
    assert (
        f"run {failed} (BrokenFlow): not resumed: its flow is disabled (flows[2].definitions_file)" in first
    )
    second = tick()
    assert second.startswith("flow disabled (broken, not resumed): flows[2].definitions_file: ")
    assert failed not in second  # its failure was said once
    assert ticker.pending() == []


def test_kill_switch_global_and_per_flow_glob(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write("enabled: false\n")
    create_failed_run(instance, "LinearFlow")
    assert requests(ticker.tick()) == []
    assert ticker.pending() == []
    ticker.write('overrides:\n  - {job: "Lin*", enabled: false}\n')
    linear = create_failed_run(instance, "LinearFlow")
    branch = create_failed_run(instance, "BranchFlow")
    result = ticker.tick()
    assert [r.run_key for r in requests(result)] == [f"resume-of-{branch}"]
    assert tags.GAVE_UP not in (instance.get_run_by_id(linear) or pytest.fail()).tags


def test_observe_mode_records_each_decision_once(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write("defaults:\n  mode: observe\n")
    run_id = create_failed_run(instance, "LinearFlow")
    cursor = ticker.cursor
    assert requests(ticker.tick()) == []
    ticker.cursor = cursor  # the same tick again (a daemon that died before storing the cursor)
    assert requests(ticker.tick()) == []
    run = instance.get_run_by_id(run_id)
    assert run is not None
    assert run.tags[tags.OBSERVED].startswith("resume: resume dagster-0123456789ab (attempt 1 of 2)")
    assert tags.GAVE_UP not in run.tags
    events = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(run_id).records]
    observed = [e for e in events if e is not None and "observe mode" in (e.message or "")]
    assert len(observed) == 1


def test_give_up_is_recorded_and_notified_once(
    ticker: Sensor, instance: DagsterInstance, tmp_path: Path
) -> None:
    notes = tmp_path / "notified.txt"
    ticker.write(
        "on_give_up:\n"
        '  command: [sh, -c, \'echo "$AUTO_RESUME_RUN_ID $AUTO_RESUME_ATTEMPT $AUTO_RESUME_REASON"'
        f" >> {notes}']\n"
        "defaults:\n  max_attempts: 2\n"
    )
    run_id = create_failed_run(
        instance, "LinearFlow_resume", run_tags={tags.ATTEMPT: "2", tags.ROOT_RUN_ID: "root-1"}
    )
    cursor = ticker.cursor
    assert requests(ticker.tick()) == []
    ticker.cursor = cursor
    ticker.tick()  # replayed: no second record, no second notification
    run = instance.get_run_by_id(run_id)
    assert run is not None
    assert run.tags[tags.GAVE_UP] == "max_attempts (2) spent for the failure of run root-1"
    assert notes.read_text() == f"{run_id} 3 max_attempts (2) spent for the failure of run root-1\n"


def test_broken_hook_does_not_stop_the_sensor(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write("on_give_up: {command: [/bin/false]}\ndefaults: {max_attempts: 0}\n")
    run_id = create_failed_run(instance, "LinearFlow")
    result = ticker.tick()
    assert "on_give_up hook failed" in (result.skip_reason.skip_message if result.skip_reason else "")
    assert tags.GAVE_UP in (instance.get_run_by_id(run_id) or pytest.fail()).tags


def test_error_rules_first_match_wins(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write(
        "defaults:\n  errors:\n"
        "    - {action: resume, step: process, message: 'retry me'}\n"
        "    - {action: never, exception: 'Memory*'}\n"
        "    - {action: never, reason: step_failure, step: 'proc*'}\n"
    )
    resumed = create_failed_run(instance, "LinearFlow", exception="MemoryError", message="retry me")
    never_oom = create_failed_run(instance, "LinearFlow", step="start", exception="MemoryError")
    never_step = create_failed_run(instance, "LinearFlow", exception="KeyError")
    other = create_failed_run(instance, "LinearFlow", step="end", exception="KeyError")
    result = ticker.tick()
    assert sorted(r.run_key or "" for r in requests(result)) == sorted(
        [f"resume-of-{resumed}", f"resume-of-{other}"]
    )
    oom = instance.get_run_by_id(never_oom)
    assert oom is not None
    assert oom.tags[tags.GAVE_UP].startswith("error rule errors[1] says never resume")
    assert "errors[2]" in (instance.get_run_by_id(never_step) or pytest.fail()).tags[tags.GAVE_UP]


def test_same_failure_twice_stops(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write("defaults:\n  stop_on_same_failure: true\n  max_attempts: 5\n")
    same = failure_signature("process", "RuntimeError", "timeout after 30 s")
    # The numbers differ but the normalised message is the same.
    repeated = create_failed_run(
        instance,
        "LinearFlow_resume",
        message="timeout after 31 s",
        run_tags={tags.ATTEMPT: "1", tags.PARENT_FAILURE: same},
    )
    changed = create_failed_run(
        instance,
        "LinearFlow_resume",
        message="disk full",
        run_tags={tags.ATTEMPT: "1", tags.PARENT_FAILURE: same},
    )
    assert [r.run_key for r in requests(ticker.tick())] == [f"resume-of-{changed}"]
    run = instance.get_run_by_id(repeated)
    assert run is not None
    assert "failed like the attempt before it" in run.tags[tags.GAVE_UP]


def test_in_flight_cap_defers_the_rest(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write("max_resumes_in_flight: 2\n")
    runs = [create_failed_run(instance, "LinearFlow") for _ in range(3)]
    assert [r.run_key for r in requests(ticker.tick())] == [f"resume-of-{r}" for r in runs[:2]]
    assert [p["run_id"] for p in ticker.pending()] == [runs[2]]
    ticker.write("")
    assert [r.run_key for r in requests(ticker.tick())] == [f"resume-of-{runs[2]}"]
    assert ticker.pending() == []


def test_blackout_waits_then_resumes(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write(
        "defaults:\n  windows:\n    timezone: Europe/Paris\n"
        "    blackouts: [{start: 2000-01-01 00:00:00, end: 2100-01-01 00:00:00}]\n"
    )
    run_id = create_failed_run(instance, "LinearFlow")
    now = time.time()
    assert requests(ticker.tick(now=now)) == []
    (waiting,) = ticker.pending()
    assert waiting["run_id"] == run_id
    assert now < float(waiting["due_at"]) <= now + 60  # type: ignore[arg-type]  # the next minute
    ticker.write("")
    assert requests(ticker.tick(now=now)) == []  # not due yet: not looked at
    assert [r.run_key for r in requests(ticker.tick(now=now + 60))] == [f"resume-of-{run_id}"]


def test_old_failure_is_skipped(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write("defaults:\n  max_failure_age_seconds: 3600\n")
    create_failed_run(instance, "LinearFlow")
    result = ticker.tick(now=time.time() + 7200)  # first seen two hours after it failed
    assert requests(result) == []
    assert ticker.pending() == []
    assert "max_failure_age_seconds (3600)" in (result.skip_reason.skip_message if result.skip_reason else "")


def test_error_keeps_the_failure_for_a_later_tick(
    ticker: Sensor, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sensor_module.failed_run_facts
    calls = {"n": 0}

    def blip(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database went away")  # a Postgres blip on the first failure only
        return real(*args, **kwargs)

    monkeypatch.setattr(sensor_module, "failed_run_facts", blip)
    first = create_failed_run(instance, "LinearFlow")
    second = create_failed_run(instance, "LinearFlow")
    result = ticker.tick()
    assert [r.run_key for r in requests(result)] == [f"resume-of-{second}"]  # not held up
    (waiting,) = ticker.pending()
    assert (waiting["run_id"], waiting["errors"]) == (first, 1)
    assert [r.run_key for r in requests(ticker.tick())] == [f"resume-of-{first}"]
    assert ticker.pending() == []


def test_burst_is_decided_in_one_tick(ticker: Sensor, instance: DagsterInstance) -> None:
    # 20 here (SQLite keeps one file per run); the end-to-end test bursts 100 on PostgreSQL.
    runs = [create_failed_run(instance, "LinearFlow") for _ in range(20)]
    started = time.perf_counter()
    result = ticker.tick()
    elapsed = time.perf_counter() - started
    keys = [r.run_key for r in requests(result)]
    assert sorted(keys) == sorted(f"resume-of-{r}" for r in runs)
    assert len(set(keys)) == 20
    print(f"20 failures decided in one tick: {elapsed:.2f}s on SQLite")


def test_a_spent_budget_leaves_the_rest_unread_for_the_next_tick(
    ticker: Sensor, instance: DagsterInstance
) -> None:
    # A budget of 0 s is spent by the first decision: each tick decides one failure, the others
    # stay unread after it; a failure waiting (backoff) that is due is kept waiting the same way.
    ticker.write("defaults:\n  backoff: {initial_seconds: 60}\n")
    waiting = create_failed_run(instance, "LinearFlow")
    assert requests(ticker.tick()) == []
    assert [p["run_id"] for p in ticker.pending()] == [waiting]
    runs = [create_failed_run(instance, "LinearFlow") for _ in range(3)]
    later = time.time() + 3600
    seen: list[str] = []
    for _ in range(4):
        result = ticker.tick(now=later, budget_seconds=0)
        seen += [r.run_key for r in requests(result)]
        assert len(requests(result)) == 1
    assert seen == [f"resume-of-{r}" for r in [waiting, *runs]]
    assert ticker.pending() == []
    assert requests(ticker.tick(now=later)) == []  # none decided twice


def test_sensor_takes_interval_and_status_from_policy(tmp_path: Path, watched) -> None:  # type: ignore[no-untyped-def]
    by_job, jobs = watched
    path = tmp_path / "policy.yaml"
    flows = "".join(f"  - definitions_file: {GENERATED / name}\n" for name in FILES)
    path.write_text(
        f"version: 1\nsensor: {{minimum_interval_seconds: 7, default_status: running}}\nflows:\n{flows}"
    )
    deployments = list({d.job_name: d for d in by_job.values()}.values())
    definition = build_auto_resume_sensor(deployments, list(jobs.values()), load_policy(path), path)
    assert definition.default_status == DefaultSensorStatus.RUNNING
    assert definition.minimum_interval_seconds == 7
    # A multiple of the daemon's 5 s loop is declared one second less, so that its jittery
    # wake-ups tick every interval, not every other one.
    path.write_text(path.read_text().replace("minimum_interval_seconds: 7", "minimum_interval_seconds: 10"))
    definition = build_auto_resume_sensor(deployments, list(jobs.values()), load_policy(path), path)
    assert definition.minimum_interval_seconds == 9


@pytest.fixture
def fresh(tmp_path: Path, watched: tuple[dict, dict]) -> Iterator[Sensor]:
    """A sensor on an instance of its own: open resume requests stay out of the module's instance."""
    with instance_for_test() as test_instance:
        yield Sensor(test_instance, tmp_path / "policy.yaml", watched)


def _request(instance: DagsterInstance, run_id: str, forced: bool = False, number: int = 1) -> str:
    from auto_resume.dagster.resume_requests import ResumeRequest, record_request, resume_run_key

    key = resume_run_key(run_id, number)
    record_request(instance, ResumeRequest(run_id, key, None, forced, time.time()))
    return key


def test_request_and_failure_in_one_tick_make_one_request(fresh: Sensor) -> None:
    # The failure is new to the sensor and requested by hand before the tick: one request, the
    # manual one, with the sensor's own run key for that failure.
    run_id = create_failed_run(fresh.instance, "LinearFlow", metaflow_run_id="dagster-aaaaaaaaaaaa")
    key = _request(fresh.instance, run_id)
    result = fresh.tick()
    (request,) = requests(result)
    assert request.run_key == key == f"resume-of-{run_id}"
    assert request.tags[tags.MANUAL] == "true"
    assert request.tags[tags.PARENT_RUN_ID] == run_id
    assert request.tags[tags.ATTEMPT] == "1"
    assert request.run_config == {
        "ops": {"LinearFlow_resume__origin": {"config": {"origin_run_id": "dagster-aaaaaaaaaaaa"}}}
    }
    create_requested_run(fresh.instance, request)
    # Answered: neither the request nor the failure is resumed again.
    assert requests(fresh.tick()) == []
    assert requests(fresh.tick()) == []


def test_request_overrides_a_wait_and_a_forced_one_a_skip(fresh: Sensor) -> None:
    fresh.write("defaults:\n  backoff: {initial_seconds: 3600}\n")
    waiting = create_failed_run(fresh.instance, "LinearFlow", metaflow_run_id="dagster-bbbbbbbbbbbb")
    assert requests(fresh.tick()) == []  # backoff: waits in the cursor
    assert [p["run_id"] for p in fresh.pending()] == [waiting]
    opted_out = create_failed_run(
        fresh.instance, "LinearFlow", metaflow_run_id="dagster-cccccccccccc", run_tags={tags.OPT_OUT: "true"}
    )
    _request(fresh.instance, waiting)
    _request(fresh.instance, opted_out, forced=True)
    result = fresh.tick()
    by_parent = {r.tags[tags.PARENT_RUN_ID]: r for r in requests(result)}
    assert set(by_parent) == {waiting, opted_out}
    assert by_parent[waiting].tags[tags.MANUAL] == "true"
    assert by_parent[opted_out].tags[tags.MANUAL] == "forced"
    for request in by_parent.values():
        create_requested_run(fresh.instance, request)
    run = fresh.instance.get_run_by_id(opted_out)
    assert run is not None and tags.GAVE_UP not in run.tags  # the forced request decided it
    # Once the backoff is over, the waiting failure is answered already.
    later = fresh.tick(now=time.time() + 7200)
    assert requests(later) == []
    assert fresh.pending() == []


def test_second_forced_request_gets_a_key_of_its_own(fresh: Sensor) -> None:
    run_id = create_failed_run(fresh.instance, "LinearFlow", metaflow_run_id="dagster-dddddddddddd")
    (first,) = requests(fresh.tick())
    create_requested_run(fresh.instance, first)
    key = _request(fresh.instance, run_id, forced=True, number=2)
    (second,) = requests(fresh.tick())
    assert (first.run_key, second.run_key) == (f"resume-of-{run_id}", key)
    assert key == f"resume-of-{run_id}#2"
    assert tags.MANUAL not in first.tags and second.tags[tags.MANUAL] == "forced"


def test_copied_or_unanswerable_request_is_not_answered(fresh: Sensor) -> None:
    # Dagster copies a run's tags to its re-executions: a request naming another run is not one.
    original = create_failed_run(fresh.instance, "LinearFlow", metaflow_run_id="dagster-eeeeeeeeeeee")
    _request(fresh.instance, original)
    copy = create_failed_run(fresh.instance, "OtherJob", run_tags={})
    copied = fresh.instance.get_run_by_id(original)
    assert copied is not None
    fresh.instance.add_run_tags(
        copy, {key: value for key, value in copied.tags.items() if key.startswith(tags.PREFIX)}
    )
    (request,) = requests(fresh.tick())
    assert request.tags[tags.PARENT_RUN_ID] == original
    create_requested_run(fresh.instance, request)
    # A request for a run of a job the sensor does not watch: noted, tried again, never launched.
    _request(fresh.instance, copy)
    result = fresh.tick()
    assert f"run {copy} (OtherJob): manual resume request resume-of-{copy}: cannot be answered now" in (
        result.skip_reason.skip_message if result.skip_reason else ""
    )


STORM = {"exception": "ConnectionError", "message": "database is down (host 10.0.0.7)"}


def test_storm_breaker_opens_once_holds_the_storm_and_tries_one_resume(
    ticker: Sensor, instance: DagsterInstance, tmp_path: Path
) -> None:
    notes = tmp_path / "opened.txt"
    ticker.write(
        "breaker:\n  failures: 3\n  window_seconds: 600\n  cooldown_seconds: 300\n"
        f"  on_open: {{command: [sh, -c, 'echo \"$AUTO_RESUME_EVENT $AUTO_RESUME_RUN_ID\" >> {notes}']}}\n"
    )
    storm = [create_failed_run(instance, job, **STORM) for job in ("LinearFlow", "BranchFlow") * 3]
    other = create_failed_run(instance, "LinearFlow", exception="ValueError", message="bad input")
    now = time.time()
    # The first two of the storm are resumed; the third opens the breaker; another fingerprint goes on.
    result = ticker.tick(now=now)
    assert [r.run_key for r in requests(result)] == [f"resume-of-{r}" for r in (*storm[:2], other)]
    assert notes.read_text() == f"breaker_opened {storm[2]}\n"
    opener = instance.get_run_by_id(storm[2])
    assert opener is not None and opener.tags[tags.BREAKER] == "opened"
    assert json.loads(opener.tags[tags.BREAKER_OPENED])["breaker"].startswith("all flows: fingerprint ")
    assert sorted(p["run_id"] for p in ticker.pending()) == sorted(storm[2:])
    assert requests(ticker.tick(now=now + 200)) == []  # nothing is due during the cooldown
    # After the cooldown, one resume is tried; the rest keep waiting behind it.
    (probe,) = requests(ticker.tick(now=now + 301))
    probed = str(probe.run_key).removeprefix("resume-of-")
    assert probed in storm[2:]
    assert requests(ticker.tick(now=now + 340)) == []
    # The probe fails the same way: the breaker opens again, once more recorded.
    create_requested_run(instance, probe)
    create_failed_run(instance, "LinearFlow_resume", **STORM, run_tags={tags.PARENT_RUN_ID: probed})
    assert requests(ticker.tick(now=now + 345)) == []
    assert notes.read_text().count("breaker_opened") == 2
    assert len(ticker.pending()) == 4  # the three still waiting, and the probe's own failure


def test_a_failure_in_its_backoff_when_the_breaker_opens_waits_for_the_breaker_too(
    ticker: Sensor, instance: DagsterInstance
) -> None:
    ticker.write(
        "defaults:\n  backoff: {initial_seconds: 10}\n"
        "  breaker: {failures: 3, window_seconds: 600, cooldown_seconds: 300}\n"
    )
    storm = [create_failed_run(instance, "LinearFlow", **STORM) for _ in range(3)]
    now = time.time()
    # All three are read (and counted) while in their backoff: the third opens the breaker.
    assert requests(ticker.tick(now=now)) == []
    opener = instance.get_run_by_id(storm[2])
    assert opener is not None and opener.tags[tags.BREAKER] == "opened"
    # Their backoff is over, but the breaker is open: none is resumed until the cooldown ends.
    assert requests(ticker.tick(now=now + 11)) == []
    assert sorted(p["run_id"] for p in ticker.pending()) == sorted(storm)
    (probe,) = requests(ticker.tick(now=now + 301))
    assert str(probe.run_key).removeprefix("resume-of-") in storm


def test_a_failing_on_open_hook_is_named_in_the_tick(ticker: Sensor, instance: DagsterInstance) -> None:
    ticker.write(
        "breaker:\n  failures: 2\n  window_seconds: 600\n  cooldown_seconds: 300\n"
        "  on_open: {command: [sh, -c, 'echo unreachable >&2; exit 3']}\n"
        "defaults:\n  backoff: {initial_seconds: 60}\n"  # no run request: the notes are the skip reason
    )
    storm = [create_failed_run(instance, "LinearFlow", **STORM) for _ in range(2)]
    result = ticker.tick()
    shown = result.skip_reason.skip_message if result.skip_reason else ""
    assert f"breaker.on_open hook failed for run {storm[1]}: exit status 3: unreachable" in shown


def test_storm_breaker_closes_when_its_probe_does_not_fail_the_same_way(
    ticker: Sensor, instance: DagsterInstance
) -> None:
    ticker.write("defaults:\n  breaker: {failures: 2, window_seconds: 600, cooldown_seconds: 60}\n")
    storm = [create_failed_run(instance, "LinearFlow", **STORM) for _ in range(4)]
    now = time.time()
    assert [r.run_key for r in requests(ticker.tick(now=now))] == [f"resume-of-{storm[0]}"]
    (probe,) = requests(ticker.tick(now=now + 61))
    probed = str(probe.run_key).removeprefix("resume-of-")
    assert probed in storm[1:]
    create_requested_run(instance, probe)
    create_failed_run(
        instance,
        "LinearFlow_resume",
        exception="KeyError",
        message="'x'",
        run_tags={tags.PARENT_RUN_ID: probed},
    )
    ticker.tick(now=now + 62)
    breakers = json.loads(ticker.cursor or "{}").get("breakers", {}).values()
    assert all(state["open_until"] is None for state in breakers)  # closed (a KeyError only counts)
    # The failures that waited behind the probe are resumed once they are due again.
    keys = [r.run_key for r in requests(ticker.tick(now=now + 100))]
    assert sorted(keys) == sorted(f"resume-of-{r}" for r in storm[1:] if r != probed)
