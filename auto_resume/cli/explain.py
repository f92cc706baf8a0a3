"""What ``auto-resume explain`` shows for one Dagster run: the sensor's decision and the plan.

``explain_run`` gathers the run's facts exactly as ``auto_resume_sensor`` does
(:func:`auto_resume.dagster.run_facts.failed_run_facts`), asks the same pure
:func:`auto_resume.core.decision.decide`, and previews the resume plan: every task of the new
Metaflow run, cloned from the origin run or executed, from :mod:`auto_resume.core.resume_plan`
over the origin run's datastore. It launches and writes nothing. ``auto-resume resume`` starts
from the same explanation (:mod:`auto_resume.cli.submit`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from auto_resume.core.breaker import breaker_keys
from auto_resume.core.decision import Action, Decision, FailedRun, decide, matching_rule
from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, OriginTask, StepShape, TaskOutcome, check_step_name
from auto_resume.core.resume_plan import (
    PARAMETERS_STEP,
    PARAMETERS_TASK_ID,
    TaskAction,
    TaskRecord,
    instances_for,
    parameters_task,
    plan_step,
)
from auto_resume.core.run_ids import check_run_id, is_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.breakers import open_breakers
from auto_resume.dagster.code_location import LoadedFlow, load_flow
from auto_resume.dagster.policy_store import fall_back
from auto_resume.dagster.run_facts import end_event, failed_run_facts
from auto_resume.dagster.runs import NOT_FINISHED_STATUSES, InFlight, resumes_of
from auto_resume.metaflow.deployment import Deployment, DeploymentError
from auto_resume.metaflow.origin import OriginReader
from auto_resume.policy.loading import PolicyError, load_policy
from auto_resume.policy.model import EffectiveFlowSettings, Policy

# Stands for the new Metaflow run in previewed pathspecs: its id exists once the resume runs.
_NEW_RUN = "<new run>"


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
    allowed_decorators: tuple[str, ...] = ()  # the policy's: what a resume may inject
    open_breakers: tuple[dict[str, object], ...] = ()  # storm breakers open now that hold it back
    # Set while the policy file is invalid: decided, as the sensor decides, under the last good one.
    policy_note: str | None = None


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
    policy, loaded, rules, policy_note = _watched(instance, policy_path, run)
    deployment, flow = loaded.deployment, loaded.shape
    if from_step:
        try:
            check_step_name(flow, from_step)
        except MetaflowAccessError as exc:
            raise OperatorError(str(exc)) from exc
    facts = _facts(instance, run)
    now = time.time() if now is None else now
    situation = InFlight(instance, policy.max_resumes_in_flight).situation(
        deployment.job_name, rules, now, now
    )
    decision = decide(facts, rules, situation)
    matched = matching_rule(facts, rules.errors) if run.status is DagsterRunStatus.FAILURE else None
    resumes = tuple(resumes_of(instance, run.run_id))
    decision = _as_the_sensor_sees_it(run, decision, resumes)
    keys = {key for key, _ in breaker_keys(facts, deployment.job_name, policy.breaker, rules.breaker)}
    breakers = [b for b in open_breakers(instance, now) if b.get("breaker") in keys]
    if breakers and decision.action is Action.RESUME:  # the sensor holds it back, as it would
        until = float(breakers[0]["until"])  # type: ignore[arg-type]
        why = f"storm breaker {breakers[0]['breaker']} is open (opened by run {breakers[0]['run_id']})"
        decision = replace(decision, action=Action.WAIT, reason=why, due_at=until)
    # The error rule's from_step shapes the resume as much as --from-step does.
    plan_from = from_step or decision.changes.from_step
    plan, plan_error = _plan(deployment, flow, facts.metaflow_run_id, plan_from)
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
        allowed_decorators=policy.allowed_decorators,
        open_breakers=tuple(breakers),
        policy_note=policy_note,
    )


def _facts(instance: DagsterInstance, run: DagsterRun) -> FailedRun:
    """The run's facts, read from its end event as the sensor reads them from its failure event."""
    end = end_event(instance, run.run_id)
    if end is None:
        raise OperatorError(f"run {run.run_id} has no end event in its log; it cannot be resumed")
    facts = failed_run_facts(instance, run, end.event_log_entry)
    if run.status is not DagsterRunStatus.FAILURE:
        # Only a failure event carries failure details; a success or cancel message is none.
        facts = replace(facts, message="")
    return facts


