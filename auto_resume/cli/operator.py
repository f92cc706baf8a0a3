"""What ``auto-resume explain`` and ``auto-resume resume`` do, for one Dagster run.

``explain_run`` gathers the run's facts exactly as ``auto_resume_sensor`` does
(:func:`auto_resume.dagster.run_facts.failed_run_facts`), asks the same pure
:func:`auto_resume.core.decision.decide`, and previews the resume plan: every task of the new Metaflow
run, cloned from the origin run or executed, from :mod:`auto_resume.core.resume_plan` over the origin
run's datastore. It launches and writes nothing.

``prepare_resume`` turns an explanation into the run the sensor would request (same run config,
same ``auto_resume/...`` tags, plus ``auto_resume/manual``), or refuses with the reason;
``submit_resume`` submits it to the instance's run queue through the workspace's ``auto_resume``
code location, as ``dagster job launch`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.event_api import EventLogRecord

from auto_resume.core.decision import Action, Decision, FailedRun, decide, matching_rule
from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, OriginTask, TaskOutcome, check_step_name
from auto_resume.core.resume_plan import (
    PARAMETERS_STEP,
    PARAMETERS_TASK_ID,
    TaskRecord,
    instances_for,
    parameters_task,
    plan_step,
)
from auto_resume.core.run_ids import check_run_id, is_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.code_location import LoadedFlow, load_flow
from auto_resume.dagster.resume_job import resume_run_config
from auto_resume.dagster.run_facts import failed_run_facts
from auto_resume.dagster.runs import NOT_FINISHED_STATUSES, resumes_of
from auto_resume.dagster.sensor import InFlight, resume_tags
from auto_resume.metaflow.origin import OriginReader
from auto_resume.metaflow.deployment import Deployment, DeploymentError
from auto_resume.policy.loading import PolicyError, load_policy
from auto_resume.policy.model import EffectiveFlowSettings, Policy

_END_EVENTS = {DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_CANCELED}
# Stands for the new Metaflow run in previewed pathspecs: its id exists once the resume runs.
_NEW_RUN = "<new run>"
DEFAULT_LOCATION = "auto_resume"


class OperatorError(Exception):
    """The run cannot be explained or resumed; the message says why and what to do instead."""


class OriginData(Protocol):
    """What the plan preview reads from the origin run (:class:`OriginReader` provides it)."""

    def origin_tasks(self, run_id: str, step_name: str) -> dict[tuple[int, ...], OriginTask]: ...

    def task_outcome(self, pathspec: str, step_type: str) -> TaskOutcome: ...


@dataclass(frozen=True)
class PlannedTask:
    """One task of the resume's new Metaflow run."""

    step: str
    task_id: str
    action: str  # "clone" or "run"
    origin: str | None  # pathspec of its counterpart in the origin run, if there is one
    why: str


@dataclass(frozen=True)
class ResumePlan:
    """Every task a resume of ``origin_run_id`` would have, cloned or executed."""

    origin_run_id: str
    from_step: str | None
    tasks: tuple[PlannedTask, ...]
    # Steps after an executed foreach or switch task that did not finish in the origin run: how
    # many tasks they get (which branch) is only known once that task has run.
    unknown_after: tuple[str, ...] = ()

    @property
    def cloned(self) -> int:
        """Tasks copied without running user code."""
        return sum(task.action == "clone" for task in self.tasks)

    @property
    def executed(self) -> int:
        """Tasks whose user code runs."""
        return sum(task.action == "run" for task in self.tasks)


@dataclass(frozen=True)
class Explanation:
    """A run, what the sensor would decide about it now and why, and the resume plan."""

    run: DagsterRun
    deployment: Deployment
    flow: FlowShape
    rules: EffectiveFlowSettings
    facts: FailedRun
    decision: Decision  # what auto_resume_sensor would do now
    rule_index: int | None  # the error rule that matched, if any
    resumes: tuple[DagsterRun, ...]  # resume runs answering this run already
    plan: ResumePlan | None
    plan_error: str | None


