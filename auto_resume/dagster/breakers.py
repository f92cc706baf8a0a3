"""The storm breakers' side of a sensor tick: record an opening once, close a breaker whose probe
finished. The rules themselves are pure (:mod:`auto_resume.core.breaker`).

An opening is recorded where operators look, once: a tick note, an event in the log of the
failed run that opened it, the tags ``auto_resume/breaker`` = ``opened`` and
``auto_resume/breaker_opened`` (what and until when, JSON) on that run, which ``explain`` and
``history`` read, and one call of the breaker's ``on_open`` hook.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from auto_resume.core.breaker import BreakerBoard, Opening
from auto_resume.dagster import tags
from auto_resume.dagster.notify import call_hook
from auto_resume.dagster.run_facts import end_event
from auto_resume.dagster.runs import FINISHED_STATUSES, resumes_by_parent
from auto_resume.policy.settings import Hook

OPENED = "opened"


def record_opening(
    instance: DagsterInstance, opening: Opening, hook: Hook | None, note: Callable[[str], None]
) -> None:
    """Say once that a breaker opened: tick note, event and tags on the run that opened it, hook."""
    until = _utc(opening.until)
    text = f"{opening.reason}; resumes in that scope wait until {until} (then one is tried)"
    note(f"run {opening.run_id} ({opening.job_name}): {text}")
    detail = {"breaker": opening.key, "until": opening.until, "reason": opening.reason}
    instance.add_run_tags(
        opening.run_id, {tags.BREAKER: OPENED, tags.BREAKER_OPENED: json.dumps(detail, sort_keys=True)}
    )
    run = instance.get_run_by_id(opening.run_id)
    if run is not None:
        instance.report_engine_event(f"auto-resume: {text}", dagster_run=run)
    if hook is not None:
        values = {
            "AUTO_RESUME_EVENT": "breaker_opened",
            "AUTO_RESUME_BREAKER": opening.key,
            "AUTO_RESUME_REASON": opening.reason,
            "AUTO_RESUME_RUN_ID": opening.run_id,
            "AUTO_RESUME_JOB_NAME": opening.job_name,
            "AUTO_RESUME_UNTIL": until,
        }
        problem = call_hook(hook, values, "breaker.on_open")
        if problem:
            note(problem)


def close_finished_probes(
    instance: DagsterInstance, board: BreakerBoard, read_up_to: int, note: Callable[[str], None]
) -> None:
    """Close each half-open breaker whose probe's resume finished without opening it again.

    A failed probe closes it only once its failure event was read (storage id ``read_up_to`` or
    before): had it failed the same way, reading it would have opened the breaker again.
    """
    probes = board.probes()
    answered = resumes_by_parent(instance, list(probes.values()))
    for key, run_id in probes.items():
        resume = next((r for r in reversed(answered.get(run_id, [])) if r.status in FINISHED_STATUSES), None)
        if resume is None:
            continue
        if resume.status is DagsterRunStatus.FAILURE:
            end = end_event(instance, resume.run_id)
            if end is None or end.storage_id > read_up_to:
                continue
        board.close(key)
        note(f"storm breaker {key} closed: the resume of run {run_id} ended {resume.status.value}")


def open_breakers(instance: DagsterInstance, now: float) -> list[dict[str, object]]:
    """The breakers recorded open at ``now`` (from the runs that opened them), for ``explain``."""
    found = []
    for run in instance.get_runs(RunsFilter(tags={tags.BREAKER: OPENED}), limit=100):
        try:
            detail = json.loads(run.tags.get(tags.BREAKER_OPENED, ""))
        except ValueError:
            continue
        if isinstance(detail, dict) and float(detail.get("until", 0)) > now:
            found.append({**detail, "run_id": run.run_id})
    return found


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