def _plan(
    deployment: Deployment, flow: FlowShape, metaflow_run_id: str | None, from_step: str | None
) -> tuple[ResumePlan | None, str | None]:
    """The plan of a resume of ``metaflow_run_id``, or why there is none."""
    if metaflow_run_id is None:
        return None, "no Metaflow run id in the run's log: it failed before any Metaflow step started"
    try:
        check_run_id(metaflow_run_id)
        origin = OriginReader(deployment)
        return preview_plan(origin, flow, metaflow_run_id, from_step, deployment.job_name), None
    except MetaflowAccessError as exc:
        return None, str(exc)


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


def _watched(
    instance: DagsterInstance, policy_path: Path, run: DagsterRun
) -> tuple[Policy, LoadedFlow, EffectiveFlowSettings, str | None]:
    """The policy, the flow whose job (or resume job) ``run`` belongs to, its settings, and a note
    when the file is invalid and the last good policy decides, as it does in the sensor."""
    note = None
    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        try:
            in_force = fall_back(instance, policy_path, exc)  # reads the instance, records nothing
        except PolicyError:
            raise OperatorError(str(exc)) from exc
        policy, note = in_force.policy, "; ".join(in_force.notes())
    jobs = []
    unreadable = []  # as in the code location, one flow that cannot be read stops only itself
    for index, entry in enumerate(policy.flows):
        try:
            loaded = load_flow(entry)  # as the code location reads it
        except (DeploymentError, MetaflowAccessError) as exc:
            unreadable.append(f"{policy_path}: flows[{index}].{entry.source_field}: {exc}")
            continue
        deployment = loaded.deployment
        if run.job_name in (deployment.job_name, deployment.resume_job_name):
            rules = policy.settings_for(deployment.definitions_file, deployment.job_name)
            return policy, loaded, rules, note
        jobs.append(deployment.job_name)
    if unreadable:
        raise OperatorError(
            f"run {run.run_id} is a run of {run.job_name}, which is not among the flows of the policy "
            f"that can be read (their jobs: {', '.join(jobs) or 'none'}); these cannot: "
            + "; ".join(unreadable)
        )
    raise OperatorError(
        f"run {run.run_id} is a run of {run.job_name}, which is not in the policy {policy_path} "
        f"(its flows' jobs: {', '.join(jobs) or 'none'}); add the flow under `flows`, or pass "
        "the right policy with --policy"
    )


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

    Args:
        origin: Reads the origin run's datastore.
        flow: The flow's graph.
        origin_run_id: The Metaflow run to resume.
        from_step: Re-run this step and every step after it, even where they finished.
        job_name: The flow's job, for messages.

    Returns:
        The plan, task by task in flow order.

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
            record, known = _as_finished(origin, step, action, counterpart)
            records.append(record)
            if not known:
                unknown.append(step.name)
        finished[step.name] = records
    return ResumePlan(origin_run_id, from_step, tuple(planned), tuple(dict.fromkeys(unknown)))


def _as_finished(
    origin: OriginData, step: StepShape, action: TaskAction, counterpart: OriginTask | None
) -> tuple[TaskRecord, bool]:
    """The task as the steps after it would see it (finished as its origin counterpart did).

    The flag is False for a foreach or conditional whose counterpart did not finish: its width
    or branch, so what follows it, is unknown until it runs.
    """
    outcome = TaskOutcome(None, None)
    known = True
    if counterpart is not None and counterpart.ok:
        outcome = origin.task_outcome(counterpart.pathspec, step.type)
    elif step.type in ("foreach", "split-switch"):
        known = False
    record = TaskRecord(
        indices=action.instance.indices,
        pathspec=f"{_NEW_RUN}/{step.name}/{action.task_id}",
        cloned=action.clone,
        num_splits=outcome.num_splits,
        next_steps=outcome.next_steps,
        widths=action.instance.widths,
    )
    return record, known


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


def plan_summary(plan: ResumePlan) -> Mapping[str, tuple[int, int]]:
    """Tasks cloned and executed per step, in flow order."""
    counts: dict[str, tuple[int, int]] = {}
    for task in plan.tasks:
        cloned, executed = counts.get(task.step, (0, 0))
        counts[task.step] = (cloned + (task.action == "clone"), executed + (task.action == "run"))
    return counts
