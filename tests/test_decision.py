"""Tests for auto_resume.core.decision: the truth table of `decide`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from auto_resume.core.decision import (
    Action,
    FailedRun,
    FlowRules,
    Situation,
    backoff_delay,
    decide,
    failure_signature,
    normalise_message,
    window_open,
)
from auto_resume.policy.settings import Backoff, ErrorRule, Windows

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC, a Thursday

ORIGINAL = FailedRun(
    run_id="run-9",
    job_name="LinearFlow",
    metaflow_run_id="dagster-0123456789ab",
    root_run_id=None,
    attempt=0,
    failed_at=T0,
    failure_reason="step_failure",
    step_name="train",
    exception_class="MemoryError",
    message="out of memory after 512 MB",
)
ON = FlowRules(enabled=True, max_attempts=2)
OFF = FlowRules(enabled=False, max_attempts=2)
SAME = failure_signature("train", "MemoryError", "out of memory after 512 MB")


def rules(**changes: Any) -> FlowRules:
    """The default rules (enabled, max_attempts 2) with some settings changed."""
    return FlowRules.model_validate({**ON.model_dump(), **changes})


def at(seconds_after_failure: float, **load: Any) -> Situation:
    """Asked this long after the failure, with this many resume runs in flight."""
    return Situation(now=T0 + seconds_after_failure, **load)


NEVER_OOM = ErrorRule(action="never", exception="Memory*")
BLACKOUT = Windows(blackouts=[{"start": "2026-01-01 00:00:00", "end": "2027-01-01 00:00:00"}])  # type: ignore[list-item]


def failed(**changes: Any) -> FailedRun:
    """The original failure of run-9, with some facts changed."""
    return dataclasses.replace(ORIGINAL, **changes)


# (failed run, rules, situation, action, attempt, root_run_id, fragments the reason must contain)
CASES = [
    # An original failure (attempt 0) of an enabled flow: first resume, the run is its own root.
    pytest.param(
        ORIGINAL,
        ON,
        at(0),
        Action.RESUME,
        1,
        "run-9",
        ["dagster-0123456789ab", "attempt 1 of 2"],
        id="original",
    ),
    # A failed resume (attempt 1) inherits the lineage root from its tags and asks for attempt 2.
    pytest.param(
        failed(run_id="run-10", attempt=1, root_run_id="run-1"),
        ON,
        at(0),
        Action.RESUME,
        2,
        "run-1",
        ["attempt 2 of 2"],
        id="second-resume",
    ),
    # A resume run without a root tag (launched by hand) is its own root.
    pytest.param(
        failed(run_id="run-10", attempt=1),
        ON,
        at(0),
        Action.RESUME,
        2,
        "run-10",
        ["attempt 2 of 2"],
        id="resume-without-root-tag",
    ),
    # Attempt N + 1 is computed from any N, within a generous limit.
    pytest.param(
        failed(attempt=6, root_run_id="run-1"),
        FlowRules(enabled=True, max_attempts=10),
        at(0),
        Action.RESUME,
        7,
        "run-1",
        ["attempt 7 of 10"],
        id="attempt-n-plus-one",
    ),
    # attempt 2 failed with max_attempts 2: the lineage is spent; the reason names the limit and root.
    pytest.param(
        failed(run_id="run-11", attempt=2, root_run_id="run-1"),
        ON,
        at(0),
        Action.GIVE_UP,
        3,
        "run-1",
        ["max_attempts (2)", "run-1"],
        id="max-attempts-exhausted",
    ),
    # max_attempts 0: never resume, not even the original failure.
    pytest.param(
        ORIGINAL,
        FlowRules(enabled=True, max_attempts=0),
        at(0),
        Action.GIVE_UP,
        1,
        "run-9",
        ["max_attempts (0)"],
        id="max-attempts-zero",
    ),
    # No Metaflow run id in the log: Metaflow never started, nothing to resume.
    pytest.param(
        failed(metaflow_run_id=None),
        ON,
        at(0),
        Action.GIVE_UP,
        1,
        "run-9",
        ["run-9", "before any Metaflow step started"],
        id="no-metaflow-run-id",
    ),
    # Tagged auto_resume/opt_out=true: left alone, nothing recorded.
    pytest.param(
        failed(opted_out=True),
        ON,
        at(0),
        Action.SKIP,
        0,
        "",
        ["run-9", "auto_resume/opt_out=true"],
        id="opt-out",
    ),
    # Dagster's own run retries will launch it again: not ours to resume.
    pytest.param(
        failed(will_retry=True),
        ON,
        at(0),
        Action.SKIP,
        0,
        "",
        ["Dagster's own run retries", "run-9"],
        id="will-retry",
    ),
    # The policy disables the flow (or the global kill switch is off).
    pytest.param(ORIGINAL, OFF, at(0), Action.SKIP, 0, "", ["disabled", "LinearFlow"], id="disabled"),
    # Precedence: opt-out wins over Dagster's retry.
    pytest.param(
        failed(opted_out=True, will_retry=True),
        ON,
        at(0),
        Action.SKIP,
        0,
        "",
        ["opt_out"],
        id="opt-out-before-retry",
    ),
    # Precedence: opt-out wins over a disabled flow.
    pytest.param(
        failed(opted_out=True), OFF, at(0), Action.SKIP, 0, "", ["opt_out"], id="opt-out-before-disabled"
    ),
    # Precedence: opt-out wins over an exhausted lineage (no give-up recorded on an opted-out run).
    pytest.param(
        failed(opted_out=True, attempt=5),
        ON,
        at(0),
        Action.SKIP,
        0,
        "",
        ["opt_out"],
        id="opt-out-before-exhausted",
    ),
    # Precedence: Dagster's retry wins over a disabled flow.
    pytest.param(
        failed(will_retry=True),
        OFF,
        at(0),
        Action.SKIP,
        0,
        "",
        ["Dagster's own run retries"],
        id="retry-before-disabled",
    ),
    # Precedence: a disabled flow is skipped, not given up, even without a Metaflow run id.
    pytest.param(
        failed(metaflow_run_id=None),
        OFF,
        at(0),
        Action.SKIP,
        0,
        "",
        ["disabled"],
        id="disabled-before-no-run-id",
    ),
    # Precedence: a disabled flow is skipped, not given up, even when its lineage is spent.
    pytest.param(
        failed(attempt=2), OFF, at(0), Action.SKIP, 0, "", ["disabled"], id="disabled-before-exhausted"
    ),
    # Precedence: a missing Metaflow run id is reported before the spent lineage.
    pytest.param(
        failed(metaflow_run_id=None, attempt=2),
        ON,
        at(0),
        Action.GIVE_UP,
        3,
        "run-9",
        ["before any Metaflow step started"],
        id="no-run-id-before-exhausted",
    ),
    # Backoff: 60 s after the failure; asked 10 s after it, the resume waits until T0 + 60.
    pytest.param(
        ORIGINAL,
        rules(backoff=Backoff(initial_seconds=60)),
        at(10),
        Action.WAIT,
        1,
        "run-9",
        ["backoff", "attempt 1 is due at 2026-05-28 20:27:40 UTC"],
        id="backoff-waits",
    ),
    # Backoff: asked after the due time, it resumes.
    pytest.param(
        ORIGINAL,
        rules(backoff=Backoff(initial_seconds=60)),
        at(61),
        Action.RESUME,
        1,
        "run-9",
        [],
        id="backoff-due",
    ),
    # Backoff grows per attempt: attempt 2 waits 60 * 3 = 180 s, so at +61 s it still waits.
    pytest.param(
        failed(attempt=1, root_run_id="run-1"),
        rules(backoff=Backoff(initial_seconds=60, multiplier=3)),
        at(61),
        Action.WAIT,
        2,
        "run-1",
        ["20:29:40"],
        id="backoff-multiplies",
    ),
    # Backoff is capped at max_seconds: attempt 2 waits min(180, 50) = 50 s, due by +61 s.
    pytest.param(
        failed(attempt=1, root_run_id="run-1"),
        rules(backoff=Backoff(initial_seconds=60, multiplier=3, max_seconds=50)),
        at(61),
        Action.RESUME,
        2,
        "run-1",
        [],
        id="backoff-capped",
    ),
    # A blackout covering now: wait, decided again at the next minute.
    pytest.param(
        ORIGINAL, rules(windows=BLACKOUT), at(0), Action.WAIT, 1, "run-9", ["time windows"], id="blackout"
    ),
    # Global in-flight cap reached: wait.
    pytest.param(
        ORIGINAL,
        ON,
        Situation(now=T0 + 10, in_flight=5, max_in_flight=5),
        Action.WAIT,
        1,
        "run-9",
        ["max_resumes_in_flight (5) reached"],
        id="global-cap",
    ),
    # Per-flow in-flight cap reached (the global one has room): wait.
    pytest.param(
        ORIGINAL,
        rules(max_resumes_in_flight=2),
        Situation(now=T0 + 10, in_flight=2, in_flight_for_flow=2, max_in_flight=5),
        Action.WAIT,
        1,
        "run-9",
        ["max_resumes_in_flight for LinearFlow (2)"],
        id="flow-cap",
    ),
    # Below both caps: resume.
    pytest.param(
        ORIGINAL,
        rules(max_resumes_in_flight=2),
        Situation(now=T0 + 10, in_flight=4, in_flight_for_flow=1, max_in_flight=5),
        Action.RESUME,
        1,
        "run-9",
        [],
        id="below-caps",
    ),
    # First seen more than max_failure_age_seconds after it failed (a sensor turned back on): skip.
    pytest.param(
        ORIGINAL,
        rules(max_failure_age_seconds=3600),
        Situation(now=T0 + 7200, first_seen_at=T0 + 7200),
        Action.SKIP,
        0,
        "",
        ["max_failure_age_seconds (3600)"],
        id="too-old",
    ),
    # The age counts when the failure was first seen, not how long it has waited since.
    pytest.param(
        ORIGINAL,
        rules(max_failure_age_seconds=3600),
        Situation(now=T0 + 100_000, first_seen_at=T0 + 10),
        Action.RESUME,
        1,
        "run-9",
        [],
        id="age-ok",
    ),
    # An error rule `never` matching the exception class (glob): give up, naming the rule.
    pytest.param(
        ORIGINAL,
        rules(errors=[NEVER_OOM]),
        at(0),
        Action.GIVE_UP,
        1,
        "run-9",
        ["error rule errors[0]", "MemoryError"],
        id="rule-never",
    ),
    # First match wins: a `resume` rule before the `never` rule lets the failure through.
    pytest.param(
        ORIGINAL,
        rules(errors=[ErrorRule(action="resume", message=r"after \d+ MB"), NEVER_OOM]),
        at(0),
        Action.RESUME,
        1,
        "run-9",
        [],
        id="rule-first-match-wins",
    ),
    # A rule whose every condition must hold: the step glob does not match, so it does not apply.
    pytest.param(
        ORIGINAL,
        rules(errors=[ErrorRule(action="never", exception="MemoryError", step="load*")]),
        at(0),
        Action.RESUME,
        1,
        "run-9",
        [],
        id="rule-all-conditions",
    ),
    # A rule on the Dagster failure reason: a run worker crash is never resumed.
    pytest.param(
        failed(failure_reason="unexpected_termination"),
        rules(errors=[ErrorRule(action="never", reason=("unexpected_termination", "start_timeout"))]),
        at(0),
        Action.GIVE_UP,
        1,
        "run-9",
        ["unexpected_termination"],
        id="rule-reason",
    ),
    # Precedence: a `never` rule is reported before a spent lineage.
    pytest.param(
        failed(attempt=2),
        rules(errors=[NEVER_OOM]),
        at(0),
        Action.GIVE_UP,
        3,
        "run-9",
        ["errors[0]"],
        id="rule-first",
    ),
    # A resume that failed exactly like the attempt before it (numbers normalised): not transient.
    pytest.param(
        failed(attempt=1, message="out of memory after 768 MB", parent_failure=SAME),
        rules(stop_on_same_failure=True),
        at(0),
        Action.GIVE_UP,
        2,
        "run-9",
        ["failed like the attempt before it", "train", "MemoryError"],
        id="same-failure",
    ),
    # A different message this time: resumed again.
    pytest.param(
        failed(attempt=1, message="disk full", parent_failure=SAME),
        rules(stop_on_same_failure=True),
        at(0),
        Action.RESUME,
        2,
        "run-9",
        [],
        id="different-failure",
    ),
    # stop_on_same_failure off (the default): the same failure is resumed within max_attempts.
    pytest.param(
        failed(attempt=1, parent_failure=SAME), ON, at(0), Action.RESUME, 2, "run-9", [], id="same-allowed"
    ),
    # Precedence: the kill switch wins over a pending backoff and an error rule.
    pytest.param(
        ORIGINAL,
        rules(enabled=False, errors=[NEVER_OOM], backoff=Backoff(initial_seconds=60)),
        at(0),
        Action.SKIP,
        0,
        "",
        ["disabled"],
        id="disabled-before-everything",
    ),
    # Observe mode does not change the decision (the sensor records it instead of launching).
    pytest.param(ORIGINAL, rules(mode="observe"), at(0), Action.RESUME, 1, "run-9", [], id="observe"),
]


@pytest.mark.parametrize(("run", "rules", "situation", "action", "attempt", "root", "fragments"), CASES)
def test_decide(
    run: FailedRun,
    rules: FlowRules,
    situation: Situation,
    action: Action,
    attempt: int,
    root: str,
    fragments: list[str],
) -> None:
    decision = decide(run, rules, situation)
    assert decision.action is action
    assert decision.attempt == attempt
    assert decision.root_run_id == root
    for fragment in fragments:
        assert fragment in decision.reason
    if action is Action.WAIT:
        assert decision.due_at is not None and decision.due_at >= situation.now


PARK_NEVER_OOM = ErrorRule(action="never", exception="Memory*", on_code_change="resume")
KEEP_OOM = ErrorRule(action="never", exception="Memory*", on_code_change="give_up")
# A resume (attempt 2) failing exactly like the attempt before it.
SAME_AGAIN = failed(run_id="run-11", attempt=2, root_run_id="run-9", parent_failure=SAME)
OTHER_AGAIN = failed(run_id="run-11", attempt=2, root_run_id="run-9", parent_failure="another")


# (failed run, rules, parked?, fragment of the reason): which give-ups are parked instead.
PARK_CASES = [
    # An error rule says never, and on_code_change: resume on the rule: parked.
    pytest.param(ORIGINAL, rules(errors=[PARK_NEVER_OOM]), True, "errors[0]", id="rule-parks"),
    # The same rule, with the flow's on_code_change: resume instead: parked.
    pytest.param(
        ORIGINAL, rules(errors=[NEVER_OOM], on_code_change="resume"), True, "errors[0]", id="flow-parks"
    ),
    # The rule's give_up wins over the flow's resume: given up for good.
    pytest.param(
        ORIGINAL, rules(errors=[KEEP_OOM], on_code_change="resume"), False, "errors[0]", id="rule-wins"
    ),
    # The default (give_up): given up for good, as before.
    pytest.param(ORIGINAL, rules(errors=[NEVER_OOM]), False, "errors[0]", id="default-gives-up"),
    # max_attempts spent, failing like the attempt before: deterministic, parked.
    pytest.param(SAME_AGAIN, rules(on_code_change="resume"), True, "max_attempts (2) spent", id="spent-same"),
    # max_attempts spent with another failure each time: not shown deterministic, given up.
    pytest.param(
        OTHER_AGAIN, rules(on_code_change="resume"), False, "max_attempts (2) spent", id="spent-other"
    ),
    # stop_on_same_failure: deterministic, parked.
    pytest.param(
        dataclasses.replace(SAME_AGAIN, attempt=1),
        rules(on_code_change="resume", stop_on_same_failure=True),
        True,
        "failed like the attempt before it",
        id="same-failure",
    ),
    # No Metaflow run to resume: nothing a code change could resume, given up.
    pytest.param(
        failed(metaflow_run_id=None), rules(on_code_change="resume"), False, "nothing to resume", id="no-run"
    ),
]


@pytest.mark.parametrize(("run", "rules", "parked", "fragment"), PARK_CASES)
def test_deterministic_give_ups_are_parked_under_on_code_change(
    run: FailedRun, rules: FlowRules, parked: bool, fragment: str
) -> None:
    decision = decide(run, rules, at(0))
    assert decision.action is Action.GIVE_UP
    assert decision.parked is parked
    assert fragment in decision.reason
    assert ("parked until the flow's code changes" in decision.reason) is parked


def test_decide_without_situation_is_at_the_failure_time() -> None:
    assert decide(ORIGINAL, rules(backoff=Backoff(initial_seconds=1))).action is Action.WAIT


def test_jitter_is_bounded_and_fixed_per_run() -> None:
    backoff = Backoff(initial_seconds=10, jitter_seconds=5)
    delays = {run: backoff_delay(backoff, 1, run) for run in (f"run-{i}" for i in range(50))}
    assert all(10 <= d < 15 for d in delays.values())
    assert len(set(delays.values())) > 40  # spread
    assert backoff_delay(backoff, 1, "run-1") == delays["run-1"]  # same run, same wait: restart-proof
    assert backoff_delay(Backoff(), 3, "run-1") == 0  # no backoff configured: resume at once


PARIS_WORKDAYS = Windows(
    timezone="Europe/Paris",
    allowed=[{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "20:00"}],  # type: ignore[list-item]
)
NIGHTS = Windows(timezone="America/New_York", allowed=[{"days": ["fri"], "start": "22:00", "end": "06:00"}])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("windows", "utc", "open_"),
    [
        # No windows: always open.
        (None, "2026-05-28 03:00", True),
        # Thursday 10:00 in Paris (08:00 UTC, summer time): inside working hours.
        (PARIS_WORKDAYS, "2026-05-28 08:00", True),
        # Thursday 05:59 UTC is 07:59 in Paris: not yet open.
        (PARIS_WORKDAYS, "2026-05-28 05:59", False),
        # Thursday 18:00 UTC is 20:00 in Paris: the end is excluded.
        (PARIS_WORKDAYS, "2026-05-28 18:00", False),
        # Saturday noon: not a listed day.
        (PARIS_WORKDAYS, "2026-05-30 10:00", False),
        # Friday 23:00 in New York (Sat 03:00 UTC): inside the overnight window.
        (NIGHTS, "2026-05-30 03:00", True),
        # Saturday 05:00 in New York: the overnight part of Friday's window.
        (NIGHTS, "2026-05-30 09:00", True),
        # Saturday 23:00 in New York: Saturday is not listed.
        (NIGHTS, "2026-05-31 03:00", False),
        # Inside a blackout (no allowed hours given: otherwise open).
        (BLACKOUT, "2026-05-28 08:00", False),
        # After the blackout.
        (BLACKOUT, "2027-01-01 00:00", True),
    ],
)
def test_window_open(windows: Windows | None, utc: str, open_: bool) -> None:
    moment = dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC).timestamp()
    assert window_open(windows, moment) is open_


def test_normalised_message_ignores_numbers_and_ids() -> None:
    assert normalise_message("Timeout after 30s on host 0xdeadbeef ") == normalise_message(
        "timeout   after 31s on host 0xfeedface"
    )
    assert normalise_message("disk full") != normalise_message("out of memory")
