"""Parked failures: given up as deterministic, resumed once when the flow's code changes.

Under ``on_code_change: resume`` (per flow or on an error rule), a failure that :func:`decide`
gives up as deterministic is parked instead of given up: the failed run is tagged
``auto_resume/parked=waiting`` with the fingerprint of its flow's code at that moment
(:mod:`auto_resume.metaflow.code_fingerprint`). On every tick the sensor looks at the parked
failures (one tag query) and compares each one's fingerprint with the code on disk now. When it
differs, the failure is resumed, once (the run key ``resume-of-<run id>``, as for any failure),
as the first attempt of a new lineage rooted at the parked run: a fresh attempt budget. A
parked failure whose code did not change stays parked; one older than its flow's
``max_failure_age_seconds`` is let go (``expired``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, JobDefinition, RunRequest, RunsFilter

from auto_resume.core.decision import Action, Decision, matching_rule
from auto_resume.core.resume_changes import changes_for
from auto_resume.dagster import tags
from auto_resume.dagster.resume_runs import resume_run_request
from auto_resume.dagster.run_facts import end_event, failed_run_facts
from auto_resume.dagster.runs import resumes_by_parent
from auto_resume.metaflow.code_fingerprint import code_fingerprint
from auto_resume.metaflow.deployment import Deployment
from auto_resume.policy.model import Policy

UNREADABLE = "unreadable"


def current_fingerprint(deployment: Deployment) -> str:
    """The fingerprint of the flow's code on disk now; ``unreadable`` when its file cannot be read."""
    try:
        return code_fingerprint(Path(deployment.flow_file))
    except OSError:
        return UNREADABLE


def park(instance: DagsterInstance, run: DagsterRun, deployment: Deployment, decision: Decision) -> str:
    """Tag ``run`` parked with its flow's code fingerprint and say so in its log; the fingerprint."""
    code = run.tags.get(tags.PARKED_CODE) or current_fingerprint(deployment)
    if tags.PARKED in run.tags:
        return code
    instance.add_run_tags(run.run_id, {tags.PARKED: tags.PARKED_WAITING, tags.PARKED_CODE: code})
    instance.report_engine_event(
        f"auto-resume parked this failure until the flow's code changes (code fingerprint {code}): "
        f"{decision.reason}",
        dagster_run=run,
    )
    return code


def resume_changed(
    instance: DagsterInstance,
    by_job: Mapping[str, Deployment],
    jobs: Mapping[str, JobDefinition],
    policy: Policy,
    now: float,
    request: Callable[[str, RunRequest], None],
    note: Callable[[str], None],
) -> None:
    """Resume every parked failure whose flow's code changed, through ``request(job, RunRequest)``.

    Args:
        instance: The Dagster instance.
        by_job: The watched flows by job name.
        jobs: The resume jobs by name, to check the run config.
        policy: The policy in force.
        now: POSIX time of the tick.
        request: Called with the flow's job name and the resume's RunRequest.
        note: Called with a line for the tick's message.
    """
    records = instance.get_run_records(
        RunsFilter(tags={tags.PARKED: tags.PARKED_WAITING}, statuses=[DagsterRunStatus.FAILURE])
    )
    if not records:
        return
    answered = resumes_by_parent(instance, [record.dagster_run.run_id for record in records])
    fingerprints: dict[str, str] = {}
    for record in records:
        run = record.dagster_run
        if answered.get(run.run_id):
            # Resumed on an earlier tick: no longer parked (and no longer queried).
            instance.add_run_tags(run.run_id, {tags.PARKED: tags.PARKED_RESUMED})
            continue
        deployment = by_job.get(run.job_name)
        if deployment is None:
            continue  # not watched now: stays parked
        try:
            rules = policy.settings_for(deployment.definitions_file, deployment.job_name)
        except KeyError:
            continue
        failed_at = record.end_time or record.update_timestamp.timestamp()
        limit = rules.max_failure_age_seconds
        if limit is not None and now - failed_at > limit:
            instance.add_run_tags(run.run_id, {tags.PARKED: tags.PARKED_EXPIRED})
            note(
                f"run {run.run_id} ({run.job_name}): parked failure older than "
                f"max_failure_age_seconds ({limit}): no longer waiting for a code change"
            )
            continue
        if deployment.job_name not in fingerprints:
            fingerprints[deployment.job_name] = current_fingerprint(deployment)
        before, now_code = run.tags.get(tags.PARKED_CODE, ""), fingerprints[deployment.job_name]
        if now_code in (before, UNREADABLE) or not rules.enabled:
            continue  # the code did not change (or cannot be read): stays parked
        try:
            _resume_one(instance, run, deployment, jobs, policy, f"{before} -> {now_code}", request, note)
        except Exception as exc:  # one parked failure must not hold up the others
            problem = f"{type(exc).__name__}: {exc}"
            note(f"run {run.run_id}: parked failure not resumed now ({problem}); tried again next tick")


def _resume_one(
    instance: DagsterInstance,
    run: DagsterRun,
    deployment: Deployment,
    jobs: Mapping[str, JobDefinition],
    policy: Policy,
    changed: str,
    request: Callable[[str, RunRequest], None],
    note: Callable[[str], None],
) -> None:
    rules = policy.settings_for(deployment.definitions_file, deployment.job_name)
    end = end_event(instance, run.run_id)
    if end is None:
        return
    facts = failed_run_facts(instance, run, end.event_log_entry)
    if facts.metaflow_run_id is None:
        return
    matched = matching_rule(facts, rules.errors)
    rule = matched if matched is not None and matched[1].action == "resume" else None
    prefix = f"run {run.run_id} ({run.job_name}): the flow's code changed ({changed})"
    if rules.mode == "observe":
        note(f"{prefix}: observe mode, would resume the parked failure")
        return
    decision = Decision(
        Action.RESUME,
        f"{prefix}: resume the parked failure",
        attempt=1,  # a fresh attempt budget: a new lineage, rooted at the parked run
        root_run_id=run.run_id,
        changes=changes_for(rules, rule),
    )
    outcome = resume_run_request(deployment, jobs, facts, decision, rules)
    if isinstance(outcome, Decision):
        note(f"{prefix}: cannot resume it: {outcome.reason}")
        return
    request(
        deployment.job_name,
        RunRequest(
            run_key=outcome.run_key,
            job_name=outcome.job_name,
            run_config=outcome.run_config,
            tags={**outcome.tags, tags.CODE_CHANGED: changed},
        ),
    )
    instance.report_engine_event(f"auto-resume: {decision.reason}", dagster_run=run)
    note(f"{prefix}: resume the parked failure (attempt 1 of {rules.max_attempts}, a new lineage)")
