"""``auto_resume_sensor``: turns failed runs of watched flows into resume runs.

A plain sensor over the instance's run-failure events, not Dagster's ``run_failure_sensor``:
that one handles a single failure per tick once it returns a request, and drops a failure for
good when its function raises. Here every tick handles a batch of failures, the cursor (a
failure event's storage id) only moves past a failure once it has been decided, and an error
leaves the failure for the next tick.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.event_api import RunStatusChangeRecordsFilter

from auto_resume import tags
from auto_resume.decision import Action, Decision, FailedRun, FlowRules, decide
from auto_resume.deployment import Deployment
from auto_resume.metaflow_access import MetaflowAccessError, check_run_id
from auto_resume.policy import Policy, load_policy
from auto_resume.resume_job import resume_run_config
from auto_resume.run_facts import failed_run_facts

SENSOR_NAME = "auto_resume_sensor"
# Failures read per tick. Each costs a few small queries, so a burst clears in one or two ticks.
BATCH_SIZE = 200
# Ticks in a row that may fail on the same failed run before the sensor gives up on it.
MAX_ERRORS_PER_RUN = 5


@dataclass
class _Cursor:
    after: int
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "_Cursor | None":
        if not text:
            return None
        data = json.loads(text)
        return cls(after=int(data["after"]), errors=dict(data.get("errors", {})))

    def dump(self) -> str:
        return json.dumps({"after": self.after, "errors": self.errors}, sort_keys=True)


def build_auto_resume_sensor(
    deployments: Sequence[Deployment],
    resume_jobs: Sequence[JobDefinition],
    policy: Policy,
    policy_path: Path,
) -> SensorDefinition:
    """The one sensor that serves every flow in the policy.

    Args:
        deployments: The watched flows.
        resume_jobs: Their companion resume jobs (the sensor's targets).
        policy: The policy at load time (interval and default status); rules are re-read
            from ``policy_path`` on every tick.
        policy_path: The policy file.
    """
    by_job: dict[str, Deployment] = {}
    for deployment in deployments:
        by_job[deployment.job_name] = deployment
        by_job[deployment.resume_job_name] = deployment
    status = (
        DefaultSensorStatus.RUNNING
        if policy.sensor.default_status == "running"
        else DefaultSensorStatus.STOPPED
    )

    @sensor(
        name=SENSOR_NAME,
        jobs=list(resume_jobs),
        minimum_interval_seconds=policy.sensor.minimum_interval_seconds,
        default_status=status,
        description=(
            "Resumes failed runs of the flows in the auto-resume policy with their companion "
            "<job>_resume jobs, within the policy's limits."
        ),
    )
    def auto_resume_sensor(context: SensorEvaluationContext) -> SensorResult:
        return _evaluate(context, by_job, policy_path)

    return auto_resume_sensor


def _evaluate(
    context: SensorEvaluationContext, by_job: Mapping[str, Deployment], policy_path: Path
) -> SensorResult:
    # An invalid policy raises here: the tick fails with the message, the cursor stays, and
    # the failures of that period are handled once the file is fixed.
    policy = load_policy(policy_path)
    instance = context.instance
    cursor = _Cursor.parse(context.cursor)
    if cursor is None:
        return _first_tick(instance)
    # Not filtered by job name in the query: PostgreSQL event storage does not support it.
    records = instance.fetch_run_status_changes(
        RunStatusChangeRecordsFilter(event_type=DagsterEventType.RUN_FAILURE, after_storage_id=cursor.after),
        limit=BATCH_SIZE,
        ascending=True,
    ).records
    runs = _runs_by_id(instance, [record.event_log_entry.run_id for record in records])
    requests: list[RunRequest] = []
    notes: list[str] = []
    for record in records:
        run_id = record.event_log_entry.run_id
        run = runs.get(run_id)
        if run is not None and run.job_name not in by_job:
            cursor.after = record.storage_id
            continue
        try:
            outcome = _handle(instance, run_id, run, by_job, policy)
        except Exception as exc:
            errors = cursor.errors.get(run_id, 0) + 1
            message = f"run {run_id}: {type(exc).__name__}: {exc}"
            context.log.exception(f"{message} (error {errors} of {MAX_ERRORS_PER_RUN})")
            if errors < MAX_ERRORS_PER_RUN:
                cursor.errors = {run_id: errors}
                notes.append(f"{message}; retrying on the next tick")
                break
            notes.append(f"{message}; gave up after {errors} ticks")
            outcome = None
        cursor.after = record.storage_id
        cursor.errors = {}
        if isinstance(outcome, RunRequest):
            requests.append(outcome)
        elif outcome:
            notes.append(outcome)
    for note in notes:
        context.log.info(note)
    if requests:
        return SensorResult(run_requests=requests, cursor=cursor.dump())
    return SensorResult(
        skip_reason=SkipReason("; ".join(notes) if notes else "no new failed runs of watched flows"),
        cursor=cursor.dump(),
    )


def _first_tick(instance: DagsterInstance) -> SensorResult:
    latest = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=1).records
    after = latest[0].storage_id if latest else 0
    return SensorResult(
        skip_reason=SkipReason(
            "first evaluation: watching failures from now on (earlier failures are not resumed)"
        ),
        cursor=_Cursor(after=after).dump(),
    )


def _runs_by_id(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, DagsterRun]:
    if not run_ids:
        return {}
    return {run.run_id: run for run in instance.get_runs(RunsFilter(run_ids=list(run_ids)))}


def _handle(
    instance: DagsterInstance,
    run_id: str,
    run: DagsterRun | None,
    by_job: Mapping[str, Deployment],
    policy: Policy,
) -> RunRequest | str | None:
    """Decide one failed run; a RunRequest to launch, or a note saying why not."""
    if run is None:
        return f"run {run_id} was deleted before it could be handled"
    deployment = by_job[run.job_name]
    try:
        settings = policy.settings_for(deployment.definitions_file)
    except KeyError:
        return f"run {run_id}: {deployment.job_name} is no longer in the policy"
    facts = failed_run_facts(instance, run)
    decision = decide(facts, FlowRules(settings.enabled, settings.max_attempts))
    if decision.action is Action.RESUME:
        assert facts.metaflow_run_id is not None
        try:
            check_run_id(facts.metaflow_run_id)
        except MetaflowAccessError as exc:
            decision = Decision(Action.GIVE_UP, str(exc), decision.attempt, decision.root_run_id)
        else:
            return _resume_request(deployment, facts, decision)
    if decision.action is Action.GIVE_UP:
        _record_give_up(instance, run, decision)
    return f"run {run_id} ({run.job_name}): {decision.action.value}: {decision.reason}"


def _resume_request(deployment: Deployment, facts: FailedRun, decision: Decision) -> RunRequest:
    assert facts.metaflow_run_id is not None
    return RunRequest(
        # One resume per failed run, ever: the daemon refuses a second run with this key.
        run_key=f"resume-of-{facts.run_id}",
        job_name=deployment.resume_job_name,
        run_config=resume_run_config(deployment, facts.metaflow_run_id),
        tags={
            tags.ROOT_RUN_ID: decision.root_run_id,
            tags.PARENT_RUN_ID: facts.run_id,
            tags.ORIGIN_METAFLOW_RUN_ID: facts.metaflow_run_id,
            tags.ATTEMPT: str(decision.attempt),
            tags.SOURCE_JOB: deployment.job_name,
        },
    )


def _record_give_up(instance: DagsterInstance, run: DagsterRun, decision: Decision) -> None:
    """Say on the failed run, where operators look, that it will not be resumed."""
    if tags.GAVE_UP in run.tags:
        return
    instance.add_run_tags(run.run_id, {tags.GAVE_UP: decision.reason[:255]})
    instance.report_engine_event(f"auto-resume gave up: {decision.reason}", dagster_run=run)
