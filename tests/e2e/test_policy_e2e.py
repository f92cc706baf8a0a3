"""The policy carried out by the real daemon on PostgreSQL: limits, backoff, kill switch, observe.

`test_attempts_exhausted` runs real Metaflow on the session deployment. The others edit the
policy or restart the daemon, so they share a deployment of their own (`SeparateDeployment`)
and run in file order. Their failed runs are made with `create_failed_run`: a run row, the
metaflow-dagster command line in its log and a real RUN_FAILURE event written through the
instance API, which the daemon's sensor reads exactly like a run worker's (it only reads the
event log); a burst of 100 then costs seconds instead of 100 run workers.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from auto_resume.dagster import tags
from auto_resume.dagster.run_facts import failure_details
from auto_resume.metaflow.commands import compile_definitions
from tests.e2e.harness import (
    Deployment,
    SeparateDeployment,
    sensor_ticks,
    wait_for_resume_of,
    wait_for_run,
    wait_for_ticks,
    write_policy,
)
from tests.support import ROOT
from tests.support.failed_runs import create_failed_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def _tag(instance: DagsterInstance, run_id: str, key: str) -> str | None:
    run = instance.get_run_by_id(run_id)
    return run.tags.get(key) if run else None


def _engine_messages(instance: DagsterInstance, run_id: str, fragment: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    messages = [
        r.event_log_entry.dagster_event.message or "" for r in records if r.event_log_entry.dagster_event
    ]
    return [m for m in messages if fragment in m]


def test_attempts_exhausted(deployment: Deployment, tmp_path: Path) -> None:
    """A step that fails every time: exactly max_attempts (2) resume runs, then a give-up record."""
    instance = deployment.instance()
    workdir = tmp_path / "counters"
    (workdir / "process.count").mkdir(parents=True)  # the step cannot write its counter: it always fails
    original = deployment.launch("linear_flow", "LinearFlow", {"workdir": str(workdir)})
    assert wait_for_run(instance, original).status == DagsterRunStatus.FAILURE
    parent = original
    for attempt in (1, 2):
        resume = wait_for_resume_of(instance, parent, deployment=deployment)
        assert resume.tags[tags.ATTEMPT] == str(attempt)
        assert resume.tags[tags.ROOT_RUN_ID] == original
        assert wait_for_run(instance, resume.run_id).status == DagsterRunStatus.FAILURE
        parent = resume.run_id
    reason = wait_until(
        lambda: _tag(instance, parent, tags.GAVE_UP), 120, "no give-up record", deployment.diagnostics
    )
    assert reason == f"max_attempts (2) spent for the failure of run {original}"
    assert len(_engine_messages(instance, parent, "auto-resume gave up: max_attempts (2)")) == 1
    # What failed, read from real failure events: the user's exception inside Metaflow's traceback,
    # for the flow's own job and for the resume job alike.
    for run_id in (original, parent):
        (failure,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
        details = failure_details(failure.event_log_entry)
        assert (details.reason, details.step_name, details.exception_class) == (
            "step_failure",
            "process",
            "IsADirectoryError",
        ), details
        assert "Is a directory" in details.message
    lineage = instance.get_runs(RunsFilter(tags={tags.ROOT_RUN_ID: original}))
    assert sorted(run.tags[tags.ATTEMPT] for run in lineage) == ["1", "2"]
    assert (workdir / "start.count").read_text() == "ran\n"  # start ran once: resumes cloned it


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeparateDeployment]:
    with SeparateDeployment(tmp_path_factory.mktemp("policy-e2e")) as running:
        yield running


def _instance(separate: SeparateDeployment) -> DagsterInstance:
    assert separate.deployment is not None
    return separate.deployment.instance()


def _set_policy(separate: SeparateDeployment, extra: str = "", max_attempts: int = 2) -> None:
    """Write the policy and wait for a tick that read it (it is re-read on every tick)."""
    assert separate.deployment is not None
    write_policy(separate.deployment.policy_file, max_attempts=max_attempts, extra=extra)
    wait_for_ticks(_instance(separate), 1, after=time.time())


def _pending_run_ids(instance: DagsterInstance) -> list[str]:
    ticks = sensor_ticks(instance)
    cursor = ticks[-1].tick_data.cursor if ticks else None
    return [p["run_id"] for p in json.loads(cursor)["pending"]] if cursor else []


def test_backoff_honoured_across_daemon_restart(separate: SeparateDeployment) -> None:
    _set_policy(separate, "  backoff: {initial_seconds: 40}\n", max_attempts=1)
    instance = _instance(separate)
    run_id = create_failed_run(instance, "LinearFlow")
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    failed_at = record.event_log_entry.timestamp
    wait_until(
        lambda: run_id in _pending_run_ids(instance),
        60,
        "the failure did not wait",
        separate.deployment.diagnostics,
    )
    separate.stop_daemon()  # the waiting resume now lives only in the stored cursor
    time.sleep(max(0.0, failed_at + 42 - time.time()))
    separate.start_daemon()
    resume = wait_for_resume_of(instance, run_id, deployment=separate.deployment)
    assert resume.tags[tags.ATTEMPT] == "1"
    record_of_resume = instance.get_run_record_by_id(resume.run_id)
    assert record_of_resume is not None
    assert record_of_resume.create_timestamp.timestamp() >= failed_at + 40
    # The resume of a made-up Metaflow run fails; with max_attempts 1 that lineage is given up.
    assert wait_for_run(instance, resume.run_id).status == DagsterRunStatus.FAILURE
    wait_until(
        lambda: _tag(instance, resume.run_id, tags.GAVE_UP), 60, "no give-up", separate.deployment.diagnostics
    )
    assert len(instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: run_id}))) == 1


def test_kill_switch_launches_nothing(separate: SeparateDeployment) -> None:
    _set_policy(separate, "enabled: false\n")
    instance = _instance(separate)
    before = time.time()
    run_id = create_failed_run(instance, "LinearFlow")
    ticks = wait_for_ticks(instance, 2, after=before)
    reasons = " ".join(t.tick_data.skip_reason or "" for t in ticks)
    assert f"run {run_id} (LinearFlow): skip: auto-resume is disabled" in reasons
    assert instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: run_id})) == []
    assert _tag(instance, run_id, tags.GAVE_UP) is None
    assert run_id not in _pending_run_ids(instance)


def test_observe_only_burst_of_100(separate: SeparateDeployment) -> None:
    """100 failures at once: 100 decisions within two ticks, each recorded once, nothing launched."""
    _set_policy(separate, "  mode: observe\n")
    instance = _instance(separate)
    resume_runs_before = len(instance.get_runs(RunsFilter(job_name="LinearFlow_resume")))
    run_ids = [create_failed_run(instance, "LinearFlow") for _ in range(100)]
    created = time.time()

    def undecided() -> list[str]:
        return [r for r in run_ids if _tag(instance, r, tags.OBSERVED) is None]

    wait_until(lambda: not undecided(), 120, "not every failure was decided", separate.deployment.diagnostics)
    decided_at = []
    for run_id in run_ids:
        (message,) = _engine_messages(instance, run_id, "auto-resume (observe mode) would")  # exactly once
        assert message.startswith("auto-resume (observe mode) would resume: resume dagster-0123456789ab")
        records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
        decided_at.append(max(r.event_log_entry.timestamp for r in records))
    # Ticks that started once every failure existed, up to the one that made the last decision.
    ticks = [t for t in sensor_ticks(instance, after=created) if t.timestamp <= max(decided_at)]
    print(f"burst of 100: decided by {len(ticks)} tick(s) after the last failure was created")
    assert len(ticks) <= 2
    assert len(instance.get_runs(RunsFilter(job_name="LinearFlow_resume"))) == resume_runs_before


def _tick_saying(separate: SeparateDeployment, after: float, *fragments: str, timeout: float = 120) -> Any:
    """The first finished tick started after ``after`` whose skip message holds every fragment."""
    instance = _instance(separate)

    def found() -> Any:
        for tick in sensor_ticks(instance, after):
            message = tick.tick_data.skip_reason or ""
            if all(fragment in message for fragment in fragments):
                return tick
        return None

    assert separate.deployment is not None
    return wait_until(found, timeout, f"no tick saying {fragments}", separate.deployment.diagnostics)


def _restart(separate: SeparateDeployment) -> float:
    """Stop and start the daemon (its code servers load the location anew); when it restarted."""
    separate.stop_daemon()
    restarted = time.time()
    separate.start_daemon()
    return restarted


def test_one_broken_flow_stops_only_itself(separate: SeparateDeployment, tmp_path: Path) -> None:
    """A policy listing metaflow-dagster's unparseable file for a split inside a branch, and a file
    whose flow class is gone, beside the examples: the location loads, the good flows' failures are
    resumed, every tick names both broken flows, and a failure of the second's job is noted once."""
    assert separate.deployment is not None
    instance = _instance(separate)
    unparseable = tmp_path / "split_in_branch_dagster.py"
    flow = ROOT / "tests" / "e2e" / "flows" / "split_in_branch_flow.py"
    compile_definitions(flow, unparseable, separate.deployment.env)
    renamed = tmp_path / "renamed_dagster.py"
    text = (ROOT / "examples" / "generated" / "linear_flow_dagster.py").read_text()
    renamed.write_text(
        text.replace("FLOW_NAME = 'LinearFlow'", "FLOW_NAME = 'NoSuchFlow'").replace(
            "def LinearFlow():", "def RenamedLinear():"
        )
    )
    write_policy(separate.deployment.policy_file, max_attempts=1, definitions_files=(unparseable, renamed))
    restarted = _restart(separate)
    first = _tick_saying(
        separate,
        restarted,
        "flow disabled (broken, not resumed): flows[7].definitions_file: definitions file "
        f"{unparseable} is not valid Python (line 563): unexpected indent; regenerate it",
        "flow disabled (broken, not resumed): flows[8].definitions_file: flow file ",
        "linear_flow.py has no flow class NoSuchFlow",
    )
    print(f"broken flows, tick message: {first.tick_data.skip_reason}")
    good = create_failed_run(instance, "LinearFlow")
    resume = wait_for_resume_of(instance, good, deployment=separate.deployment)
    assert resume.job_name == "LinearFlow_resume"
    # After that tick: a tick that requests runs has no skip message (its notes are in its log).
    orphan = create_failed_run(instance, "RenamedLinear")
    noted = f"run {orphan} (RenamedLinear): not resumed: its flow is disabled (flows[8].definitions_file)"
    said = _tick_saying(separate, restarted, noted)
    later = _tick_saying(separate, said.timestamp + 0.001, "flows[7].definitions_file")
    assert orphan not in (later.tick_data.skip_reason or "")  # said once
    assert instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: orphan})) == []
    validated = separate.deployment.cli("validate")
    assert validated.returncode == 3, validated.stderr
    assert f"broken: flows[7].definitions_file: definitions file {unparseable} is not valid Python" in (
        validated.stdout
    )
    assert "broken: flows[8].definitions_file: " in validated.stdout