@dataclass(frozen=True)
class ResumeRequest:
    """The run ``auto-resume resume`` submits."""

    job_name: str
    run_config: dict[str, Any]
    tags: dict[str, str]
    notes: tuple[str, ...]  # what the manual resume overrides


def check_dagster_run_id(run_id: str) -> str:
    """Return ``run_id`` if it can be a Dagster run id, else raise :class:`OperatorError`."""
    if not is_run_id(run_id):
        shown = run_id if len(run_id) <= 80 else run_id[:80] + "..."
        raise OperatorError(
            f"{shown!r} is not a Dagster run id: expected letters, digits, '-' or '_' (a UUID such as "
            "4dcbbd80-5b1e-4c55-9d4e-1f0a3c2b7e61, as shown by the Dagster UI or `auto-resume history`)"
        )
    return run_id


def explain_run(
    instance: DagsterInstance,
    policy_path: Path,
    run_id: str,
    from_step: str | None = None,
    now: float | None = None,
) -> Explanation:
    """What ``auto_resume_sensor`` would decide about ``run_id`` under the policy, and the plan.

    Args:
        instance: The Dagster instance holding the run (only read).
        policy_path: The policy file, read now.
        run_id: The Dagster run.
        from_step: Preview a resume that re-runs this step and every step after it.
        now: POSIX time of the decision; None: the clock. The failure counts as seen now.

    Raises:
        OperatorError: A bad run id, a missing run, a job not in the policy, a run still going,
            an invalid policy or ``from_step``.
    """
    run = _finished_run(instance, check_dagster_run_id(run_id))
    policy, loaded, rules = _watched(policy_path, run)
    deployment, flow = loaded.deployment, loaded.shape
    if from_step:
        try:
            check_step_name(flow, from_step)
        except MetaflowAccessError as exc:
            raise OperatorError(str(exc)) from exc
    end = _end_event(instance, run.run_id)
    if end is None:
        raise OperatorError(f"run {run.run_id} has no end event in its log; it cannot be resumed")
    facts = failed_run_facts(instance, run, end.event_log_entry)
    if run.status is not DagsterRunStatus.FAILURE:
        # Only a failure event carries failure details; a success or cancel message is none.
        facts = replace(facts, message="")
    now = time.time() if now is None else now
    situation = InFlight(instance, policy.max_resumes_in_flight).situation(
        deployment.job_name, rules, now, now
    )
    decision = decide(facts, rules, situation)
    matched = matching_rule(facts, rules.errors) if run.status is DagsterRunStatus.FAILURE else None
    resumes = tuple(resumes_of(instance, run.run_id))
    decision = _as_the_sensor_sees_it(run, decision, resumes)
    plan, plan_error = None, None
    if facts.metaflow_run_id is None:
        plan_error = "no Metaflow run id in the run's log: it failed before any Metaflow step started"
    else:
        try:
            check_run_id(facts.metaflow_run_id)
            plan = preview_plan(
                OriginReader(deployment), flow, facts.metaflow_run_id, from_step, deployment.job_name
            )
        except MetaflowAccessError as exc:
            plan_error = str(exc)
    return Explanation(
        run=run,
        deployment=deployment,
        flow=flow,
        rules=rules,
        facts=facts,
        decision=decision,
        rule_index=matched[0] if matched else None,
        resumes=resumes,
        plan=plan,
        plan_error=plan_error,
    )


def _finished_run(instance: DagsterInstance, run_id: str) -> DagsterRun:
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise OperatorError(
            f"no run {run_id} in this Dagster instance; check the id, and that DAGSTER_HOME is "
            "the daemon's instance"
        )
    if run.status in NOT_FINISHED_STATUSES:
        raise OperatorError(
            f"run {run_id} ({run.job_name}) is still going (status {run.status.value}): wait until it "
            "has finished, or cancel it first"
        )
    return run


