"""Whether to resume a failed run: a pure function of plain data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What the sensor does with a failed run."""

    RESUME = "resume"
    SKIP = "skip"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class FailedRun:
    """Facts about one failed Dagster run, gathered by the sensor."""

    run_id: str
    job_name: str
    metaflow_run_id: str | None
    root_run_id: str | None
    attempt: int
    will_retry: bool = False
    opted_out: bool = False


@dataclass(frozen=True)
class FlowRules:
    """The policy as it applies to one flow."""

    enabled: bool
    max_attempts: int


@dataclass(frozen=True)
class Decision:
    """The answer, with the reason in words (shown in the sensor's tick and run tags)."""

    action: Action
    reason: str
    attempt: int = 0
    root_run_id: str = ""


def decide(failed: FailedRun, rules: FlowRules) -> Decision:
    """Decide what to do with one failed run.

    Args:
        failed: The failed run; ``attempt`` is 0 for an original run, N for the N-th resume.
        rules: Whether the flow is enabled and how many resumes its lineage may use.

    Returns:
        RESUME with the next attempt number, SKIP (leave it alone, nothing recorded) or GIVE_UP
        (auto-resume will never resume it: recorded on the run).
    """
    if failed.opted_out:
        return Decision(Action.SKIP, f"run {failed.run_id} is tagged auto_resume/opt_out=true")
    if failed.will_retry:
        return Decision(Action.SKIP, f"Dagster's own run retries will retry {failed.run_id}")
    if not rules.enabled:
        return Decision(Action.SKIP, f"auto-resume is disabled for {failed.job_name} in the policy")
    root = failed.root_run_id or failed.run_id
    attempt = failed.attempt + 1
    if failed.metaflow_run_id is None:
        return Decision(
            Action.GIVE_UP,
            f"run {failed.run_id} failed before any Metaflow step started: nothing to resume",
            attempt,
            root,
        )
    if attempt > rules.max_attempts:
        return Decision(
            Action.GIVE_UP,
            f"max_attempts ({rules.max_attempts}) spent for the failure of run {root}",
            attempt,
            root,
        )
    return Decision(
        Action.RESUME,
        f"resume {failed.metaflow_run_id} (attempt {attempt} of {rules.max_attempts})",
        attempt,
        root,
    )
