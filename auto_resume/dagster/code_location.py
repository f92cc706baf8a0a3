"""Builds the auto-resume code location from a policy: one resume job per flow, one sensor.

A ``flow_file:`` entry also gets its flow's own job here (``auto_resume.dagster.flow_job``).
"""

from dataclasses import dataclass, replace
from pathlib import Path

from dagster import Definitions, JobDefinition, get_dagster_logger

from auto_resume.core.errors import MetaflowAccessError, UnsupportedFlowError
from auto_resume.core.flow_shape import FlowShape
from auto_resume.dagster.disabled_flows import DisabledFlow
from auto_resume.dagster.flow_job import build_flow_job, flow_file_deployment
from auto_resume.dagster.policy_store import FallBack, PolicyInForce
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.sensor import build_auto_resume_sensor
from auto_resume.metaflow.deployment import Deployment, DeploymentError, read_deployment
from auto_resume.metaflow.flows import FlowFile, load_flow_file, load_flow_shape
from auto_resume.policy.loading import PolicyError, default_policy_path, load_policy
from auto_resume.policy.model import FlowEntry, Policy


@dataclass(frozen=True)
class LoadedFlow:
    """A policy entry's flow: how it is deployed, its graph, and its flow file if we run it."""

    deployment: Deployment
    shape: FlowShape
    flow_file: FlowFile | None  # set for `flow_file:` entries: auto-resume builds the flow's job


def load_flow(entry: FlowEntry) -> LoadedFlow:
    """Read the flow a policy entry names.

    Args:
        entry: The policy's entry.

    Returns:
        Its deployment, graph and (for a ``flow_file`` entry) flow file.

    Raises:
        DeploymentError: The definitions file is missing or not a usable metaflow-dagster file.
        MetaflowAccessError: The flow file is missing, cannot be imported or has an unsupported shape.
    """
    if entry.flow_file is not None:
        if not entry.flow_file.is_file():
            state = "is not a file" if entry.flow_file.exists() else "does not exist"
            raise MetaflowAccessError(
                f"flow file {entry.flow_file} {state}; fix the path (it is relative to the policy "
                "file's directory)"
            )
        flow = load_flow_file(entry.flow_file, entry.flow_class)
        return LoadedFlow(flow_file_deployment(flow, entry.job_name), flow.shape, flow)
    assert entry.definitions_file is not None
    if not entry.definitions_file.is_file():
        state = "is not a file" if entry.definitions_file.exists() else "does not exist"
        raise DeploymentError(
            f"definitions file {entry.definitions_file} {state}; generate it with "
            f"`python <flow>.py dagster create {entry.definitions_file}`, or fix the path (it is "
            "relative to the policy file's directory)"
        )
    deployment = read_deployment(entry.definitions_file)
    return LoadedFlow(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name), None)


