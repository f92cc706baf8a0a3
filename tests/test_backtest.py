"""Tests for ``auto-resume backtest`` (auto_resume.cli.backtest and .backtest_report).

The history is real: a SQLite instance in a temporary DAGSTER_HOME; failed runs of two flows
made through the instance API as a run worker leaves them (``create_failed_run``); the sensor
ticked against them with its cursor kept between ticks, as the daemon does; and each run it
requests executed in-process as the real resume job, against a LinearFlow origin made the way
metaflow-dagster runs the flow (``failed_linear_origin``). One resume succeeds; one fails (its
origin is not in the datastore) and the sensor gives up on it; a BranchFlow failure is given up
by an error rule. The backtest of that policy must reproduce all of it; a stricter one must name
the resume runs it would not have made. The replay's waits are tested on plain data below.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, JobDefinition, build_sensor_context

from auto_resume.cli.backtest import (
    GAVE_UP,
    NONE,
    NOT_REACHED,
    RESUMED,
    WAITING,
    History,
    PastFailure,
    PastLineage,
    RecordedRun,
    Watched,
    backtest,
    parse_duration,
    replay,
    replay_failure,
)
from auto_resume.cli.main import main
from auto_resume.core.decision import FailedRun
from auto_resume.dagster import tags
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.sensor import evaluate
from auto_resume.metaflow.deployment import Deployment, read_deployment
from auto_resume.metaflow.flows import load_flow_shape
from auto_resume.policy.model import EffectiveFlowSettings, Policy
from tests.support.failed_runs import create_failed_run
from tests.support.linear_origin import failed_linear_origin, linear_deployment

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED = REPO_ROOT / "examples" / "generated"
ORIGIN = "dagster-0b1c2d3e4f5a"
LOST_ORIGIN = "dagster-00000000dead"  # logged by the failed run, never in the datastore
IN_FORCE = "defaults:\n  errors:\n    - {exception: KeyError, action: never}\n"
# Stricter: a RuntimeError is never resumed either.
STRICT = IN_FORCE + "    - {exception: RuntimeError, action: never}\n"
LOOSER = ""  # no error rule: the KeyError would have been resumed too


def write_policy(path: Path, settings: str) -> Path:
    """A policy watching the linear and the branch examples, with ``settings`` before ``flows``."""
    path.write_text(
        f"version: 1\n{settings}flows:\n"
        f"  - definitions_file: {GENERATED / 'linear_flow_dagster.py'}\n"
        f"  - definitions_file: {GENERATED / 'branch_flow_dagster.py'}\n"
    )
    return path


@dataclass
class Recorded:
    """The history the sensor and the resume job left in the instance."""

    resumed: str  # LinearFlow failure resumed by a resume run that succeeded
    resume_ok: str
    lost: str  # LinearFlow failure resumed by a resume run that failed, then given up
    resume_failed: str
    refused: str  # BranchFlow failure given up by the error rule, never resumed


def record_history(instance: DagsterInstance, datastore: Path, policy: Path) -> Recorded:
    """Fail runs of two flows, tick the sensor and execute every resume it requests, until quiet."""
    linear = linear_deployment(datastore)
    failed_linear_origin(linear, ORIGIN, datastore / "counters")
    branch = read_deployment(GENERATED / "branch_flow_dagster.py")
    by_job: dict[str, Deployment] = {}
    jobs: dict[str, JobDefinition] = {}
    for deployment in (linear, branch):
        shape = load_flow_shape(deployment.flow_file, deployment.flow_name)
        jobs[deployment.resume_job_name] = build_resume_job(deployment, shape)
        by_job[deployment.job_name] = by_job[deployment.resume_job_name] = deployment

    resumed = create_failed_run(instance, "LinearFlow", metaflow_run_id=ORIGIN, message="injected failure")
    lost = create_failed_run(instance, "LinearFlow", metaflow_run_id=LOST_ORIGIN, message="disk full")
    refused = create_failed_run(
        instance, "BranchFlow", metaflow_run_id="dagster-0123456789ab", step="left", exception="KeyError"
    )
    cursor: str | None = json.dumps({"after": 0, "pending": []})
    executed: dict[str, str] = {}  # failed run -> its resume run
    for _ in range(5):
        result = evaluate(build_sensor_context(instance=instance, cursor=cursor), by_job, jobs, policy)
        cursor = result.cursor
        if not result.run_requests:
            break
        for request in result.run_requests:
            assert request.job_name is not None
            run = jobs[request.job_name].execute_in_process(
                run_config=request.run_config,
                instance=instance,
                tags={**request.tags, tags.DAGSTER_RUN_KEY: str(request.run_key)},
                raise_on_error=False,
            )
            executed[request.tags[tags.PARENT_RUN_ID]] = run.run_id
    return Recorded(resumed, executed[resumed], lost, executed[lost], refused)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorded, Path]]:
    """The recorded history, in a DAGSTER_HOME of its own, and the policy in force."""
    base = tmp_path_factory.mktemp("backtest")
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        # The suite's user, as the other tests keep it: with another one, state this module left in
        # the pytest process made the parity tests' card lookups fail later ("Object not in
        # namespace 'user:<suite user>'"); they pass alone.
        patch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))
        patch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(base))
        instance = DagsterInstance.get()
        policy = write_policy(base / "policy.yaml", IN_FORCE)
        try:
            history = record_history(instance, base, policy)
        finally:
            instance.dispose()
        yield history, policy


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = main(["backtest", *argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def _failures(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {failure["run_id"]: failure for flow in document["flows"] for failure in flow["failures"]}


def test_the_policy_in_force_reproduces_what_happened(
    recorded: tuple[Recorded, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    history, policy = recorded
    status, document = _cli(capsys, "--policy", str(policy))
    assert status == 0, document
    assert [flow["job_name"] for flow in document["flows"]] == ["LinearFlow", "BranchFlow"]
    failures = _failures(document)
    # Four failures: three originals and the failed resume run.
    assert set(failures) == {history.resumed, history.lost, history.resume_failed, history.refused}
    happened = {run_id: failure["happened"]["action"] for run_id, failure in failures.items()}
    assert happened == {
        history.resumed: RESUMED,
        history.lost: RESUMED,
        history.resume_failed: GAVE_UP,
        history.refused: GAVE_UP,
    }
    decided = {run_id: failure["policy"]["action"] for run_id, failure in failures.items()}
    assert decided == {
        history.resumed: "resume",
        history.lost: "resume",
        history.resume_failed: "give_up",
        history.refused: "give_up",
    }
    assert all(failure["policy"]["as_happened"] for failure in failures.values())
    assert failures[history.refused]["policy"]["error_rule"] == 0
    assert "nothing to resume" in failures[history.resume_failed]["policy"]["reason"]
    assert failures[history.resume_failed]["root_run_id"] == history.lost
    assert failures[history.resume_failed]["attempt"] == 1
    [resume] = failures[history.resumed]["happened"]["resume_runs"]
    assert (resume["run_id"], resume["status"], resume["manual"]) == (history.resume_ok, "SUCCESS", None)
    assert resume["duration_seconds"] > 0
    # The compute: both recorded resume runs, nothing saved, nothing extra.
    compute = document["compute"]
    assert compute["happened"]["resume_runs"] == compute["policy"]["resume_runs"] == 2
    assert compute["policy"]["seconds"] == compute["happened"]["seconds"] > 0
    assert (compute["policy"]["not_made"], compute["policy"]["extra"]) == (0, 0)
    assert document["against"] is None and document["differences"] == []

    assert main(["backtest", "--policy", str(policy)]) == 0
    text = capsys.readouterr().out
    assert "LinearFlow: 3 failure(s) in 2 lineage(s); the policy does what happened for 3 of 3" in text
    assert "BranchFlow: 1 failure(s) in 1 lineage(s); the policy does what happened for 1 of 1" in text
    assert f"happened: resumed by {history.resume_ok} (SUCCESS, " in text
    assert "[differs]" not in text


def test_a_stricter_policy_names_the_resume_runs_it_would_not_have_made(
    recorded: tuple[Recorded, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    history, policy = recorded
    strict = write_policy(policy.parent / "strict.yaml", STRICT)
    status, document = _cli(capsys, "--policy", str(policy), "--against", str(strict))
    assert status == 0, document
    failures = _failures(document)
    against = {run_id: failure["against"]["action"] for run_id, failure in failures.items()}
    assert against == {
        history.resumed: "give_up",
        history.lost: "give_up",
        history.resume_failed: NOT_REACHED,  # the resume that failed would never have run
        history.refused: "give_up",
    }
    assert failures[history.resumed]["against"]["error_rule"] == 1
    assert failures[history.resumed]["against"]["as_happened"] is False
    differences = [
        (d["run_id"], d["job_name"], d["attempt"], d["policy"], d["against"]) for d in document["differences"]
    ]
    assert differences == [
        (history.resumed, "LinearFlow", 0, "resume", "give_up"),
        (history.lost, "LinearFlow", 0, "resume", "give_up"),
        (history.resume_failed, "LinearFlow", 1, "give_up", NOT_REACHED),
    ]
    compute = document["compute"]
    assert (compute["against"]["resume_runs"], compute["against"]["not_made"]) == (0, 2)
    assert compute["against"]["saved_seconds"] == compute["happened"]["seconds"]

    assert main(["backtest", "--policy", str(policy), "--against", str(strict), "--job", "LinearFlow"]) == 0
    text = capsys.readouterr().out
    assert "BranchFlow" not in text
    assert "against:  give_up: error rule errors[1] says never resume" in text
    assert "against:  0 of them, 0.0 s; would not have made 2 (" in text


def test_a_looser_policy_counts_a_resume_that_never_ran(
    recorded: tuple[Recorded, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    history, policy = recorded
    looser = write_policy(policy.parent / "looser.yaml", LOOSER)
    status, document = _cli(capsys, "--policy", str(looser), "--job", "BranchFlow")
    assert status == 0, document
    [failure] = _failures(document).values()
    assert (failure["run_id"], failure["policy"]["action"], failure["happened"]["action"]) == (
        history.refused,
        "resume",
        GAVE_UP,
    )
    # BranchFlow has no recorded resume run to estimate its duration from.
    assert document["compute"]["policy"]["extra"] == 1
    assert document["compute"]["policy"]["extra_seconds_estimated"] is None


def test_since_leaves_older_lineages_out_and_bad_input_is_refused(
    recorded: tuple[Recorded, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, policy = recorded
    later = time.time() + 3600
    with DagsterInstance.get() as instance:
        result = backtest(instance, policy, since=60, now=later)
    assert result.history.lineages == ()
    status, document = _cli(capsys, "--policy", str(policy.parent / "missing.yaml"))
    assert status == 1 and "missing.yaml" in document["error"]
    for since in ("0", "soon", "-5m"):
        with pytest.raises(SystemExit) as exited:
            main(["backtest", "--since", since])
        assert exited.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90m", 5400), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


# --- the replay's waits, on plain data ----------------------------------------------------------

T0 = 1_800_000_000.0  # a Friday, 2027-01-15 08:00 UTC


def _failure(resumes: tuple[RecordedRun, ...] = ()) -> PastFailure:
    facts = FailedRun("f1", "LinearFlow", "dagster-0123456789ab", None, 0, failed_at=T0)
    return PastFailure(facts, resumes, None, None)


def _run(run_id: str, created: float, ended: float | None, job: str = "LinearFlow") -> RecordedRun:
    return RecordedRun(run_id, f"{job}_resume", job, None, "SUCCESS", None, created, ended, None)


def _rules(policy: dict[str, Any] | None = None, **settings: Any) -> tuple[EffectiveFlowSettings, Policy]:
    return EffectiveFlowSettings.model_validate(settings), Policy.model_validate(
        {"version": 1, **(policy or {})}
    )


def _history(*runs: RecordedRun, until: float = T0 + 86400) -> History:
    return History(T0 - 60, until, (), runs)


def test_replay_waits_out_the_backoff() -> None:
    rules, policy = _rules(backoff={"initial_seconds": 300})
    replayed = replay_failure(_failure(), "LinearFlow", rules, policy, _history())
    assert (replayed.action, replayed.waited, replayed.decided_at) == ("resume", 300, T0 + 300)


def test_replay_waits_for_a_recorded_resume_run_to_end_under_a_cap() -> None:
    busy = _run("other", T0 - 100, T0 + 500)
    own = _run("own", T0 + 1, T0 + 50)  # the failure's own resume does not count against it
    rules, policy = _rules(max_resumes_in_flight=1)
    replayed = replay_failure(_failure((own,)), "LinearFlow", rules, policy, _history(busy, own))
    assert (replayed.action, replayed.waited) == ("resume", 500)
    # Another flow's run counts only against the global cap.
    rules, policy = _rules(policy={"max_resumes_in_flight": 1})
    other_flow = _run("other", T0 - 100, T0 + 200, job="BranchFlow")
    replayed = replay_failure(_failure(), "LinearFlow", rules, policy, _history(other_flow))
    assert (replayed.action, replayed.waited) == ("resume", 200)
    # A run that never ended keeps it waiting until the history ends.
    replayed = replay_failure(_failure(), "LinearFlow", rules, policy, _history(_run("stuck", T0 - 1, None)))
    assert replayed.action == WAITING
    assert replayed.agrees_with(_failure())  # nothing happened to it either
    assert not replayed.agrees_with(_failure((own,)))


def test_replay_waits_for_the_time_window() -> None:
    windows = {"timezone": "UTC", "allowed": [{"start": "10:00", "end": "12:00"}]}
    rules, policy = _rules(windows=windows)
    replayed = replay_failure(_failure(), "LinearFlow", rules, policy, _history())
    assert (replayed.action, replayed.waited) == ("resume", 2 * 3600)
    # Closed until after the history ends: still waiting.
    replayed = replay_failure(_failure(), "LinearFlow", rules, policy, _history(until=T0 + 3600))
    assert (replayed.action, replayed.agrees_with(_failure())) == (WAITING, True)
    assert _failure().happened == NONE


# --- a whole lineage, on plain data ---------------------------------------------------------------


def _lineage() -> tuple[PastLineage, RecordedRun, RecordedRun]:
    """An original failure resumed by a run that failed, resumed again by one that succeeded."""
    first = RecordedRun("r1", "LinearFlow_resume", "LinearFlow", "f0", "FAILURE", None, T0 + 1, T0 + 31, 30.0)
    second = RecordedRun(
        "r2", "LinearFlow_resume", "LinearFlow", "r1", "SUCCESS", None, T0 + 40, T0 + 60, 20.0
    )
    original = FailedRun("f0", "LinearFlow", "dagster-0123456789ab", None, 0, failed_at=T0)
    again = FailedRun("r1", "LinearFlow_resume", "dagster-1123456789ab", "f0", 1, failed_at=T0 + 31)
    failures = (PastFailure(original, (first,), None, None), PastFailure(again, (second,), None, None))
    return PastLineage("LinearFlow", "f0", failures), first, second


def _watched(policy: dict[str, object]) -> Watched:
    loaded = Policy.model_validate({"version": 1, **policy})
    rules = EffectiveFlowSettings.model_validate(loaded.defaults.model_dump())
    return Watched(Path("p.yaml"), loaded, {"LinearFlow": "LinearFlow"}, {"LinearFlow": rules})


def test_replay_of_a_lineage_follows_it_until_the_policy_stops() -> None:
    lineage, first, second = _lineage()
    history = _history(first, second)
    # As it happened: both failures resumed, both resume runs made.
    done = replay(lineage, history, _watched({}))
    assert [r.action for r in done.replayed] == ["resume", "resume"]
    assert (done.compute.runs, done.compute.seconds, done.compute.not_made) == (2, 50.0, 0)
    # One attempt only: the second resume would not have been made.
    strict = replay(lineage, history, _watched({"defaults": {"max_attempts": 1}}))
    assert [r.action for r in strict.replayed] == ["resume", "give_up"]
    assert "max_attempts (1) spent" in strict.replayed[1].reason
    assert (strict.compute.runs, strict.compute.not_made, strict.compute.saved_seconds) == (1, 1, 20.0)
    # Observe mode launches nothing: the lineage ends at its first failure.
    observe = replay(lineage, history, _watched({"defaults": {"mode": "observe"}}))
    assert [(r.action, r.observe) for r in observe.replayed] == [("resume", True), (NOT_REACHED, False)]
    assert (observe.compute.runs, observe.compute.not_made, observe.compute.saved_seconds) == (0, 2, 50.0)


def test_replay_estimates_a_resume_that_never_ran_from_the_flow_s_resume_runs() -> None:
    lineage, first, second = _lineage()
    # The second failure was given up on; a looser policy resumes it: 25 s, the median.
    given_up = PastLineage(
        "LinearFlow", "f0", (lineage.failures[0], PastFailure(lineage.failures[1].facts, (), "spent", None))
    )
    looser = replay(given_up, _history(first, second), _watched({"defaults": {"max_attempts": 3}}))
    assert [r.action for r in looser.replayed] == ["resume", "resume"]
    assert (looser.compute.extra, looser.compute.extra_seconds) == (1, 25.0)
    # A flow the policy does not list is skipped: the sensor does not watch it.
    unwatched = replay(lineage, _history(first, second), Watched(Path("p.yaml"), Policy(version=1), {}, {}))
    assert unwatched.replayed[0].action == "skip"
    assert unwatched.replayed[0].reason == "LinearFlow is not in the policy p.yaml"
