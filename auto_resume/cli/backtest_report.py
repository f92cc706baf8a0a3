"""How ``auto-resume backtest`` shows a backtest: text per flow for people, a document for ``--json``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from auto_resume.cli.backtest import (
    Backtest,
    Compute,
    LineageReplay,
    PastFailure,
    RecordedRun,
    Replayed,
)


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _happened_compute(replays: Sequence[LineageReplay]) -> Compute:
    runs = [run for item in replays for failure in item.lineage.failures for run in failure.resumes]
    return Compute(runs=len(runs), seconds=sum((run.duration or 0.0 for run in runs), 0.0))


def _total(replays: Sequence[LineageReplay]) -> Compute:
    total = Compute()
    for item in replays:
        total += item.compute
    return total


def _by_flow(result: Backtest, replays: Sequence[LineageReplay] | None) -> dict[str, list[LineageReplay]]:
    grouped: dict[str, list[LineageReplay]] = {job: [] for job in result.jobs()}
    for item in replays or ():
        grouped[item.lineage.job_name].append(item)
    return grouped


# --- JSON -----------------------------------------------------------------------------------------


def backtest_document(result: Backtest) -> dict[str, Any]:
    """``auto-resume backtest --json``: per flow, each failure, what happened and what each policy does.

    Args:
        result: From :func:`auto_resume.cli.backtest.backtest`.

    Returns:
        The JSON document (docs/cli.md, ``--json``, describes it).
    """
    policy = _by_flow(result, result.replays)
    against = _by_flow(result, result.against_replays) if result.against_replays is not None else None
    flows = []
    for job in result.jobs():
        failures = []
        for index, item in enumerate(policy[job]):
            other = against[job][index] if against is not None else None
            for number, failure in enumerate(item.lineage.failures):
                failures.append(
                    {
                        **_failure_document(item, failure),
                        "policy": _replayed_document(item.replayed[number], failure),
                        "against": _replayed_document(other.replayed[number], failure) if other else None,
                    }
                )
        flows.append(
            {
                "job_name": job,
                "lineages": len(policy[job]),
                "failures": failures,
                "compute": {
                    "happened": _happened_document(policy[job]),
                    "policy": _compute_document(_total(policy[job])),
                    "against": _compute_document(_total(against[job])) if against is not None else None,
                },
            }
        )
    every = [item for items in policy.values() for item in items]
    return {
        "policy": str(result.policy),
        "against": str(result.against) if result.against is not None else None,
        "since": result.history.since,
        "until": result.history.until,
        "flows": flows,
        "compute": {
            "happened": _happened_document(every),
            "policy": _compute_document(_total(result.replays)),
            "against": _compute_document(_total(result.against_replays))
            if result.against_replays is not None
            else None,
        },
        "differences": _differences(result),
    }


def _failure_document(item: LineageReplay, failure: PastFailure) -> dict[str, Any]:
    facts = failure.facts
    return {
        "run_id": facts.run_id,
        "job_name": facts.job_name,
        "root_run_id": item.lineage.root_run_id,
        "attempt": facts.attempt,
        "failed_at": facts.failed_at,
        "failure": {
            "reason": facts.failure_reason,
            "step": facts.step_name,
            "exception": facts.exception_class,
            "message": facts.message,
        },
        "happened": {
            "action": failure.happened,
            "reason": failure.gave_up or failure.observed,
            "resume_runs": [_run_document(run) for run in failure.resumes],
        },
    }


def _run_document(run: RecordedRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "manual": run.manual,
        "duration_seconds": run.duration,
    }


def _replayed_document(replayed: Replayed, failure: PastFailure) -> dict[str, Any]:
    return {
        "action": replayed.action,
        "reason": replayed.reason,
        "decided_at": replayed.decided_at,
        "waited_seconds": replayed.waited,
        "observe": replayed.observe,
        "error_rule": replayed.error_rule,
        "as_happened": replayed.agrees_with(failure),
    }


def _happened_document(replays: Sequence[LineageReplay]) -> dict[str, Any]:
    happened = _happened_compute(replays)
    return {"resume_runs": happened.runs, "seconds": round(happened.seconds, 3)}


def _compute_document(compute: Compute) -> dict[str, Any]:
    return {
        "resume_runs": compute.runs,
        "seconds": round(compute.seconds, 3),
        "not_made": compute.not_made,
        "saved_seconds": round(compute.saved_seconds, 3),
        "extra": compute.extra,
        "extra_seconds_estimated": round(compute.extra_seconds, 3)
        if compute.extra_seconds is not None
        else None,
    }


def _differences(result: Backtest) -> list[dict[str, Any]]:
    """With ``--against``: every failure the two policies decide differently."""
    if result.against_replays is None:
        return []
    found = []
    for mine, theirs in zip(result.replays, result.against_replays, strict=True):
        for failure, a, b in zip(mine.lineage.failures, mine.replayed, theirs.replayed, strict=True):
            if (a.action, a.observe) != (b.action, b.observe):
                found.append(
                    {
                        "run_id": failure.facts.run_id,
                        "job_name": mine.lineage.job_name,
                        "attempt": failure.facts.attempt,
                        "policy": a.action,
                        "against": b.action,
                    }
                )
    return found


# --- text -----------------------------------------------------------------------------------------


def format_backtest(result: Backtest) -> str:
    """``auto-resume backtest`` as text: a header, then per flow each failure and the compute.

    Args:
        result: From :func:`auto_resume.cli.backtest.backtest`.

    Returns:
        The text, flows separated by a blank line.
    """
    history = result.history
    failures = sum(len(lineage.failures) for lineage in history.lineages)
    lines = [
        f"backtest of {result.policy}"
        + (f" against {result.against}" if result.against is not None else "")
        + f", failures from {_utc(history.since)} to {_utc(history.until)}: {failures} failure(s) in "
        f"{len(history.lineages)} lineage(s) of {len(result.jobs())} flow(s); launches nothing",
    ]
    if not history.lineages:
        lines.append("no failures of the policy's flows in that period")
        return "\n".join(lines)
    policy = _by_flow(result, result.replays)
    against = _by_flow(result, result.against_replays) if result.against_replays is not None else None
    for job in result.jobs():
        lines.append("")
        lines += _format_flow(job, policy[job], against[job] if against is not None else None)
    if len(policy) > 1:
        lines.append("")
        lines.append("every flow (wall-clock seconds of recorded resume runs):")
        every = [item for items in policy.values() for item in items]
        lines += _format_compute(_happened_compute(every), _total(result.replays), result.against_replays)
    return "\n".join(lines)


def _format_flow(job: str, mine: list[LineageReplay], theirs: list[LineageReplay] | None) -> list[str]:
    count = sum(len(item.lineage.failures) for item in mine)
    agree = sum(
        r.agrees_with(f) for item in mine for f, r in zip(item.lineage.failures, item.replayed, strict=True)
    )
    lines = [
        f"{job}: {count} failure(s) in {len(mine)} lineage(s); "
        f"the policy does what happened for {agree} of {count}"
    ]
    for index, item in enumerate(mine):
        lines.append(f"  lineage of {item.lineage.root_run_id}")
        for number, failure in enumerate(item.lineage.failures):
            facts = failure.facts
            what = f"{facts.exception_class}: {facts.message}" if facts.exception_class else facts.message
            where = f"step {facts.step_name}" if facts.step_name else "no step"
            when = _utc(facts.failed_at)
            lines.append(f"    attempt {facts.attempt}  {facts.run_id}  {when}  {where}: {_short(what)}")
            lines.append(f"      happened: {_format_happened(failure)}")
            lines.append(f"      policy:   {_format_replayed(item.replayed[number], failure)}")
            if theirs is not None:
                lines.append(f"      against:  {_format_replayed(theirs[index].replayed[number], failure)}")
    lines.append("  compute (wall-clock seconds of recorded resume runs):")
    lines += _format_compute(_happened_compute(mine), _total(mine), theirs)
    return lines


def _format_compute(happened: Compute, mine: Compute, theirs: Sequence[LineageReplay] | None) -> list[str]:
    lines = [
        f"    happened: {happened.runs} resume run(s), {happened.seconds:.1f} s",
        f"    policy:   {_describe(mine)}",
    ]
    if theirs is not None:
        other = _total(theirs)
        lines.append(f"    against:  {_describe(other)}")
        lines.append(f"    against - policy: {_spent(other) - _spent(mine):+.1f} s")
    return lines


def _spent(compute: Compute) -> float:
    return compute.seconds + (compute.extra_seconds or 0.0)


def _describe(compute: Compute) -> str:
    text = f"{compute.runs} of them, {compute.seconds:.1f} s"
    if compute.not_made:
        text += f"; would not have made {compute.not_made} ({compute.saved_seconds:.1f} s saved)"
    if compute.extra:
        estimate = (
            f"about {compute.extra_seconds:.1f} s, the flow's median resume run"
            if compute.extra_seconds is not None
            else "no recorded resume run to estimate from"
        )
        text += f"; {compute.extra} resume(s) that never ran ({estimate})"
    return text


def _format_happened(failure: PastFailure) -> str:
    if failure.resumes:
        runs = ", ".join(_format_run(run) for run in failure.resumes)
        return f"resumed by {runs}"
    if failure.gave_up is not None:
        return f"gave up: {failure.gave_up}"
    if failure.observed is not None:
        return f"observed: {failure.observed}"
    return "no resume, no give-up recorded"


def _format_run(run: RecordedRun) -> str:
    duration = f", {run.duration:.1f} s" if run.duration is not None else ""
    manual = ", by hand" if run.manual else ""
    return f"{run.run_id} ({run.status}{duration}{manual})"


def _format_replayed(replayed: Replayed, failure: PastFailure) -> str:
    prefix = "observe mode, would " if replayed.observe else ""
    waited = f" after waiting {replayed.waited:.0f} s" if replayed.waited >= 1 else ""
    verdict = "as happened" if replayed.agrees_with(failure) else "differs"
    return f"{prefix}{replayed.action}{waited}: {replayed.reason}  [{verdict}]"


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