def build_definitions(
    policy_path: Path | None = None,
    disabled: list[DisabledFlow] | None = None,
    fall_back: FallBack | None = None,
) -> Definitions:
    """Build the code location from a policy file.

    One flow that cannot be loaded disables that flow alone (`DisabledFlow`): a definitions
    file that is missing, is not Python or not a metaflow-dagster file, a flow file that does
    not import, a second file defining the same job, or a flow auto-resume cannot resume
    (``UnsupportedFlowError``). It gets no resume job, the reason is logged, every sensor tick
    names it, and the other flows load.

    An invalid policy file fails the load, unless ``fall_back`` gives the last good policy
    (`auto_resume.dagster.policy_store`, what the deployed location passes): the location is
    then built from that one, and the sensor says so on every tick until the file is fixed.
    With neither, the location reports the error until the file is fixed, while the sensor's
    cursor waits in the instance, so no failure is lost.

    Args:
        policy_path: The policy; default ``$AUTO_RESUME_POLICY`` or ``./policy.yaml``.
        disabled: Given, receives each flow that was disabled, and why.
        fall_back: Given, called with the path and the error when the file is invalid.

    Returns:
        The resume jobs, the jobs of ``flow_file`` entries and ``auto_resume_sensor``.

    Raises:
        PolicyError: The policy is invalid (and ``fall_back`` found no last good one).
    """
    path = policy_path or default_policy_path()
    try:
        in_force = PolicyInForce(load_policy(path))
    except PolicyError as exc:
        if fall_back is None:
            raise
        in_force = fall_back(path, exc)
        for note in in_force.notes():
            get_dagster_logger().warning(f"auto-resume: {note}")
    policy = in_force.policy
    deployments: list[Deployment] = []
    jobs: list[JobDefinition] = []
    flow_jobs: list[JobDefinition] = []
    found: list[DisabledFlow] = []
    seen: dict[str, Path] = {}
    for index, entry in enumerate(policy.flows):
        field = f"flows[{index}].{entry.source_field}"
        built = _build_flow(entry, field, policy, seen)
        if isinstance(built, DisabledFlow):
            get_dagster_logger().warning(f"auto-resume policy {path}: flow {built.kind}: {built.line()}")
            found.append(built)
            continue
        loaded, resume_job, flow_job = built
        seen[loaded.deployment.job_name] = loaded.deployment.definitions_file
        deployments.append(loaded.deployment)
        jobs.append(resume_job)
        if flow_job is not None:
            flow_jobs.append(flow_job)
    # A job another entry serves (a second file of it, say) is that entry's to resume.
    found = [
        replace(flow, job_names=tuple(j for j in flow.job_names if j.removesuffix("_resume") not in seen))
        for flow in found
    ]
    if disabled is not None:
        disabled.extend(found)
    sensor = build_auto_resume_sensor(deployments, jobs, policy, path, disabled=found, in_force=in_force)
    return Definitions(jobs=[*flow_jobs, *jobs], sensors=[sensor])


def _build_flow(
    entry: FlowEntry, field: str, policy: Policy, seen: dict[str, Path]
) -> tuple[LoadedFlow, JobDefinition, JobDefinition | None] | DisabledFlow:
    """One entry's flow and jobs, or why it is disabled."""
    job_names: tuple[str, ...] = (entry.job_name, f"{entry.job_name}_resume") if entry.job_name else ()
    try:
        loaded = load_flow(entry)
        deployment = loaded.deployment
        job_names = (deployment.job_name, deployment.resume_job_name)
        other = seen.get(deployment.job_name)
        if other is not None:
            reason = (
                f"{deployment.definitions_file} defines job {deployment.job_name!r}, like {other}; "
                "resume jobs are named after the job, so list one of them, or rename one (`job_name:` "
                "for a flow_file entry, `dagster create --job-name <other name>` for a definitions file)"
            )
            return DisabledFlow(field, entry.source, reason, refused=False)  # the job is the other's
        resume_job = build_resume_job(deployment, loaded.shape, policy.allowed_decorators)
        flow_job = build_flow_job(deployment, loaded.flow_file) if loaded.flow_file is not None else None
    except UnsupportedFlowError as exc:
        return DisabledFlow(field, entry.source, str(exc), refused=True, job_names=_jobs_of(entry, job_names))
    except (DeploymentError, MetaflowAccessError) as exc:
        return DisabledFlow(
            field, entry.source, str(exc), refused=False, job_names=_jobs_of(entry, job_names)
        )
    except Exception as exc:  # one flow's surprise must not take the other flows down
        reason = (
            f"{entry.source}: loading it raised {type(exc).__name__}: {exc}; fix the file, or remove "
            "the entry (and report this error to auto-resume's maintainers)"
        )
        return DisabledFlow(field, entry.source, reason, refused=False, job_names=job_names)
    return loaded, resume_job, flow_job


def _jobs_of(entry: FlowEntry, known: tuple[str, ...]) -> tuple[str, ...]:
    """The job names of a disabled entry: ``known``, or those its definitions file names, if it
    can be read (its flow is what failed), so that their failures are said not to be resumed."""
    if known or entry.definitions_file is None:
        return known
    try:
        deployment = read_deployment(entry.definitions_file)
    except DeploymentError:
        return ()
    return (deployment.job_name, deployment.resume_job_name)
