"""What ``auto-resume backtest`` shows: the policy's decisions replayed over the instance's failures.

Each past failure of a watched flow is read as the sensor reads it
(:func:`auto_resume.dagster.run_facts.failed_run_facts`) and grouped into its lineage (the
``auto_resume/root_run_id`` tag). :func:`replay` then asks the same pure
:func:`auto_resume.core.decision.decide` about every failure of a lineage, in attempt order, at
the failure's own time: a decision to wait moves the clock to when the sensor would decide again
(backoff, the next minute of a time window, the end of a recorded resume run for an in-flight
cap). The replay follows the recorded lineage while the policy agrees with what happened; once it
would not have resumed, the later resume runs are runs it would not have made, and a resume it
would have made that never ran has no recorded outcome. Launches nothing, writes nothing.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    EventLogEntry,
    RunRecord,
    RunsFilter,
    RunStatusChangeRecordsFilter,
)

from auto_resume.core.decision import Action, FailedRun, Situation, decide, matching_rule
from auto_resume.core.errors import MetaflowAccessError, UnsupportedFlowError
from auto_resume.dagster import tags
from auto_resume.dagster.code_location import load_flow
from auto_resume.dagster.run_facts import failed_run_facts
from auto_resume.dagster.runs import runs_by_id
from auto_resume.metaflow.deployment import DeploymentError
from auto_resume.policy.loading import PolicyError, load_policy
from auto_resume.policy.model import EffectiveFlowSettings, Policy

# Failure events read per storage query.
_PAGE_SIZE = 500
# Decisions at most per failure: a wait on a time window is decided again every minute, so a
# blackout of two weeks fits; past it, the failure is reported as still waiting.
_MAX_DECISIONS = 20_160
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# What happened to a failure, from the instance.
RESUMED, GAVE_UP, OBSERVED, NONE = "resumed", "gave_up", "observed", "none"
# Replayed actions besides decide's: still waiting when the history ends; never decided, because
# the policy would have stopped the lineage before this failure existed.
WAITING, NOT_REACHED = "waiting", "not_reached"


class BacktestError(Exception):
    """The backtest cannot run; the message says why and what to do instead."""


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit, s, m, h, d or w (``90m``, ``7d``).

    Raises:
        ValueError: Not such a duration, or zero.
    """
    match = _DURATION.match(text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"must be a positive duration such as 90m, 12h, 7d or 2w, got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class RecordedRun:
    """A resume run as the instance recorded it."""

    run_id: str
    job_name: str
    source_job: str  # the flow's own job (auto_resume/source_job)
    parent_run_id: str | None  # the failed run it answers (auto_resume/parent_run_id)
    status: str
    manual: str | None  # auto_resume/manual: "true", "forced", or None (the sensor's own)
    created_at: float
    ended_at: float | None
    duration: float | None  # seconds from start to end; None until it has ended


@dataclass(frozen=True)
class PastFailure:
    """One recorded failure of a lineage and what auto-resume did about it."""

    facts: FailedRun
    resumes: tuple[RecordedRun, ...]  # resume runs answering it (auto_resume/parent_run_id)
    gave_up: str | None  # auto_resume/gave_up
    observed: str | None  # auto_resume/observed

    @property
    def happened(self) -> str:
        """``resumed``, ``gave_up``, ``observed`` or ``none`` (skipped, or not decided yet)."""
        if self.resumes:
            return RESUMED
        if self.gave_up is not None:
            return GAVE_UP
        return OBSERVED if self.observed is not None else NONE


@dataclass(frozen=True)
class PastLineage:
    """An original failure and the failures of its resumes, by attempt."""

    job_name: str  # the flow's own job
    root_run_id: str
    failures: tuple[PastFailure, ...]


@dataclass(frozen=True)
class History:
    """What the replay reads: the lineages and every recorded resume run (for in-flight counts)."""

    since: float
    until: float
    lineages: tuple[PastLineage, ...]
    resume_runs: tuple[RecordedRun, ...]


@dataclass(frozen=True)
class Replayed:
    """What a policy would have done about one recorded failure."""

    action: str  # an Action value, WAITING or NOT_REACHED
    reason: str
    decided_at: float | None = None  # when the deciding decision was taken (after its waits)
    waited: float = 0.0  # seconds from the failure to that decision
    observe: bool = False  # mode: observe: recorded, launched nothing
    error_rule: int | None = None

    def agrees_with(self, failure: PastFailure) -> bool:
        """Whether this is what the instance shows happened to ``failure``."""
        if self.observe:
            return failure.happened == OBSERVED and (failure.observed or "").startswith(f"{self.action}:")
        expected = {Action.RESUME.value: RESUMED, Action.GIVE_UP.value: GAVE_UP, Action.SKIP.value: NONE}
        return expected.get(self.action, NONE if self.action == WAITING else "") == failure.happened


@dataclass(frozen=True)
class Compute:
    """Resume runs a policy would have made, in recorded wall-clock seconds."""

    runs: int = 0  # recorded resume runs it would have made too
    seconds: float = 0.0  # their durations
    not_made: int = 0  # recorded resume runs it would not have made
    saved_seconds: float = 0.0  # their durations
    extra: int = 0  # resumes it would have made that never ran
    extra_seconds: float | None = 0.0  # estimated: the flow's median resume run; None: no estimate

    def __add__(self, other: Compute) -> Compute:
        extra = (
            None
            if self.extra_seconds is None or other.extra_seconds is None
            else (self.extra_seconds + other.extra_seconds)
        )
        return Compute(
            self.runs + other.runs,
            self.seconds + other.seconds,
            self.not_made + other.not_made,
            self.saved_seconds + other.saved_seconds,
            self.extra + other.extra,
            extra,
        )


@dataclass(frozen=True)
class LineageReplay:
    """A lineage, and what a policy would have done about each of its failures."""

    lineage: PastLineage
    replayed: tuple[Replayed, ...]  # one per failure
    compute: Compute


@dataclass(frozen=True)
class Backtest:
    """The backtest of a policy (and of the one ``--against`` names) over a history."""

    history: History
    policy: Path
    replays: tuple[LineageReplay, ...]
    against: Path | None = None
    against_replays: tuple[LineageReplay, ...] | None = None

    def jobs(self) -> list[str]:
        """The flows' jobs in the history, in order of their first failure."""
        return list(dict.fromkeys(lineage.job_name for lineage in self.history.lineages))


@dataclass(frozen=True)
class Watched:
    """A policy as the replay reads it: each watched flow's settings, by the flow's job."""

    path: Path
    policy: Policy
    flow_jobs: Mapping[str, str]  # the flow's job of each watched job (flow jobs, resume jobs)
    rules: Mapping[str, EffectiveFlowSettings]  # by the flow's job


def backtest(
    instance: DagsterInstance,
    policy_path: Path,
    against: Path | None = None,
    since: float = 7 * 86400,
    job: str | None = None,
    now: float | None = None,
) -> Backtest:
    """Replay ``policy_path`` (and ``against``) over the failures of the last ``since`` seconds.

    Args:
        instance: The Dagster instance (only read).
        policy_path: The policy to replay.
        against: Another policy to replay and compare with.
        since: Seconds back from ``now``: lineages whose original failure is that recent.
        job: Only this flow's job (or its ``<job>_resume``).
        now: POSIX time the history ends; None: the clock.

    Raises:
        BacktestError: A policy is invalid, or a flow it lists cannot be read.
    """
    now = time.time() if now is None else now
    policies = [read_policy(policy_path)] + ([read_policy(against)] if against is not None else [])
    flow_jobs = {name: flow for watched in policies for name, flow in watched.flow_jobs.items()}
    if job is not None:
        flow_jobs = {name: flow for name, flow in flow_jobs.items() if job in (flow, f"{flow}_resume")}
    history = read_history(instance, flow_jobs, now - since, now)
    replays = [
        tuple(replay(lineage, history, watched) for lineage in history.lineages) for watched in policies
    ]
    return Backtest(
        history=history,
        policy=policy_path,
        replays=replays[0],
        against=against,
        against_replays=replays[1] if against is not None else None,
    )


def read_policy(path: Path) -> Watched:
    """Read a policy and every flow it lists, as the code location does."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise BacktestError(str(exc)) from exc
    flow_jobs: dict[str, str] = {}
    rules: dict[str, EffectiveFlowSettings] = {}
    for index, entry in enumerate(policy.flows):
        try:
            deployment = load_flow(entry).deployment
        except UnsupportedFlowError:
            continue  # refused by the code location too: the sensor does not watch it
        except (DeploymentError, MetaflowAccessError) as exc:
            raise BacktestError(f"{path}: flows[{index}].{entry.source_field}: {exc}") from exc
        flow_jobs[deployment.job_name] = flow_jobs[deployment.resume_job_name] = deployment.job_name
        rules[deployment.job_name] = policy.settings_for(deployment.definitions_file, deployment.job_name)
    return Watched(path, policy, flow_jobs, rules)


def read_history(
    instance: DagsterInstance, flow_jobs: Mapping[str, str], since: float, until: float
) -> History:
    """The lineages of ``flow_jobs`` whose original failure is in [since, until), oldest first.

    Args:
        instance: The Dagster instance (only read).
        flow_jobs: The flow's own job of each job to read (flow jobs and their resume jobs).
        since: POSIX time.
        until: POSIX time.
    """
    events = _failure_events(instance, since, until)
    runs = runs_by_id(instance, [event.run_id for event in events])
    resume_runs = _resume_runs(instance, sorted(set(flow_jobs.values())))
    by_parent: dict[str, list[RecordedRun]] = {}
    for resume in resume_runs:
        if resume.parent_run_id is not None:
            by_parent.setdefault(resume.parent_run_id, []).append(resume)
    grouped: dict[str, list[PastFailure]] = {}
    seen: set[str] = set()
    for event in events:
        run = runs.get(event.run_id)
        if run is None or run.job_name not in flow_jobs or run.run_id in seen:
            continue
        seen.add(run.run_id)
        facts = failed_run_facts(instance, run, event)
        failure = PastFailure(
            facts,
            tuple(by_parent.get(run.run_id, ())),
            run.tags.get(tags.GAVE_UP),
            run.tags.get(tags.OBSERVED),
        )
        grouped.setdefault(facts.root_run_id or run.run_id, []).append(failure)
    lineages = []
    for root, failures in grouped.items():
        failures.sort(key=lambda failure: (failure.facts.attempt, failure.facts.failed_at))
        if failures[0].facts.run_id != root:
            continue  # its original failure is older than the period (or was not a failure)
        lineages.append(PastLineage(flow_jobs[failures[0].facts.job_name], root, tuple(failures)))
    lineages.sort(key=lambda lineage: lineage.failures[0].facts.failed_at)
    return History(since, until, tuple(lineages), tuple(resume_runs))


def _failure_events(instance: DagsterInstance, since: float, until: float) -> list[EventLogEntry]:
    """The RUN_FAILURE events of every job in [since, until), oldest first, page by page."""
    events: list[EventLogEntry] = []
    cursor = None
    while True:
        page = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(
                event_type=DagsterEventType.RUN_FAILURE, after_timestamp=since, before_timestamp=until
            ),
            limit=_PAGE_SIZE,
            cursor=cursor,
            ascending=True,
        )
        events += [record.event_log_entry for record in page.records]
        if not page.has_more:
            return events
        cursor = page.cursor


def _resume_runs(instance: DagsterInstance, flow_jobs: Sequence[str]) -> list[RecordedRun]:
    """Every resume run of these flows (tagged ``auto_resume/source_job``), oldest first."""
    if not flow_jobs:
        return []
    records = instance.get_run_records(RunsFilter(tags={tags.SOURCE_JOB: list(flow_jobs)}))
    return sorted((_recorded(record) for record in records), key=lambda run: run.created_at)


def _recorded(record: RunRecord) -> RecordedRun:
    run = record.dagster_run
    started, ended = record.start_time, record.end_time
    return RecordedRun(
        run_id=run.run_id,
        job_name=run.job_name,
        source_job=run.tags.get(tags.SOURCE_JOB, ""),
        parent_run_id=run.tags.get(tags.PARENT_RUN_ID),
        status=run.status.value,
        manual=run.tags.get(tags.MANUAL),
        created_at=record.create_timestamp.timestamp(),
        ended_at=ended,
        duration=ended - started if started is not None and ended is not None else None,
    )


def replay(lineage: PastLineage, history: History, watched: Watched) -> LineageReplay:
    """What the policy would have done about each failure of ``lineage``, and its compute.

    The replay follows the recorded lineage while the policy agrees that a failure is resumed:
    the next failure is then the recorded failure of that resume run, with its real facts. Once
    the policy would not have resumed, the later failures are ``not_reached`` and every later
    resume run is one it would not have made; a resume it would have made that never ran is
    counted as extra, at the flow's median recorded resume-run duration.
    """
    rules = watched.rules.get(lineage.job_name)
    replayed: list[Replayed] = []
    compute = Compute()
    reached = True
    for failure in lineage.failures:
        if not reached:
            replayed.append(Replayed(NOT_REACHED, "the policy would have stopped this lineage before"))
            compute += _not_made(failure.resumes)
            continue
        if rules is None:
            answer = Replayed(Action.SKIP.value, f"{lineage.job_name} is not in the policy {watched.path}")
        else:
            answer = replay_failure(failure, lineage.job_name, rules, watched.policy, history)
        replayed.append(answer)
        if answer.action == Action.RESUME.value and not answer.observe:
            if failure.resumes:
                compute += Compute(len(failure.resumes), _seconds(failure.resumes))
            else:
                compute += Compute(extra=1, extra_seconds=_median_duration(history, lineage.job_name))
                reached = False
        else:
            compute += _not_made(failure.resumes)
            reached = False
    return LineageReplay(lineage, tuple(replayed), compute)


def replay_failure(
    failure: PastFailure, flow_job: str, rules: EffectiveFlowSettings, policy: Policy, history: History
) -> Replayed:
    """Decide ``failure`` as the sensor would have, from its time on, until it is not a wait.

    The failure counts as seen when it happened. A wait moves the clock to its ``due_at``
    (backoff; the next minute, for a time window) or, for an in-flight cap, to the end of the
    next recorded resume run; a wait past the end of the history is reported as ``waiting``.
    In-flight counts are those of the recorded resume runs at that moment (created, not ended).
    """
    facts = failure.facts
    own = {run.run_id for run in failure.resumes}
    now = facts.failed_at
    for _ in range(_MAX_DECISIONS):
        in_flight = [run for run in history.resume_runs if _in_flight(run, now) and run.run_id not in own]
        situation = Situation(
            now=now,
            first_seen_at=facts.failed_at,
            in_flight=len(in_flight),
            in_flight_for_flow=sum(run.source_job == flow_job for run in in_flight),
            max_in_flight=policy.max_resumes_in_flight,
        )
        decision = decide(facts, rules, situation)
        if decision.action is not Action.WAIT:
            matched = matching_rule(facts, rules.errors)
            return Replayed(
                decision.action.value,
                decision.reason,
                now,
                now - facts.failed_at,
                observe=rules.mode == "observe",
                error_rule=matched[0] if matched else None,
            )
        assert decision.due_at is not None
        due = decision.due_at
        if due <= now:  # an in-flight cap: decided again once a recorded resume run ends
            ends = [run.ended_at for run in in_flight if run.ended_at is not None]
            due = min(ends) if ends else history.until
        if due >= history.until:
            return Replayed(
                WAITING, f"{decision.reason}; still waiting when the history ends", now, now - facts.failed_at
            )
        now = due
    return Replayed(WAITING, f"still waiting after {_MAX_DECISIONS} decisions", now, now - facts.failed_at)


def _in_flight(run: RecordedRun, now: float) -> bool:
    return run.created_at < now and (run.ended_at is None or run.ended_at > now)


def _not_made(resumes: Iterable[RecordedRun]) -> Compute:
    runs = tuple(resumes)
    return Compute(not_made=len(runs), saved_seconds=_seconds(runs))


def _seconds(runs: Iterable[RecordedRun]) -> float:
    return sum(run.duration or 0.0 for run in runs)


def _median_duration(history: History, flow_job: str) -> float | None:
    durations = [
        r.duration for r in history.resume_runs if r.source_job == flow_job and r.duration is not None
    ]
    return statistics.median(durations) if durations else None