def _watched(policy_path: Path, run: DagsterRun) -> tuple[Policy, LoadedFlow, EffectiveFlowSettings]:
    """The policy, the flow whose job (or resume job) ``run`` belongs to, and its settings."""
    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        raise OperatorError(str(exc)) from exc
    jobs = []
    for index, entry in enumerate(policy.flows):
        try:
            loaded = load_flow(entry)  # as the code location reads it
        except (DeploymentError, MetaflowAccessError) as exc:
            raise OperatorError(f"{policy_path}: flows[{index}].{entry.source_field}: {exc}") from exc
        deployment = loaded.deployment
        if run.job_name in (deployment.job_name, deployment.resume_job_name):
            rules = policy.settings_for(deployment.definitions_file, deployment.job_name)
            return policy, loaded, rules
        jobs.append(deployment.job_name)
    raise OperatorError(
        f"run {run.run_id} is a run of {run.job_name}, which is not in the policy {policy_path} "
        f"(its flows' jobs: {', '.join(jobs) or 'none'}); add the flow under `flows`, or pass "
        "the right policy with --policy"
    )


def _end_event(instance: DagsterInstance, run_id: str) -> EventLogRecord | None:
    records = instance.get_records_for_run(run_id, of_type=_END_EVENTS, limit=1, ascending=False).records
    return records[0] if records else None


def _as_the_sensor_sees_it(run: DagsterRun, decision: Decision, resumes: Sequence[DagsterRun]) -> Decision:
    """The policy's decision, but SKIP where the sensor never acts: no failure, or answered."""
    if run.status is DagsterRunStatus.SUCCESS:
        reason = f"run {run.run_id} succeeded: the sensor resumes failures only"
        return replace(decision, action=Action.SKIP, reason=reason, due_at=None)
    if run.status is DagsterRunStatus.CANCELED:
        reason = f"run {run.run_id} was canceled: the sensor resumes failures only"
        return replace(decision, action=Action.SKIP, reason=reason, due_at=None)
    if resumes:
        reason = f"run {run.run_id} was already resumed by run {describe_run(resumes[-1])}"
        return replace(decision, action=Action.SKIP, reason=reason, due_at=None)
    return decision


def describe_run(run: DagsterRun) -> str:
    """``<run id> (<status>, manual|by the sensor)`` for messages."""
    who = "manual" if tags.MANUAL in run.tags else "by the sensor"
    return f"{run.run_id} ({run.status.value}, {who})"


def preview_plan(
    origin: OriginData,
    flow: FlowShape,
    origin_run_id: str,
    from_step: str | None = None,
    job_name: str = "the flow's job",
) -> ResumePlan:
    """Every task a resume of ``origin_run_id`` would clone or execute, step by step.

    The same planning as the resume job (:func:`instances_for`, :func:`plan_step`); a task that
    would execute is assumed to finish as its origin counterpart did (same foreach width, same
    branch). When that counterpart did not finish, what follows it is listed in ``unknown_after``.

    Raises:
        MetaflowAccessError: The origin run has no finished ``_parameters`` task, or the
            datastore cannot be read.
    """
    parameters_task(origin.origin_tasks(origin_run_id, PARAMETERS_STEP), flow.name, job_name, origin_run_id)
    rerun = flow.downstream_of(from_step) if from_step else frozenset()
    parameters_pathspec = f"{_NEW_RUN}/{PARAMETERS_STEP}/{PARAMETERS_TASK_ID}"
    finished: dict[str, list[TaskRecord]] = {}
    planned: list[PlannedTask] = []
    unknown: list[str] = []
    for step in flow.steps:
        instances = instances_for(step, flow, finished, parameters_pathspec)
        origin_tasks = origin.origin_tasks(origin_run_id, step.name) if instances else {}
        actions = plan_step(instances, origin_tasks, rerun=step.name in rerun)
        records = []
        for action in actions:
            counterpart = origin_tasks.get(action.instance.indices)
            planned.append(
                PlannedTask(
                    step=step.name,
                    task_id=action.task_id,
                    action="clone" if action.clone else "run",
                    origin=counterpart.pathspec if counterpart else None,
                    why=_why(action.clone, counterpart, step.name in rerun),
                )
            )
            outcome = TaskOutcome(None, None)
            if counterpart is not None and counterpart.ok:
                outcome = origin.task_outcome(counterpart.pathspec, step.type)
            elif step.type in ("foreach", "split-switch"):
                unknown.append(step.name)
            records.append(
                TaskRecord(
                    indices=action.instance.indices,
                    pathspec=f"{_NEW_RUN}/{step.name}/{action.task_id}",
                    cloned=action.clone,
                    num_splits=outcome.num_splits,
                    next_steps=outcome.next_steps,
                    widths=action.instance.widths,
                )
            )
        finished[step.name] = records
    return ResumePlan(origin_run_id, from_step, tuple(planned), tuple(dict.fromkeys(unknown)))


