"""How the ``auto-resume`` commands show their results: text for people, documents for ``--json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import DagsterRun

from auto_resume.cli.explain import Explanation, ResumePlan, describe_run, plan_summary
from auto_resume.cli.history import Lineage, RunSummary
from auto_resume.cli.submit import ManualResume
from auto_resume.core.decision import Action
from auto_resume.dagster import tags


def explanation_document(explanation: Explanation, policy: Path) -> dict[str, Any]:
    """``auto-resume explain --json``: the run, its failure, the decision and the plan.

    Args:
        explanation: From :func:`auto_resume.cli.explain.explain_run`.
        policy: The policy file it was decided under.

    Returns:
        The JSON document (``auto-resume resume --json`` adds its ``resume`` key).
    """
    facts, decision, plan = explanation.facts, explanation.decision, explanation.plan
    return {
        "run_id": explanation.run.run_id,
        "job_name": explanation.run.job_name,
        "status": explanation.run.status.value,
        "metaflow_run_id": facts.metaflow_run_id,
        "policy": str(policy),
        "policy_note": explanation.policy_note,
        "failure": {
            "reason": facts.failure_reason,
            "step": facts.step_name,
            "exception": facts.exception_class,
            "message": facts.message,
        },
        "decision": {
            "action": decision.action.value,
            "reason": decision.reason,
            "attempt": decision.attempt,
            "root_run_id": decision.root_run_id or None,
            "due_at": decision.due_at,
            "error_rule": explanation.rule_index,
            "changes": json.loads(decision.changes.as_json()) if decision.changes else None,
        },
        "resumes": [
            {"run_id": run.run_id, "status": run.status.value, "manual": tags.MANUAL in run.tags}
            for run in explanation.resumes
        ],
        "plan": _plan_document(plan) if plan is not None else None,
        "plan_error": explanation.plan_error,
        "open_breakers": list(explanation.open_breakers),
    }


def _plan_document(plan: ResumePlan) -> dict[str, Any]:
    return {
        "origin_metaflow_run_id": plan.origin_run_id,
        "from_step": plan.from_step,
        "tasks_cloned": plan.cloned,
        "tasks_executed": plan.executed,
        "steps": [
            {"step": step, "cloned": cloned, "executed": executed}
            for step, (cloned, executed) in plan_summary(plan).items()
        ],
        "tasks": [
            {"step": t.step, "task_id": t.task_id, "action": t.action, "origin": t.origin, "why": t.why}
            for t in plan.tasks
        ],
        "unknown_after": list(plan.unknown_after),
    }


def format_explanation(explanation: Explanation, policy: Path) -> str:
    """``auto-resume explain`` as text.

    Args:
        explanation: From :func:`auto_resume.cli.explain.explain_run`.
        policy: The policy file it was decided under.

    Returns:
        One line per fact, check and step of the plan.
    """
    run, facts, decision = explanation.run, explanation.facts, explanation.decision
    lines = [
        f"run {run.run_id}: {run.job_name}, {run.status.value}, "
        f"Metaflow run {facts.metaflow_run_id or '(none logged)'}",
    ]
    if run.status.value == "FAILURE":
        where = f"step {facts.step_name}" if facts.step_name else "no step"
        what = f"{facts.exception_class}: {facts.message}" if facts.exception_class else facts.message
        lines.append(f"failure: {facts.failure_reason or 'unknown'} in {where}: {_short(what)}")
    lineage = f"attempt {facts.attempt} of the lineage of {facts.root_run_id}" if facts.attempt else ""
    lines.append(f"lineage: {lineage or 'an original run (attempt 0)'}")
    rules = explanation.rules
    lines.append(
        f"policy: {policy}: {explanation.deployment.job_name} enabled={rules.enabled}, "
        f"mode={rules.mode}, max_attempts={rules.max_attempts}"
    )
    if explanation.policy_note:
        lines.append(f"policy in force: {explanation.policy_note}")
    rule = (
        f"errors[{explanation.rule_index}] matched" if explanation.rule_index is not None else "none matched"
    )
    lines.append(f"error rules: {rule}")
    resumes = ", ".join(describe_run(r) for r in explanation.resumes) or "none"
    lines.append(f"resume runs of it so far: {resumes}")
    lines.append(f"decision: {decision.action.value}: {decision.reason}")
    if decision.changes and decision.action in (Action.RESUME, Action.WAIT):
        lines.append(f"the resume would run: {decision.changes.describe()}")
    for breaker in explanation.open_breakers:
        lines.append(f"storm breaker open: {breaker['reason']} (run {breaker['run_id']})")
    lines.append(_format_plan(explanation.plan, explanation.plan_error))
    return "\n".join(lines)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TASKS_SHOWN = 12  # per step, in text; --json lists every task


def _format_plan(plan: ResumePlan | None, error: str | None) -> str:
    if plan is None:
        return f"plan: none: {error}"
    origin = plan.origin_run_id + (f", from step {plan.from_step}" if plan.from_step else "")
    lines = [
        f"plan: a new Metaflow run from {origin}: {plan.cloned} task(s) cloned, "
        f"{plan.executed} executed (user code runs for {plan.executed} of {len(plan.tasks)})"
    ]
    for step, (cloned, executed) in plan_summary(plan).items():
        lines.append(f"  step {step}: {cloned} cloned, {executed} executed")
        tasks = [t for t in plan.tasks if t.step == step]
        for task in tasks[:_TASKS_SHOWN]:
            verb = "clone " if task.action == "clone" else "re-run" if task.origin else "run   "
            lines.append(f"    {verb} {step}/{task.task_id:<8} {task.why}")
        if len(tasks) > _TASKS_SHOWN:
            lines.append(f"    ... and {len(tasks) - _TASKS_SHOWN} more (--json lists every task)")
    if plan.unknown_after:
        lines.append(
            f"  then: the tasks after {', '.join(plan.unknown_after)} (not finished in the origin "
            "run), known once it has run"
        )
    return "\n".join(lines)


def resume_document(
    explanation: Explanation,
    policy: Path,
    manual: ManualResume,
    dry_run: bool,
    answer: DagsterRun | None,
) -> dict[str, Any]:
    """``auto-resume resume --json``: what ``explain --json`` prints, plus ``resume``.

    ``resume.run_id`` is the run that answers the request (null with ``--dry-run`` or while the
    request is pending); ``resume.manual`` says whether it is the manual resume (false: the
    sensor's own resume of the failure came first and answers it).
    """
    document = explanation_document(explanation, policy)
    document["resume"] = {
        "job_name": manual.job_name,
        "run_config": manual.run_config,
        "tags": manual.tags,
        "run_key": manual.request.run_key,
        "notes": list(manual.notes),
        "dry_run": dry_run,
        "requested": not dry_run,
        "run_id": answer.run_id if answer is not None else None,
        "manual": (tags.MANUAL in answer.tags) if answer is not None else None,
        "pending": not dry_run and answer is None,
    }
    return document


def format_resume(
    explanation: Explanation,
    manual: ManualResume,
    dry_run: bool,
    answer: DagsterRun | None,
    waited: float,
) -> str:
    """``auto-resume resume`` as text.

    Args:
        explanation: The run's explanation.
        manual: The run requested, or shown with ``--dry-run``.
        dry_run: Nothing was requested.
        answer: The run created for the request; None for a dry run or a pending request.
        waited: Seconds waited for it.

    Returns:
        The decision, what the manual resume overrides, the run config, tags and plan, and
        what became of the request.
    """
    key = manual.request.run_key
    lines = [f"decision: {explanation.decision.action.value}: {explanation.decision.reason}"]
    lines += [f"note: {note}" for note in manual.notes]
    lines.append(f"resume job {manual.job_name}, run key {key}, run config {json.dumps(manual.run_config)}")
    lines += [f"  tag {name} = {value}" for name, value in sorted(manual.tags.items())]
    lines.append(_format_plan(explanation.plan, explanation.plan_error))
    if dry_run:
        lines.append("dry run: nothing requested")
    elif answer is not None and tags.MANUAL in answer.tags:
        lines.append(
            f"resumed: auto_resume_sensor created run {answer.run_id} of {manual.job_name} for the "
            f"request ({key}); the daemon launches it"
        )
    elif answer is not None:
        lines.append(
            f"resumed by the sensor itself: its run {answer.run_id} ({key}) already answers this "
            "failure, so the request made no second run"
        )
    else:
        lines.append(
            f"requested ({key}), pending: auto_resume_sensor has not answered within {waited:g} s. "
            "It creates the run on its next tick; if it is stopped, turn it on (Dagster UI, "
            f"Automation). `auto-resume explain {explanation.run.run_id}` shows the run once it exists."
        )
    return "\n".join(lines)


def format_history(lineages: list[Lineage], job: str | None) -> str:
    """``auto-resume history`` as text: one block per lineage, one line per run.

    Args:
        lineages: From :func:`auto_resume.cli.history.read_lineages`.
        job: The job asked for, if any (named when there is nothing to show).

    Returns:
        The text, blocks separated by a blank line.
    """
    if not lineages:
        return f"no resume lineages{f' of {job}' if job else ''} in this instance"
    blocks = []
    for lineage in lineages:
        outcome = lineage.outcome.replace("_", " ")
        if lineage.reason:
            outcome += f": {lineage.reason}"
        header = (
            f"{lineage.job_name or '?'}: failure {lineage.root_run_id}, "
            f"{len(lineage.attempts)} resume attempt(s) -> {outcome}"
        )
        lines = [header, _format_run("original", lineage.original)]
        lines += [_format_run(f"attempt {run.attempt}", run) for run in lineage.attempts]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _format_run(label: str, run: RunSummary) -> str:
    parts = [f"  {label:<10} {run.run_id}  {run.status:<9}", f"metaflow {run.metaflow_run_id or '-'}"]
    if run.tasks_cloned is not None:
        parts.append(f"cloned {run.tasks_cloned}, executed {run.tasks_executed}")
    if run.breaker_opened:
        parts.append(f"opened storm breaker {run.breaker_opened}")
    if run.changes:
        shown = {key: value for key, value in run.changes.items() if key != "because"}
        because = ", ".join(run.changes.get("because") or ())
        parts.append(f"changes {json.dumps(shown, sort_keys=True)}" + (f" ({because})" if because else ""))
    return "  ".join(parts)
