"""Tests for auto_resume.decision: the truth table of `decide`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from auto_resume.decision import Action, FailedRun, FlowRules, decide

ORIGINAL = FailedRun(
    run_id="run-9",
    job_name="LinearFlow",
    metaflow_run_id="dagster-0123456789ab",
    root_run_id=None,
    attempt=0,
)
ON = FlowRules(enabled=True, max_attempts=2)
OFF = FlowRules(enabled=False, max_attempts=2)


def failed(**changes: Any) -> FailedRun:
    """The original failure of run-9, with some facts changed."""
    return dataclasses.replace(ORIGINAL, **changes)


# (failed run, rules, action, attempt, root_run_id, fragments the reason must contain)
CASES = [
    # An original failure (attempt 0) of an enabled flow: first resume, the run is its own root.
    pytest.param(
        ORIGINAL, ON, Action.RESUME, 1, "run-9", ["dagster-0123456789ab", "attempt 1 of 2"], id="original"
    ),
    # A failed resume (attempt 1) inherits the lineage root from its tags and asks for attempt 2.
    pytest.param(
        failed(run_id="run-10", attempt=1, root_run_id="run-1"),
        ON,
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
        Action.GIVE_UP,
        1,
        "run-9",
        ["run-9", "before any Metaflow step started"],
        id="no-metaflow-run-id",
    ),
    # Tagged auto_resume/opt_out=true: left alone, nothing recorded.
    pytest.param(
        failed(opted_out=True), ON, Action.SKIP, 0, "", ["run-9", "auto_resume/opt_out=true"], id="opt-out"
    ),
    # Dagster's own run retries will launch it again: not ours to resume.
    pytest.param(
        failed(will_retry=True),
        ON,
        Action.SKIP,
        0,
        "",
        ["Dagster's own run retries", "run-9"],
        id="will-retry",
    ),
    # The policy disables the flow (or the global kill switch is off).
    pytest.param(ORIGINAL, OFF, Action.SKIP, 0, "", ["disabled", "LinearFlow"], id="disabled"),
    # Precedence: opt-out wins over Dagster's retry.
    pytest.param(
        failed(opted_out=True, will_retry=True),
        ON,
        Action.SKIP,
        0,
        "",
        ["opt_out"],
        id="opt-out-before-retry",
    ),
    # Precedence: opt-out wins over a disabled flow.
    pytest.param(failed(opted_out=True), OFF, Action.SKIP, 0, "", ["opt_out"], id="opt-out-before-disabled"),
    # Precedence: opt-out wins over an exhausted lineage (no give-up recorded on an opted-out run).
    pytest.param(
        failed(opted_out=True, attempt=5),
        ON,
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
        Action.SKIP,
        0,
        "",
        ["Dagster's own run retries"],
        id="retry-before-disabled",
    ),
    # Precedence: a disabled flow is skipped, not given up, even without a Metaflow run id.
    pytest.param(
        failed(metaflow_run_id=None), OFF, Action.SKIP, 0, "", ["disabled"], id="disabled-before-no-run-id"
    ),
    # Precedence: a disabled flow is skipped, not given up, even when its lineage is spent.
    pytest.param(failed(attempt=2), OFF, Action.SKIP, 0, "", ["disabled"], id="disabled-before-exhausted"),
    # Precedence: a missing Metaflow run id is reported before the spent lineage.
    pytest.param(
        failed(metaflow_run_id=None, attempt=2),
        ON,
        Action.GIVE_UP,
        3,
        "run-9",
        ["before any Metaflow step started"],
        id="no-run-id-before-exhausted",
    ),
]


@pytest.mark.parametrize(("run", "rules", "action", "attempt", "root", "fragments"), CASES)
def test_decide(
    run: FailedRun, rules: FlowRules, action: Action, attempt: int, root: str, fragments: list[str]
) -> None:
    decision = decide(run, rules)
    assert decision.action is action
    assert decision.attempt == attempt
    assert decision.root_run_id == root
    for fragment in fragments:
        assert fragment in decision.reason
