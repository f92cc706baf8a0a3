"""What a resume run is made of: its run config, checked against the job, its tags, its RunRequest.

The sensor's own decisions and the requests ``auto-resume resume`` records both become runs
through these, so that a resume looks the same whoever asked for it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from dagster import (
    DagsterInvalidConfigError,
    DagsterRunStatus,
    JobDefinition,
    RunRequest,
    validate_run_config,
)

from auto_resume.core.decision import Action, Decision, FailedRun, failure_signature
from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.resume_changes import ResumeChanges, spec_name
from auto_resume.core.run_ids import check_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.naming import step_op_name
from auto_resume.dagster.resume_job import config_problems, origin_op_name, resume_run_config
from auto_resume.dagster.resume_requests import FORCED, resume_run_key
from auto_resume.metaflow.deployment import Deployment
from auto_resume.policy.model import EffectiveFlowSettings


def resume_run_request(
    deployment: Deployment,
    jobs: Mapping[str, JobDefinition],
    facts: FailedRun,
    decision: Decision,
    rules: EffectiveFlowSettings,
) -> RunRequest | Decision:
    """The RunRequest, or a GIVE_UP decision if the daemon could not create that run."""
    assert facts.metaflow_run_id is not None
    checked = checked_run_config(deployment, jobs, facts.metaflow_run_id, changes=decision.changes)
    if isinstance(checked, str):
        return replace(decision, action=Action.GIVE_UP, reason=checked)
    return RunRequest(
        # One resume per failed run, ever: the daemon refuses a second run with this key, and a
        # manual request for the same failure carries the same key.
        run_key=resume_run_key(facts.run_id),
        job_name=deployment.resume_job_name,
        run_config=checked,
        tags=resume_tags(deployment, facts, decision, rules),
    )


def checked_run_config(
    deployment: Deployment,
    jobs: Mapping[str, JobDefinition],
    metaflow_run_id: str,
    from_step: str | None = None,
    changes: ResumeChanges | None = None,
    allowed_decorators: Collection[str] | None = None,
) -> dict[str, Any] | str:
    """The resume job's run config for ``metaflow_run_id``, or why the daemon could not create it.

    A request the daemon cannot turn into a run (config that does not validate) fails the tick
    without moving the cursor, on every tick: the sensor would be frozen. So check first; and
    check what the job's first op would refuse (``changes``; ``allowed_decorators`` None: any),
    and that ``from_step`` names a step of the flow, so that a run is never made only to fail.
    """
    try:
        check_run_id(metaflow_run_id)
    except MetaflowAccessError as exc:
        return str(exc)
    run_config = resume_run_config(deployment, metaflow_run_id, from_step, changes)
    job = jobs.get(deployment.resume_job_name)
    if job is None:
        return f"{deployment.resume_job_name} is not loaded; reload the auto_resume code location"
    try:
        validate_run_config(job, run_config)
    except DagsterInvalidConfigError as exc:
        return f"invalid resume run config: {exc}"[:1000]
    config = run_config["ops"][origin_op_name(deployment)]["config"]
    allowed = allowed_decorators
    if allowed is None:  # the policy's own specs, checked against allowed_decorators when loaded
        allowed = {spec_name(spec) for spec in config.get("with", ())}
    if problems := config_problems(config, allowed):
        return f"invalid resume run config: {'; '.join(problems)}"[:1000]
    step = config.get("from_step")
    if step and not job.has_node_named(step_op_name(deployment.resume_job_name, step)):
        why = f" ({', '.join(changes.because)})" if changes and changes.because else ""
        return (
            f"from_step {step!r}{why} is not a step of {deployment.flow_name}; fix: name one of its "
            "steps in the policy or request"
        )
    return run_config


def manual_resume_tags(
    deployment: Deployment,
    facts: FailedRun,
    rules: EffectiveFlowSettings,
    status: DagsterRunStatus,
    forced: bool,
    changes: ResumeChanges | None = None,
) -> dict[str, str]:
    """The tags of a manual resume of ``facts``: the sensor's, plus ``auto_resume/manual``.

    It is the next attempt of the run's lineage, whatever the policy decided about it.
    """
    decision = Decision(
        Action.RESUME,
        "",
        attempt=facts.attempt + 1,
        root_run_id=facts.root_run_id or facts.run_id,
        changes=changes or ResumeChanges(),
    )
    run_tags = {**resume_tags(deployment, facts, decision, rules), tags.MANUAL: FORCED if forced else "true"}
    if status is not DagsterRunStatus.FAILURE:
        run_tags.pop(tags.PARENT_FAILURE)  # no failure to fingerprint
    return run_tags


def resume_tags(
    deployment: Deployment, facts: FailedRun, decision: Decision, rules: EffectiveFlowSettings
) -> dict[str, str]:
    """The tags of the run that resumes ``facts`` (the policy's ``tags``, then auto-resume's)."""
    assert facts.metaflow_run_id is not None
    changes = decision.changes
    limit = changes.max_runtime_seconds
    return {
        **rules.tags,
        **({tags.CHANGES: changes.as_json()} if changes else {}),
        **({tags.DAGSTER_MAX_RUNTIME: str(limit)} if limit else {}),
        tags.ROOT_RUN_ID: decision.root_run_id,
        tags.PARENT_RUN_ID: facts.run_id,
        tags.ORIGIN_METAFLOW_RUN_ID: facts.metaflow_run_id,
        tags.ATTEMPT: str(decision.attempt),
        tags.SOURCE_JOB: deployment.job_name,
        tags.PARENT_FAILURE: failure_signature(facts.step_name, facts.exception_class, facts.message),
    }
