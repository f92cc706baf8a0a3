"""Whether, and when, to resume a failed run: a pure function of plain data.

`decide` reads the failed run's facts (`FailedRun`), the flow's effective policy settings
(`FlowRules`) and the moment and load it is asked at (`Situation`); it reads no clock, no
storage and no environment, so the truth table in tests/test_decision.py covers it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from auto_resume.core.resume_changes import ResumeChanges, changes_for
from auto_resume.policy.model import EffectiveFlowSettings
from auto_resume.policy.settings import Backoff, ErrorRule, Windows

# The rules of one flow are its effective policy settings (a frozen pydantic model).
FlowRules = EffectiveFlowSettings


class Action(StrEnum):
    """What the sensor does with a failed run."""

    RESUME = "resume"
    WAIT = "wait"  # decide again at `Decision.due_at` (backoff, window or in-flight cap)
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
    failed_at: float = 0.0  # POSIX time of the run's failure event
    failure_reason: str | None = None  # Dagster's RunFailureReason, lower-cased
    step_name: str | None = None  # the Metaflow step that failed first
    exception_class: str | None = None  # the user's exception, e.g. RuntimeError
    message: str = ""  # its message
    parent_failure: str | None = None  # signature of the failure the run was resuming


@dataclass(frozen=True)
class Situation:
    """When the decision is taken and what is already running."""

    now: float  # POSIX time
    first_seen_at: float | None = None  # when the sensor first read the failure; None: now
    in_flight: int = 0  # resume runs of every flow queued or running
    in_flight_for_flow: int = 0  # resume runs of this flow queued or running
    max_in_flight: int | None = None  # the policy's global cap


@dataclass(frozen=True)
class Decision:
    """The answer, with the reason in words (shown in the sensor's tick and run tags)."""

    action: Action
    reason: str
    attempt: int = 0
    root_run_id: str = ""
    due_at: float | None = None  # WAIT: decide again from this POSIX time on
    changes: ResumeChanges = field(default_factory=ResumeChanges)  # RESUME, WAIT: how the resume will run
    # GIVE_UP of a deterministic failure under `on_code_change: resume`: parked, not given up for
    # good; resumed once when the flow's code fingerprint changes (auto_resume.dagster.parking).
    parked: bool = False


_NUMBERS = re.compile(r"0x[0-9a-f]+|[0-9a-f]{8,}|\d+")


def normalise_message(message: str) -> str:
    """A message with numbers, hex ids and spacing blurred, so retries of one fault compare equal."""
    return " ".join(_NUMBERS.sub("#", message.strip().lower()).split())[:500]


def failure_signature(step_name: str | None, exception_class: str | None, message: str) -> str:
    """A short fingerprint of a failure: its step, exception class and normalised message."""
    text = f"{step_name}|{exception_class}|{normalise_message(message)}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def backoff_delay(backoff: Backoff, attempt: int, run_id: str) -> float:
    """Seconds from the failure to resume attempt ``attempt`` (1-based), jitter fixed per run."""
    if backoff.initial_seconds <= 0:
        return 0.0
    delay = min(backoff.max_seconds, backoff.initial_seconds * backoff.multiplier ** (attempt - 1))
    fraction = int(hashlib.sha1(run_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return delay + backoff.jitter_seconds * fraction


def window_open(windows: Windows | None, now: float) -> bool:
    """Whether a resume may start at ``now``: inside an allowed period and outside every blackout."""
    if windows is None:
        return True
    zone = ZoneInfo(windows.timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    for blackout in windows.blackouts:
        start = blackout.start if blackout.start.tzinfo else blackout.start.replace(tzinfo=zone)
        end = blackout.end if blackout.end.tzinfo else blackout.end.replace(tzinfo=zone)
        if start <= local < end:
            return False
    if not windows.allowed:
        return True
    clock = local.time().replace(tzinfo=None)
    today = local.strftime("%a").lower()
    yesterday = (local - dt.timedelta(days=1)).strftime("%a").lower()
    for hours in windows.allowed:
        if hours.start < hours.end:
            if today in hours.days and hours.start <= clock < hours.end:
                return True
        elif (today in hours.days and clock >= hours.start) or (
            yesterday in hours.days and clock < hours.end  # the overnight part of yesterday's window
        ):
            return True
    return False


def matching_rule(failed: FailedRun, rules: tuple[ErrorRule, ...]) -> tuple[int, ErrorRule] | None:
    """The first error rule all of whose conditions hold for ``failed``, with its index."""
    for index, rule in enumerate(rules):
        if rule.reason is not None and failed.failure_reason not in rule.reason:
            continue
        if rule.step is not None and not fnmatchcase(failed.step_name or "", rule.step):
            continue
        if rule.exception is not None and not fnmatchcase(failed.exception_class or "", rule.exception):
            continue
        if rule.message is not None and not re.search(rule.message, failed.message):
            continue
        return index, rule
    return None


def decide(failed: FailedRun, rules: FlowRules, situation: Situation | None = None) -> Decision:
    """Decide what to do with one failed run.

    Checks, in order: opt-out, Dagster's own retry, the kill switch, the failure's age, a
    Metaflow run to resume, error rules, the lineage's attempts, a repeated failure, backoff,
    time windows, in-flight caps.

    Args:
        failed: The failed run; ``attempt`` is 0 for an original run, N for the N-th resume.
        rules: The flow's effective policy settings.
        situation: The time and the resume runs in flight; None means at the failure's time,
            nothing in flight.

    Returns:
        RESUME with the next attempt number, WAIT with the time to decide again, SKIP (leave it
        alone, nothing recorded) or GIVE_UP (auto-resume will never resume it: recorded on the run).
    """
    now = situation or Situation(now=failed.failed_at)
    skipped = _skip(failed, rules, now)
    if skipped is not None:
        return skipped
    root = failed.root_run_id or failed.run_id
    attempt = failed.attempt + 1
    given_up = _give_up_reason(failed, rules, attempt, root)
    if given_up is not None:
        reason, parked = given_up
        if parked:
            reason += "; parked until the flow's code changes (on_code_change: resume)"
        return Decision(Action.GIVE_UP, reason, attempt, root, parked=parked)
    changes = changes_for(rules, matching_rule(failed, rules.errors))
    wait = _wait(failed, rules, now, attempt)
    if wait is not None:
        reason, due_at = wait
        return Decision(Action.WAIT, reason, attempt, root, due_at, changes)
    described = f"; {changes.describe()}" if changes else ""
    return Decision(
        Action.RESUME,
        f"resume {failed.metaflow_run_id} (attempt {attempt} of {rules.max_attempts}){described}",
        attempt,
        root,
        changes=changes,
    )


def _skip(failed: FailedRun, rules: FlowRules, now: Situation) -> Decision | None:
    """SKIP when the run is not auto-resume's to decide: opted out, retried, disabled, too old."""
    if failed.opted_out:
        return Decision(Action.SKIP, f"run {failed.run_id} is tagged auto_resume/opt_out=true")
    if failed.will_retry:
        return Decision(Action.SKIP, f"Dagster's own run retries will retry {failed.run_id}")
    if not rules.enabled:
        return Decision(Action.SKIP, f"auto-resume is disabled for {failed.job_name} in the policy")
    seen_at = now.now if now.first_seen_at is None else now.first_seen_at
    age = seen_at - failed.failed_at
    if rules.max_failure_age_seconds is not None and age > rules.max_failure_age_seconds:
        return Decision(
            Action.SKIP,
            f"run {failed.run_id} failed {age:.0f}s before it was seen, more than "
            f"max_failure_age_seconds ({rules.max_failure_age_seconds})",
        )
    return None


def _give_up_reason(failed: FailedRun, rules: FlowRules, attempt: int, root: str) -> tuple[str, bool] | None:
    """Why the failure must never be resumed, if it must not, and whether it is parked instead.

    A failure is parked (resumed once its flow's code changes) when the give-up says it is
    deterministic (an error rule says never, max_attempts spent failing like the attempt before,
    the same failure twice) and ``on_code_change`` is ``resume``: the matching rule's, else the flow's.
    """
    if failed.metaflow_run_id is None:
        return f"run {failed.run_id} failed before any Metaflow step started: nothing to resume", False
    matched = matching_rule(failed, rules.errors)
    on_code_change = rules.on_code_change
    if matched is not None and matched[1].on_code_change is not None:
        on_code_change = matched[1].on_code_change
    park = on_code_change == "resume"
    if matched is not None and matched[1].action == "never":
        return (
            f"error rule errors[{matched[0]}] says never resume this failure "
            f"({failed.failure_reason}, step {failed.step_name}, {failed.exception_class})"
        ), park
    signature = failure_signature(failed.step_name, failed.exception_class, failed.message)
    same = failed.parent_failure == signature
    if attempt > rules.max_attempts:
        return f"max_attempts ({rules.max_attempts}) spent for the failure of run {root}", park and same
    if rules.stop_on_same_failure and same:
        return (
            f"resume attempt {failed.attempt} failed like the attempt before it (step "
            f"{failed.step_name}, {failed.exception_class}): not transient"
        ), park
    return None


def _wait(failed: FailedRun, rules: FlowRules, now: Situation, attempt: int) -> tuple[str, float] | None:
    """Why not yet and when to decide again: backoff, time windows, in-flight caps."""
    due = failed.failed_at + backoff_delay(rules.backoff, attempt, failed.run_id)
    if now.now < due:
        return f"backoff: attempt {attempt} is due at {_utc(due)}", due
    if not window_open(rules.windows, now.now):
        # Windows are given to the minute: look again at the next minute, not on every tick.
        return "outside the policy's time windows", now.now - now.now % 60 + 60
    if now.max_in_flight is not None and now.in_flight >= now.max_in_flight:
        return f"max_resumes_in_flight ({now.max_in_flight}) reached", now.now
    if rules.max_resumes_in_flight is not None and now.in_flight_for_flow >= rules.max_resumes_in_flight:
        return f"max_resumes_in_flight for {failed.job_name} ({rules.max_resumes_in_flight}) reached", now.now
    return None


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
