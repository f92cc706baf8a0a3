"""``auto_resume_sensor``: turns failed runs of watched flows into resume runs.

A plain sensor over the instance's run-failure events, not Dagster's ``run_failure_sensor``:
that one handles a single failure per tick once it returns a request, and drops a failure for
good when its function raises. Here every tick handles a batch of failures and the cursor,
stored in the instance, holds both the last failure event read and the failures still waiting
(backoff, a time window, an in-flight cap, or an error on an earlier tick), each with the time
to decide it again. So nothing is lost across daemon restarts, an error delays one failure
without holding up the others, and the run key ``resume-of-<failed run id>`` makes the daemon
create at most one resume per failure. A failure that already has a resume run (tagged
``auto_resume/parent_run_id`` with its id) is skipped: it is answered.

It is also the only launcher of manual resumes: ``auto-resume resume`` records a request on the
run (:mod:`auto_resume.dagster.resume_requests`) and every tick answers the open requests with
the same run key, so a manual resume and the sensor's own decision can never make two runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    EventLogRecord,
    JobDefinition,
    RunRequest,
    RunStatusChangeRecordsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from auto_resume.core.breaker import BreakerBoard, breaker_keys
from auto_resume.core.decision import Action, Decision, FailedRun, decide
from auto_resume.dagster import disabled_flows, tags
from auto_resume.dagster.breakers import close_finished_probes, record_opening
from auto_resume.dagster.disabled_flows import DisabledFlow
from auto_resume.dagster.notify import call_hook, give_up_values
from auto_resume.dagster.parking import park, resume_changed
from auto_resume.dagster.policy_store import PolicyInForce, policy_in_force
from auto_resume.dagster.resume_requests import (
    FORCED,
    MANUAL,
    ResumeRequest,
    is_answered,
    open_requests,
)
from auto_resume.dagster.resume_runs import checked_run_config, manual_resume_tags, resume_run_request
from auto_resume.dagster.run_facts import end_event, failed_run_facts
from auto_resume.dagster.runs import InFlight, resumes_by_parent, runs_by_id
from auto_resume.metaflow.deployment import Deployment
from auto_resume.policy.model import EffectiveFlowSettings, Policy
from auto_resume.policy.settings import Breaker

SENSOR_NAME = "auto_resume_sensor"
# Waiting failures kept in the cursor; while full, new failures stay unread (not lost) until some leave.
MAX_PENDING = 1000
# New failures read per tick: as many as the cursor may keep waiting, so that a burst of a
# thousand is decided in one tick when the tick's time allows it.
BATCH_SIZE = MAX_PENDING
# Seconds a tick may spend deciding failures (each costs a few small queries, about 20 ms)
# before it leaves the rest for the next tick: Dagster cancels a sensor evaluation after 60 s
# (DEFAULT_SENSOR_GRPC_TIMEOUT), and a canceled tick would decide nothing at all. A tick always
# decides at least one failure.
DECIDING_BUDGET_SECONDS = 25.0
# Ticks in a row that may fail on one failed run before the sensor stops trying it.
MAX_ERRORS_PER_RUN = 10


@dataclass
class Pending:
    """A failure that is decided again from ``due_at`` on (POSIX time)."""

    run_id: str
    storage_id: int  # its RUN_FAILURE event
    seen_at: float  # when the sensor first read it
    due_at: float
    errors: int = 0  # ticks in a row whose evaluation of it raised


@dataclass
class _Cursor:
    after: int
    pending: list[Pending] = field(default_factory=list)
    breakers: dict[str, Any] = field(default_factory=dict)  # BreakerBoard.dump()

    @classmethod
    def parse(cls, text: str | None) -> _Cursor | None:
        if not text:
            return None
        data = json.loads(text)
        # An older cursor's "errors" map is dropped: those failures are read again from `after`.
        return cls(
            after=int(data["after"]),
            pending=[Pending(**p) for p in data.get("pending", [])],
            breakers=data.get("breakers") or {},
        )

    def dump(self) -> str:
        data: dict[str, Any] = {"after": self.after, "pending": [asdict(p) for p in self.pending]}
        if self.breakers:
            data["breakers"] = self.breakers
        return json.dumps(data, sort_keys=True)


@dataclass
class _Tick:
    """What one evaluation produces."""

    requests: list[RunRequest] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    requested: set[str] = field(default_factory=set)  # runs with a manual request open this tick

    def request(self, run_request: RunRequest) -> bool:
        """Add ``run_request`` unless one with its run key is in this tick already.

        The daemon checks run keys against the runs that exist before the tick, and creates the
        tick's requests in parallel threads: two requests with one key in one tick would both run.
        """
        if any(r.run_key == run_request.run_key for r in self.requests):
            return False
        self.requests.append(run_request)
        return True


def build_auto_resume_sensor(
    deployments: Sequence[Deployment],
    resume_jobs: Sequence[JobDefinition],
    policy: Policy,
    policy_path: Path,
    disabled: Sequence[DisabledFlow] = (),
    in_force: PolicyInForce | None = None,
) -> SensorDefinition:
    """The one sensor that serves every flow in the policy.

    Args:
        deployments: The watched flows.
        resume_jobs: Their companion resume jobs (the sensor's targets).
        policy: The policy at load time (interval and default status); rules are re-read
            from ``policy_path`` on every tick.
        policy_path: The policy file.
        disabled: The policy's flows that could not be loaded: every tick names them.
        in_force: How ``policy`` was chosen at load (the file, or the last good one).

    Returns:
        The sensor definition, named ``auto_resume_sensor``.
    """
    by_job: dict[str, Deployment] = {}
    for deployment in deployments:
        by_job[deployment.job_name] = deployment
        by_job[deployment.resume_job_name] = deployment
    jobs = {job.name: job for job in resume_jobs}
    status = (
        DefaultSensorStatus.RUNNING
        if policy.sensor.default_status == "running"
        else DefaultSensorStatus.STOPPED
    )

    @sensor(
        name=SENSOR_NAME,
        jobs=list(resume_jobs),
        minimum_interval_seconds=declared_interval(policy.sensor.minimum_interval_seconds),
        default_status=status,
        description=(
            "Resumes failed runs of the flows in the auto-resume policy with their companion "
            "<job>_resume jobs, within the policy's limits."
            + " ".join(["", *(in_force.notes() if in_force else [])])
            + disabled_flows.description(disabled)
        ),
    )
    def auto_resume_sensor(context: SensorEvaluationContext) -> SensorResult:
        return evaluate(context, by_job, jobs, policy_path, disabled=disabled)

    return auto_resume_sensor


def declared_interval(interval: int) -> int:
    """The interval to declare to Dagster so that ticks come every ``interval`` seconds.

    Dagster's sensor daemon wakes every 5 s (``MIN_INTERVAL_LOOP_TIME``) and evaluates a sensor
    when at least its declared interval has passed since the previous tick began. The wake-ups
    jitter by milliseconds: with an interval that is a multiple of 5 s declared as it is, the
    wake-up due exactly one interval later finds a few milliseconds missing about half the time,
    and the tick comes one loop late (a 5 s interval ticked every 5 or 10 s: p90 of failure ->
    resume run 9.0 s). Declaring one second less absorbs the jitter; no wake-up falls within that
    second, so no tick comes early. Other intervals end between wake-ups and are declared as they are.
    """
    return interval - 1 if interval % 5 == 0 else interval


def evaluate(
    context: SensorEvaluationContext,
    by_job: Mapping[str, Deployment],
    jobs: Mapping[str, JobDefinition],
    policy_path: Path,
    now: float | None = None,
    disabled: Sequence[DisabledFlow] = (),
    budget_seconds: float = DECIDING_BUDGET_SECONDS,
) -> SensorResult:
    """One tick: decide every new failure and every waiting one that is due, within a budget.

    Args:
        context: The sensor's context (instance and cursor).
        by_job: The watched flows by job name (flow jobs and resume jobs).
        jobs: The resume jobs by name, to validate run config before requesting a run.
        policy_path: The policy file, read now; while it is invalid, the last good one
            (:mod:`auto_resume.dagster.policy_store`) decides and every tick shows the error.
        now: POSIX time of the tick; None: the clock.
        disabled: Flows of the policy the code location could not load: every tick names
            them, and a failure of their jobs is noted as not resumed.
        budget_seconds: Once deciding has taken this long, the failures not yet decided are
            left for the next tick: due waiting ones stay waiting, new ones stay unread.

    Returns:
        The run requests and the new cursor; a skip reason when nothing is launched.

    Raises:
        PolicyError: The policy is invalid and no valid one was ever recorded: the tick fails
            with the message and the cursor stays, so the failures of that period are handled
            once the file is fixed.
    """
    in_force = policy_in_force(context.instance, policy_path)
    policy = in_force.policy
    instance = context.instance
    cursor = _Cursor.parse(context.cursor)
    if cursor is None:
        return _first_tick(instance)
    now = time.time() if now is None else now
    tick = _Tick(pending=[p for p in cursor.pending if p.due_at > now])
    work, fresh = _failures_to_decide(instance, cursor, now, tick)
    runs = runs_by_id(instance, [record.event_log_entry.run_id for record, _ in work])
    # First, so that the skip message always shows them: the policy's error, disabled flows.
    tick.notes += in_force.notes() + disabled_flows.tick_notes(disabled)
    tick.notes += disabled_flows.failure_notes(disabled, (runs.get(entry.run_id) for _, entry in work))
    requests = open_requests(instance, now)
    answered = resumes_by_parent(instance, list(runs) + [run.run_id for run, _ in requests])
    board = BreakerBoard(cursor.breakers)
    load = InFlight(instance, policy.max_resumes_in_flight)
    scope = _Scope(instance, by_job, jobs, policy, load, now, board, tick)
    for run, request in requests:
        if not is_answered(request, answered.get(run.run_id, [])):
            tick.requested.add(run.run_id)
            _answer_request(scope, run, request, tick)
    deadline = time.monotonic() + budget_seconds
    decided = 0
    for record, entry in work:
        if decided and time.monotonic() > deadline:
            break
        _evaluate_one(scope, record, entry, runs.get(entry.run_id), answered.get(entry.run_id, []), tick)
        decided += 1
    left = work[decided:]
    fresh_ids = {record.storage_id for record in fresh}
    # Due waiting failures come first in `work`: one not decided stays waiting as it was; a new
    # one not decided stays unread, after the last new one decided.
    tick.pending += [entry for record, entry in left if record.storage_id not in fresh_ids]
    if left:
        tick.notes.append(
            f"{len(left)} failure(s) left for the next tick: deciding {decided} took the tick's "
            f"{budget_seconds:g} s budget"
        )
    resume_changed(instance, by_job, jobs, policy, now, scope.request, tick.notes.append)
    done_fresh = [record.storage_id for record, _ in work[:decided] if record.storage_id in fresh_ids]
    if done_fresh:
        cursor.after = done_fresh[-1]
    close_finished_probes(instance, board, cursor.after, tick.notes.append)
    board.forget_quiet(now)
    cursor.breakers = board.dump()
    cursor.pending = sorted(tick.pending, key=lambda p: p.storage_id)
    for note in tick.notes:
        context.log.info(note)
    if tick.requests:
        return SensorResult(run_requests=tick.requests, cursor=cursor.dump())
    waiting = f"; {len(cursor.pending)} waiting" if cursor.pending else ""
    more = f"; and {len(tick.notes) - 20} more (see the tick's log)" if len(tick.notes) > 20 else ""
    summary = "; ".join(tick.notes[:20]) + more or "no failed runs of watched flows to decide"
    return SensorResult(skip_reason=SkipReason(summary + waiting), cursor=cursor.dump())


def _failures_to_decide(
    instance: DagsterInstance, cursor: _Cursor, now: float, tick: _Tick
) -> tuple[list[tuple[EventLogRecord, Pending]], Sequence[EventLogRecord]]:
    """The failure events to decide now (waiting ones that are due, then new ones), and the new ones.

    A waiting failure whose run was deleted meanwhile is left out, with a note on ``tick``.
    """
    due = [p for p in cursor.pending if p.due_at <= now]
    # Not filtered by job name in the query: PostgreSQL event storage does not support it.
    fresh: Sequence[EventLogRecord] = []
    if len(cursor.pending) < MAX_PENDING:
        fresh = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(
                event_type=DagsterEventType.RUN_FAILURE, after_storage_id=cursor.after
            ),
            limit=min(BATCH_SIZE, MAX_PENDING - len(cursor.pending)),
            ascending=True,
        ).records
    again: Sequence[EventLogRecord] = []
    if due:
        again = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(
                event_type=DagsterEventType.RUN_FAILURE, storage_ids=[p.storage_id for p in due]
            ),
            limit=len(due),
        ).records
    work = [(r, next(p for p in due if p.storage_id == r.storage_id)) for r in again]
    work += [(r, Pending(r.event_log_entry.run_id, r.storage_id, now, now)) for r in fresh]
    gone = {p.storage_id for p in due} - {r.storage_id for r in again}
    tick.notes += [f"run {p.run_id} was deleted while waiting" for p in due if p.storage_id in gone]
    return work, fresh


@dataclass(frozen=True)
class _Scope:
    """What every decision of one tick shares."""

    instance: DagsterInstance
    by_job: Mapping[str, Deployment]
    jobs: Mapping[str, JobDefinition]
    policy: Policy
    load: InFlight
    now: float
    board: BreakerBoard
    tick: _Tick

    def request(self, job_name: str, run_request: RunRequest) -> None:
        """Add ``run_request`` (a resume of ``job_name``) to the tick and count it in flight."""
        if self.tick.request(run_request):
            self.load.add(job_name)


def _evaluate_one(
    scope: _Scope,
    record: EventLogRecord,
    entry: Pending,
    run: DagsterRun | None,
    existing: Sequence[DagsterRun],
    tick: _Tick,
) -> None:
    """Decide one failure and apply the decision to ``tick``; an error keeps it for a later tick.

    ``existing`` are the resume runs already answering it (a manual one, say).
    """
    if run is None:
        tick.notes.append(f"run {entry.run_id} was deleted before it could be handled")
        return
    if run.job_name not in scope.by_job:
        return  # not a watched flow
    deployment = scope.by_job[run.job_name]
    try:
        rules = scope.policy.settings_for(deployment.definitions_file, deployment.job_name)
    except KeyError:
        tick.notes.append(f"run {run.run_id}: {deployment.job_name} is no longer in the policy")
        return
    if run.run_id in tick.requested:
        # `auto-resume resume` asked for it: its request decides (a forced one overrides a skip).
        tick.notes.append(f"run {run.run_id} ({run.job_name}): resume requested by hand, see above")
        return
    if existing:
        # Answered already, e.g. by a manual resume: a second resume would redo its work.
        tick.notes.append(
            f"run {run.run_id} ({run.job_name}): skip: already resumed by run {existing[0].run_id}"
        )
        return
    try:
        _decide_and_apply(scope, record, entry, run, deployment, rules, tick)
    except Exception as exc:
        errors = entry.errors + 1
        message = f"run {run.run_id}: {type(exc).__name__}: {exc}"
        if errors < MAX_ERRORS_PER_RUN:
            tick.pending.append(Pending(run.run_id, entry.storage_id, entry.seen_at, scope.now, errors))
            tick.notes.append(f"{message} (error {errors} of {MAX_ERRORS_PER_RUN}; tried again next tick)")
        else:
            tick.notes.append(f"{message}; stopped trying after {errors} ticks with errors")


def _decide_and_apply(
    scope: _Scope,
    record: EventLogRecord,
    entry: Pending,
    run: DagsterRun,
    deployment: Deployment,
    rules: EffectiveFlowSettings,
    tick: _Tick,
) -> None:
    """Gather the failure's facts, ask :func:`decide`, and request, record or keep it waiting."""
    instance = scope.instance
    facts = failed_run_facts(instance, run, record.event_log_entry)
    breakers = breaker_keys(facts, deployment.job_name, scope.policy.breaker, rules.breaker)
    if breakers and entry.seen_at == scope.now and entry.errors == 0:  # read for the first time
        hooks = {key: breaker.on_open for key, breaker in breakers}
        for opening in scope.board.record(facts, breakers, scope.now):
            record_opening(instance, opening, hooks[opening.key], tick.notes.append)
    situation = scope.load.situation(deployment.job_name, rules, scope.now, entry.seen_at)
    decision = decide(facts, rules, situation)
    request = None
    if decision.action is Action.RESUME:
        outcome = resume_run_request(deployment, scope.jobs, facts, decision, rules)
        if isinstance(outcome, Decision):
            decision = outcome
        elif breakers:
            decision = _behind_breakers(scope, facts, breakers, rules, decision)
            request = outcome if decision.action is Action.RESUME else None
        else:
            request = outcome
    if decision.action is Action.WAIT:
        assert decision.due_at is not None
        tick.pending.append(Pending(run.run_id, entry.storage_id, entry.seen_at, decision.due_at))
        return
    observe = rules.mode == "observe"
    if observe:
        _record_observed(instance, run, decision)
    elif request is not None:
        if tick.request(request):
            scope.load.add(deployment.job_name)
    elif decision.parked:
        code = park(instance, run, deployment, decision)
        tick.notes.append(f"run {run.run_id} ({run.job_name}): park (code {code}): {decision.reason}")
        return
    elif decision.action is Action.GIVE_UP:
        _record_give_up(instance, run, decision, scope.policy, tick)
    prefix = "observe mode, would " if observe else ""
    tick.notes.append(
        f"run {run.run_id} ({run.job_name}): {prefix}{decision.action.value}: {decision.reason}"
    )


def _behind_breakers(
    scope: _Scope,
    facts: FailedRun,
    breakers: list[tuple[str, Breaker]],
    rules: EffectiveFlowSettings,
    decision: Decision,
) -> Decision:
    """A resume an open storm breaker holds back waits for it, up to ``max_failure_age_seconds``."""
    held = scope.board.gate(facts, breakers, scope.now)
    if held is None:
        return decision
    why, due_at = held
    limit = rules.max_failure_age_seconds
    if limit is not None and scope.now - facts.failed_at > limit:
        return replace(
            decision, action=Action.SKIP, reason=f"{why}; waited past max_failure_age_seconds ({limit})"
        )
    return replace(decision, action=Action.WAIT, reason=why, due_at=due_at)


def _answer_request(scope: _Scope, run: DagsterRun, request: ResumeRequest, tick: _Tick) -> None:
    """Turn an open request of ``auto-resume resume`` into a RunRequest with the request's run key.

    The command decided it under the policy when it recorded it (refusing what the policy skips
    or gives up on unless forced; a wait is overridden): here only what the run needs is read
    again. A request that cannot be answered now is noted and tried again on the next tick.
    """
    kind = FORCED if request.forced else MANUAL
    prefix = f"run {run.run_id} ({run.job_name}): {kind} resume request {request.run_key}"
    deployment = scope.by_job.get(run.job_name)
    try:
        if deployment is None:
            raise LookupError(f"{run.job_name} is not a watched flow")
        rules = scope.policy.settings_for(deployment.definitions_file, deployment.job_name)
        end = end_event(scope.instance, run.run_id)
        if end is None:
            raise LookupError("the run has no end event")
        facts = failed_run_facts(scope.instance, run, end.event_log_entry)
        if facts.metaflow_run_id is None:
            raise LookupError("no Metaflow run id in the run's log")
        checked = checked_run_config(
            deployment,
            scope.jobs,
            facts.metaflow_run_id,
            request.from_step,
            request.changes,
            scope.policy.allowed_decorators,
        )
        if isinstance(checked, str):
            raise LookupError(checked)
    except Exception as exc:
        tick.notes.append(f"{prefix}: cannot be answered now ({type(exc).__name__}: {exc}); tried again")
        return
    run_request = RunRequest(
        run_key=request.run_key,
        job_name=deployment.resume_job_name,
        run_config=checked,
        tags=manual_resume_tags(deployment, facts, rules, run.status, request.forced, request.changes),
    )
    if tick.request(run_request):
        scope.load.add(deployment.job_name)
    tick.notes.append(f"{prefix}: resume")


def _first_tick(instance: DagsterInstance) -> SensorResult:
    latest = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=1).records
    after = latest[0].storage_id if latest else 0
    return SensorResult(
        skip_reason=SkipReason(
            "first evaluation: watching failures from now on (earlier failures are not resumed)"
        ),
        cursor=_Cursor(after=after).dump(),
    )


def _record_give_up(
    instance: DagsterInstance, run: DagsterRun, decision: Decision, policy: Policy, tick: _Tick
) -> None:
    """Say on the failed run, where operators look, that it will not be resumed; notify once."""
    if tags.GAVE_UP in run.tags:
        return
    instance.add_run_tags(run.run_id, {tags.GAVE_UP: decision.reason[:255]})
    instance.report_engine_event(f"auto-resume gave up: {decision.reason}", dagster_run=run)
    if policy.on_give_up is not None:
        values = give_up_values(
            run.run_id, run.job_name, decision.reason, decision.root_run_id, decision.attempt
        )
        problem = call_hook(policy.on_give_up, values, "on_give_up")
        if problem:
            tick.notes.append(problem)


def _record_observed(instance: DagsterInstance, run: DagsterRun, decision: Decision) -> None:
    """Observe mode: write what would have been done on the run, once; launch nothing."""
    if tags.OBSERVED in run.tags:
        return
    text = f"{decision.action.value}: {decision.reason}"
    instance.add_run_tags(run.run_id, {tags.OBSERVED: text[:255]})
    instance.report_engine_event(f"auto-resume (observe mode) would {text}", dagster_run=run)