def _why(clone: bool, counterpart: OriginTask | None, rerun: bool) -> str:
    if clone:
        return "finished in the origin run"
    if counterpart is None:
        return "did not run in the origin run"
    if not counterpart.ok:
        return "failed in the origin run"
    if rerun:
        return "at or after --from-step"
    return "a task it reads from runs again"


def prepare_resume(explanation: Explanation, from_step: str | None, force: bool) -> ResumeRequest:
    """The run a manual resume submits, or :class:`OperatorError` saying why it is refused.

    The sensor's run config and tags (same lineage: ``auto_resume/attempt`` counts this resume),
    plus ``auto_resume/manual``. A WAIT decision (backoff, time window, in-flight cap) is
    overridden; SKIP and GIVE_UP are refused unless ``force``.
    """
    run, decision, facts = explanation.run, explanation.decision, explanation.facts
    deployment = explanation.deployment
    notes: list[str] = []
    if run.status is DagsterRunStatus.SUCCESS and not from_step:
        raise OperatorError(
            f"run {run.run_id} succeeded: there is nothing to resume; pass --from-step STEP to "
            "re-run that step and every step after it (Metaflow's `resume STEP`)"
        )
    if run.status is DagsterRunStatus.SUCCESS:
        decision = _policy_decision(explanation)  # the sensor never looks at successes
    if facts.metaflow_run_id is None or explanation.plan is None:
        raise OperatorError(f"cannot resume run {run.run_id}: {explanation.plan_error}")
    if decision.action in (Action.SKIP, Action.GIVE_UP):
        if not force:
            raise OperatorError(
                f"the policy refuses to resume run {run.run_id} ({decision.action.value}): "
                f"{decision.reason}; pass --force to resume it anyway"
            )
        notes.append(f"--force overrides the policy's {decision.action.value}: {decision.reason}")
    elif decision.action is Action.WAIT:
        notes.append(f"a manual resume does not wait: the sensor would wait ({decision.reason})")
    if explanation.rules.mode == "observe":
        notes.append("the flow is in observe mode: the sensor itself would only record its decision")
    # decide() leaves attempt and root out of some SKIPs: the lineage is the run's all the same.
    decision = replace(decision, attempt=facts.attempt + 1, root_run_id=facts.root_run_id or facts.run_id)
    run_tags = {
        **resume_tags(deployment, facts, decision, explanation.rules),
        tags.MANUAL: "forced" if force and decision.action in (Action.SKIP, Action.GIVE_UP) else "true",
    }
    if run.status is not DagsterRunStatus.FAILURE:
        run_tags.pop(tags.PARENT_FAILURE)  # no failure to fingerprint
    return ResumeRequest(
        job_name=deployment.resume_job_name,
        run_config=resume_run_config(deployment, facts.metaflow_run_id, from_step),
        tags=run_tags,
        notes=tuple(notes),
    )


def _policy_decision(explanation: Explanation) -> Decision:
    """The decision with the sensor's "failures only" and "already resumed" checks left out."""
    decision = decide(explanation.facts, explanation.rules)
    if decision.action is Action.WAIT:
        return decision
    if explanation.resumes:
        reason = (
            f"run {explanation.run.run_id} was already resumed by run {describe_run(explanation.resumes[-1])}"
        )
        return replace(decision, action=Action.SKIP, reason=reason)
    return decision


