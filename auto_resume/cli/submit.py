"""What ``auto-resume resume`` does: ask the sensor to resume a run, and wait for its answer.

``prepare_resume`` turns an explanation (:mod:`auto_resume.cli.explain`) into the run a manual
resume makes (the sensor's run config and tags, plus ``auto_resume/manual``), or refuses with the
reason. ``request_resume`` does not create that run: it records a request on the finished run
(:mod:`auto_resume.dagster.resume_requests`) and waits for ``auto_resume_sensor`` to create it.
The sensor is the one launcher of resume runs, and a request carries the sensor's own run key
for the failure (``resume-of-<run id>``), so a manual resume racing the sensor's own decision
still makes one run: the daemon refuses a second run with the same key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from auto_resume.cli.explain import Explanation, OperatorError, describe_run
from auto_resume.core.decision import Action, Decision, decide
from auto_resume.core.resume_changes import ResumeChanges, merge_changes
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.resume_requests import (
    ResumeRequest,
    record_request,
    resume_run_key,
    wait_for_answer,
)
from auto_resume.dagster.resume_runs import checked_run_config, manual_resume_tags


@dataclass(frozen=True)
class ManualResume:
    """The run ``auto-resume resume`` asks for, and the request that asks for it."""

    job_name: str
    run_config: dict[str, Any]
    tags: dict[str, str]
    notes: tuple[str, ...]  # what the manual resume overrides
    request: ResumeRequest


def prepare_resume(
    explanation: Explanation,
    from_step: str | None,
    force: bool,
    now: float | None = None,
    changes: ResumeChanges | None = None,
) -> ManualResume:
    """The run a manual resume asks for, or :class:`OperatorError` saying why it is refused.

    The sensor's run config and tags (same lineage: ``auto_resume/attempt`` counts this resume),
    plus ``auto_resume/manual``. A WAIT decision (backoff, time window, in-flight cap) is
    overridden; SKIP and GIVE_UP are refused unless ``force``. The run key is the sensor's for
    this run (``resume-of-<run id>``); for a run resumed before (only with ``force``), that of
    the next resume of it (``resume-of-<run id>#<n>``).

    Args:
        explanation: From :func:`auto_resume.cli.explain.explain_run`, with the same ``from_step``.
        from_step: Re-run this step and every step after it (allowed on a succeeded run).
        force: Resume even what the policy skips or gives up on.
        now: POSIX time of the request; None: the clock.
        changes: The command's own ``--with``, ``--tag`` and ``--max-runtime``, over those the
            policy gives this failure (its specs replace the policy's of the same decorator).

    Returns:
        The job, run config, tags, the notes on what the manual resume overrides, and the request.

    Raises:
        OperatorError: The resume is refused; the message says why and what to do.
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
    job = build_resume_job(deployment, explanation.flow, explanation.allowed_decorators)
    merged = merge_changes(decision.changes, changes) if changes else decision.changes
    from_step = from_step or merged.from_step
    run_config = checked_run_config(
        deployment, {job.name: job}, facts.metaflow_run_id, from_step, merged, explanation.allowed_decorators
    )
    if isinstance(run_config, str):
        raise OperatorError(f"cannot resume run {run.run_id}: {run_config}")
    forced = force and decision.action in (Action.SKIP, Action.GIVE_UP)
    request = ResumeRequest(
        run_id=run.run_id,
        run_key=resume_run_key(run.run_id, len(explanation.resumes) + 1),
        from_step=from_step or None,
        forced=forced,
        requested_at=time.time() if now is None else now,
        changes=merged,
    )
    return ManualResume(
        job_name=deployment.resume_job_name,
        run_config=run_config,
        tags=manual_resume_tags(deployment, facts, explanation.rules, run.status, forced, merged),
        notes=tuple(notes),
        request=request,
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


def request_resume(instance: DagsterInstance, manual: ManualResume, wait: float) -> DagsterRun | None:
    """Record the request on the run and wait up to ``wait`` seconds for the sensor's answer.

    Args:
        instance: The Dagster instance of the run (and of the daemon that runs the sensor).
        manual: From :func:`prepare_resume`.
        wait: Seconds to wait for the resume run; 0: record the request and return.

    Returns:
        The run created with the request's run key: the manual resume, or the sensor's own
        resume of the failure if the sensor decided it first. None while the request is
        pending (the sensor has not ticked since, or is stopped): it is answered on a later tick.
    """
    record_request(instance, manual.request)
    return wait_for_answer(instance, manual.request.run_key, wait)
