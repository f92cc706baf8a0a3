"""Builds the auto-resume code location from a policy: one resume job per flow, one sensor."""

from pathlib import Path

from dagster import Definitions

from auto_resume.deployment import Deployment, DeploymentError, read_deployment
from auto_resume.metaflow_access import MetaflowAccessError, load_flow_shape
from auto_resume.policy import PolicyError, default_policy_path, load_policy, salvage_policy
from auto_resume.resume_job import build_resume_job
from auto_resume.sensor import build_auto_resume_sensor


def build_definitions(policy_path: Path | None = None, strict: bool = True) -> Definitions:
    """Build the code location from a policy file.

    Args:
        policy_path: The policy; default ``$AUTO_RESUME_POLICY`` or ``./policy.yaml``.
        strict: Raise on an invalid policy. The deployed location passes False: the daemon
            reloads it every minute, and an invalid edit must then show up in the sensor's
            ticks (which re-read the file) rather than unload the sensor and resume jobs.

    Raises:
        PolicyError: The policy, or a definitions file or flow it names, is invalid.
    """
    path = policy_path or default_policy_path()
    try:
        policy = load_policy(path)
    except PolicyError:
        if strict or not path.is_file():
            raise
        policy = salvage_policy(path)
    deployments: list[Deployment] = []
    jobs = []
    for index, entry in enumerate(policy.flows):
        try:
            deployment = read_deployment(entry.definitions_file)
            shape = load_flow_shape(deployment.flow_file, deployment.flow_name)
        except (DeploymentError, MetaflowAccessError) as exc:
            raise PolicyError(
                f"invalid auto-resume policy {path}: flows[{index}].definitions_file: {exc}", path=path
            ) from exc
        deployments.append(deployment)
        jobs.append(build_resume_job(deployment, shape))
    _check_unique_jobs(path, deployments)
    sensor = build_auto_resume_sensor(deployments, jobs, policy, path)
    return Definitions(jobs=jobs, sensors=[sensor])


def _check_unique_jobs(path: Path, deployments: list[Deployment]) -> None:
    seen: dict[str, Path] = {}
    for index, deployment in enumerate(deployments):
        other = seen.setdefault(deployment.job_name, deployment.definitions_file)
        if other != deployment.definitions_file:
            raise PolicyError(
                f"invalid auto-resume policy {path}: flows[{index}].definitions_file: "
                f"{deployment.definitions_file} defines job {deployment.job_name!r}, like {other}; "
                "resume jobs are named after the job, so list one of them, or regenerate one with "
                "`dagster create --job-name <other name>`",
                path=path,
            )