def submit_resume(
    instance: DagsterInstance,
    workspace_file: Path,
    request: ResumeRequest,
    location: str = DEFAULT_LOCATION,
) -> str:
    """Submit ``request`` to the instance's run queue; the new run's id.

    Loads only ``location`` of the workspace file (its other locations are not needed) and
    creates the run as ``dagster job launch`` does: the remote job, its execution plan for the
    run config, ``instance.create_run``, then ``instance.submit_run`` (the run coordinator
    queues it; the daemon launches it).

    Raises:
        OperatorError: The workspace file, the location or the job cannot be loaded, or the run
            config does not fit the job.
    """
    from dagster._core.definitions.selector import JobSubsetSelector

    with _workspace(instance, workspace_file, location) as workspace:
        if workspace.has_code_location_error(location):
            error = workspace.get_code_location_error(location)
            raise OperatorError(
                f"code location {location!r} of {workspace_file} failed to load: "
                f"{error.message.strip() if error else 'unknown error'}"
            )
        code_location = workspace.get_code_location(location)
        repositories = list(code_location.get_repositories().values())
        repository = next((r for r in repositories if r.has_job(request.job_name)), None)
        if repository is None:
            raise OperatorError(
                f"code location {location!r} of {workspace_file} has no job {request.job_name}: the "
                "flow is missing from the policy that location loads ($AUTO_RESUME_POLICY), or the "
                "location must be reloaded"
            )
        selector = JobSubsetSelector(
            location_name=code_location.name,
            repository_name=repository.name,
            job_name=request.job_name,
            op_selection=None,
        )
        remote_job = code_location.get_job(selector)
        try:
            plan = code_location.get_execution_plan(
                remote_job, request.run_config, step_keys_to_execute=None, known_state=None, instance=instance
            )
        except Exception as exc:  # DagsterInvalidConfigError and the gRPC errors that carry it
            raise OperatorError(f"the run config does not fit {request.job_name}: {exc}") from exc
        run = instance.create_run(
            job_name=request.job_name,
            run_id=None,
            run_config=request.run_config,
            resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags={**remote_job.tags, **request.tags},
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repository.asset_graph,
        )
        instance.submit_run(run.run_id, workspace)
        return run.run_id


@contextmanager
def _workspace(instance: DagsterInstance, workspace_file: Path, location: str) -> Iterator[Any]:
    from dagster import __version__
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load import location_origins_from_yaml_paths
    from dagster._core.workspace.load_target import WorkspaceLoadTarget

    if not workspace_file.is_file():
        raise OperatorError(
            f"workspace file {workspace_file} does not exist: run from the directory of the "
            "deployment's workspace.yaml, or pass it with -w"
        )
    try:
        origins = [
            o for o in location_origins_from_yaml_paths([str(workspace_file)]) if o.location_name == location
        ]
    except Exception as exc:
        raise OperatorError(f"cannot read workspace file {workspace_file}: {exc}") from exc
    if not origins:
        raise OperatorError(
            f"workspace file {workspace_file} has no code location named {location!r}: list "
            "auto_resume.definitions there (see the README's Deploying), or pass --location"
        )

    class _OneLocation(WorkspaceLoadTarget):
        def create_origins(self) -> Sequence[Any]:
            return origins

    with WorkspaceProcessContext(
        instance=instance, version=__version__, read_only=False, workspace_load_target=_OneLocation()
    ) as context:
        yield context.create_request_context()


def plan_summary(plan: ResumePlan) -> Mapping[str, tuple[int, int]]:
    """Tasks cloned and executed per step, in flow order."""
    counts: dict[str, tuple[int, int]] = {}
    for task in plan.tasks:
        cloned, executed = counts.get(task.step, (0, 0))
        counts[task.step] = (cloned + (task.action == "clone"), executed + (task.action == "run"))
    return counts
