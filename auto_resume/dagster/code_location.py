"""Builds the auto-resume code location from a policy: one resume job per flow, one sensor.

A ``flow_file:`` entry also gets its flow's own job here (``auto_resume.dagster.flow_job``).
"""

from dataclasses import dataclass
from pathlib import Path

from dagster import Definitions, JobDefinition, get_dagster_logger

from auto_resume.core.errors import MetaflowAccessError, UnsupportedFlowError
from auto_resume.core.flow_shape import FlowShape
from auto_resume.dagster.flow_job import build_flow_job, flow_file_deployment
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.sensor import build_auto_resume_sensor
from auto_resume.metaflow.deployment import Deployment, DeploymentError, read_deployment
from auto_resume.metaflow.flows import FlowFile, load_flow_file, load_flow_shape
from auto_resume.policy.loading import PolicyError, default_policy_path, load_policy
from auto_resume.policy.model import FlowEntry


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
        DeploymentError: The definitions file is not a usable metaflow-dagster file.
        MetaflowAccessError: The flow cannot be imported or has an unsupported shape.
    """
    if entry.flow_file is not None:
        flow = load_flow_file(entry.flow_file, entry.flow_class)
        return LoadedFlow(flow_file_deployment(flow, entry.job_name), flow.shape, flow)
    assert entry.definitions_file is not None
    deployment = read_deployment(entry.definitions_file)
    return LoadedFlow(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name), None)


def build_definitions(policy_path: Path | None = None, refused: list[str] | None = None) -> Definitions:
    """Build the code location from a policy file.

    An invalid policy fails the load: the deployed location then reports the error until the
    file is fixed, while the sensor's cursor waits in the instance, so no failure is lost.
    A flow auto-resume cannot resume (``UnsupportedFlowError``: a step launched elsewhere, a
    ``flow_file`` built by configs or mutators) is refused alone: it gets no resume job, so the
    sensor does not watch it, the reason is logged, and the other flows load.

    Args:
        policy_path: The policy; default ``$AUTO_RESUME_POLICY`` or ``./policy.yaml``.
        refused: Given, receives one line per refused flow: its policy field and why.

    Returns:
        The resume jobs, the jobs of ``flow_file`` entries and ``auto_resume_sensor``.

    Raises:
        PolicyError: The policy, or a definitions file or flow it names, is invalid.
    """
    path = policy_path or default_policy_path()
    policy = load_policy(path)
    deployments: list[Deployment] = []
    jobs: list[JobDefinition] = []
    flow_jobs: list[JobDefinition] = []
    fields: list[str] = []
    for index, entry in enumerate(policy.flows):
        try:
            loaded = load_flow(entry)
        except UnsupportedFlowError as exc:
            reason = f"flows[{index}].{entry.source_field}: {exc}"
            get_dagster_logger().warning(f"auto-resume policy {path}: flow refused: {reason}")
            if refused is not None:
                refused.append(reason)
            continue
        except (DeploymentError, MetaflowAccessError) as exc:
            raise PolicyError(
                f"invalid auto-resume policy {path}: flows[{index}].{entry.source_field}: {exc}", path=path
            ) from exc
        deployments.append(loaded.deployment)
        fields.append(f"flows[{index}].{entry.source_field}")
        jobs.append(build_resume_job(loaded.deployment, loaded.shape, policy.allowed_decorators))
        if loaded.flow_file is not None:
            flow_jobs.append(build_flow_job(loaded.deployment, loaded.flow_file))
    _check_unique_jobs(path, deployments, fields)
    sensor = build_auto_resume_sensor(deployments, jobs, policy, path)
    return Definitions(jobs=[*flow_jobs, *jobs], sensors=[sensor])


def _check_unique_jobs(path: Path, deployments: list[Deployment], fields: list[str]) -> None:
    seen: dict[str, Path] = {}
    for index, deployment in enumerate(deployments):
        other = seen.setdefault(deployment.job_name, deployment.definitions_file)
        if other != deployment.definitions_file:
            raise PolicyError(
                f"invalid auto-resume policy {path}: {fields[index]}: "
                f"{deployment.definitions_file} defines job {deployment.job_name!r}, like {other}; "
                "resume jobs are named after the job, so list one of them, or rename one (`job_name:` "
                "for a flow_file entry, `dagster create --job-name <other name>` for a definitions file)",
                path=path,
            )
