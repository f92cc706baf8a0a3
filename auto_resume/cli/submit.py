"""What ``auto-resume resume`` does: the run the sensor would request, submitted by hand.

``prepare_resume`` turns an explanation (:mod:`auto_resume.cli.explain`) into the run the sensor
would request (same run config, same ``auto_resume/...`` tags, plus ``auto_resume/manual``), or
refuses with the reason; ``submit_resume`` submits it to the instance's run queue through the
workspace's ``auto_resume`` code location, as ``dagster job launch`` does. Dagster has no public
API for that: this module is the one place that uses its private workspace and selector classes,
and tests/test_cli_operator.py submits a real run through them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus

from auto_resume.cli.explain import Explanation, OperatorError, describe_run
from auto_resume.core.decision import Action, Decision, decide
from auto_resume.dagster import tags
from auto_resume.dagster.resume_job import resume_run_config
from auto_resume.dagster.sensor import resume_tags

DEFAULT_LOCATION = "auto_resume"


@dataclass(frozen=True)
class ResumeRequest:
    """The run ``auto-resume resume`` submits."""

    job_name: str
    run_config: dict[str, Any]
    tags: dict[str, str]
    notes: tuple[str, ...]  # what the manual resume overrides


def prepare_resume(explanation: Explanation, from_step: str | None, force: bool) -> ResumeRequest:
    """The run a manual resume submits, or :class:`OperatorError` saying why it is refused.

    The sensor's run config and tags (same lineage: ``auto_resume/attempt`` counts this resume),
    plus ``auto_resume/manual``. A WAIT decision (backoff, time window, in-flight cap) is
    overridden; SKIP and GIVE_UP are refused unless ``force``.

    Args:
        explanation: From :func:`auto_resume.cli.explain.explain_run`, with the same ``from_step``.
        from_step: Re-run this step and every step after it (allowed on a succeeded run).
        force: Resume even what the policy skips or gives up on.

    Returns:
        The job, run config, tags and the notes on what the manual resume overrides.

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

    Args:
        instance: The Dagster instance whose run queue gets the run.
        workspace_file: The deployment's workspace file.
        request: From :func:`prepare_resume`.
        location: The workspace's code location of ``auto_resume.definitions``.

    Returns:
        The new run's id.

    Raises:
        OperatorError: The workspace file, the location or the job cannot be loaded, or the run
            config does not fit the job.
    """
    with _workspace(instance, workspace_file, location) as workspace:
        code_location, repository = _location_with_job(workspace, workspace_file, location, request.job_name)
        run_id = _create_run(instance, code_location, repository, request)
        instance.submit_run(run_id, workspace)
        return run_id


def _location_with_job(workspace: Any, workspace_file: Path, location: str, job_name: str) -> tuple[Any, Any]:
    """The loaded code location and its repository that holds ``job_name``."""
    if workspace.has_code_location_error(location):
        error = workspace.get_code_location_error(location)
        raise OperatorError(
            f"code location {location!r} of {workspace_file} failed to load: "
            f"{error.message.strip() if error else 'unknown error'}"
        )
    code_location = workspace.get_code_location(location)
    repositories = list(code_location.get_repositories().values())
    repository = next((r for r in repositories if r.has_job(job_name)), None)
    if repository is None:
        raise OperatorError(
            f"code location {location!r} of {workspace_file} has no job {job_name}: the "
            "flow is missing from the policy that location loads ($AUTO_RESUME_POLICY), or the "
            "location must be reloaded"
        )
    return code_location, repository


def _create_run(
    instance: DagsterInstance, code_location: Any, repository: Any, request: ResumeRequest
) -> str:
    """Create the run as ``dagster job launch`` does; it is then submitted to the queue."""
    from dagster._core.definitions.selector import JobSubsetSelector

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