def test_invalid_policy_edit_stops_nothing(separate: SeparateDeployment) -> None:
    """Through a workspace reload (the daemon's, every 60 s) and a daemon restart, ticks go on with
    the last good policy and say why; failures keep being resumed; the fixed file rules the next
    tick."""
    assert separate.deployment is not None
    instance = _instance(separate)
    policy_file = separate.deployment.policy_file
    write_policy(policy_file, max_attempts=1)
    valid_at = time.time()
    wait_for_ticks(instance, 1, after=valid_at)  # recorded as the last good policy
    policy_file.write_text(
        policy_file.read_text().replace("  max_attempts: 1\n", "  max_attempts: 1\n  max_atempts: 3\n")
    )
    broken_at = time.time()
    error = f"{policy_file}:7: defaults.max_atempts: unknown field"
    fallback = "policy file invalid, deciding with the last good policy (in force since "
    tick = _tick_saying(separate, broken_at, fallback, error, "fix: rename it to `max_attempts`")
    print(f"bad edit, tick message: {tick.tick_data.skip_reason}")
    before_reload = create_failed_run(instance, "LinearFlow")
    wait_for_resume_of(instance, before_reload, deployment=separate.deployment)
    # The daemon reloads its workspace every 60 s: the location loads again, from the last good policy.
    time.sleep(max(0.0, broken_at + 65 - time.time()))
    after_reload = create_failed_run(instance, "LinearFlow")
    wait_for_resume_of(instance, after_reload, deployment=separate.deployment)
    _tick_saying(separate, broken_at + 65, fallback, error)
    restarted = _restart(separate)
    _tick_saying(separate, restarted, fallback, error)
    after_restart = create_failed_run(instance, "LinearFlow")
    wait_for_resume_of(instance, after_restart, deployment=separate.deployment)
    # No tick failed meanwhile: the error is in every message instead.
    assert [t for t in sensor_ticks(instance, broken_at) if t.status.value == "FAILURE"] == []
    validated = separate.deployment.cli("validate")
    assert validated.returncode == 1
    assert error in validated.stderr
    assert "policy in force: the last good one, in force since " in validated.stderr
    # Fixed (and now in observe mode): the next tick decides with it.
    write_policy(policy_file, extra="  mode: observe\n")
    fixed_at = time.time()
    observed = create_failed_run(instance, "LinearFlow")
    wait_until(
        lambda: _tag(instance, observed, tags.OBSERVED),
        60,
        "the fixed policy did not rule the next ticks",
        separate.deployment.diagnostics,
    )
    assert instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: observed})) == []
    ticks = [t for t in sensor_ticks(instance, fixed_at + 6) if t.status.value != "STARTED"]
    assert all(fallback not in (t.tick_data.skip_reason or "") for t in ticks)
