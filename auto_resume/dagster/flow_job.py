"""The job of a flow declared by ``flow_file:`` in the policy, built by auto-resume itself.

metaflow-dagster compiles a flow into a definitions file of its own code location. A policy entry
``flow_file: flows/my_flow.py`` skips that step: auto-resume reads the flow and builds its job in
the ``auto_resume`` code location, beside the flow's resume job. The job runs a flow the way
metaflow-dagster does, so that the two kinds of runs are interchangeable (either resumes the
other): the Metaflow run id is ``dagster-`` + sha1(Dagster run id)[:12], the parameters task is
``_parameters/params``, and task ids are ``1``, ``1-3`` (foreach item 3), ``1-0-1`` (nested).

Run config::

    ops:
      <job>__params:
        config:
          alpha: 42          # any of the flow's parameters; the others take their defaults

Its ops are the resume job's step ops with nothing to clone: one op per Metaflow step, tasks as
Metaflow subprocesses, and a failed task does not stop the tasks that do not depend on it; the
last op, ``<job>__finish``, fails the run if any task failed. Conditional steps (split-switch)
run the branch the step chose, which metaflow-dagster 0.3.7 cannot do.
"""

from pathlib import Path
from typing import Any

from dagster import (
    Any as AnyType,
)
from dagster import Failure, Field, JobDefinition, OpDefinition, OpExecutionContext, Out, op

from auto_resume.core.resume_plan import PARAMETERS_STEP, PARAMETERS_TASK_ID
from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster.naming import RUN_ID_LOG_PREFIX
from auto_resume.dagster.resume_job import build_step_job
from auto_resume.dagster.step_execution import DEFAULT_MAX_PARALLEL_TASKS, ResumeContext
from auto_resume.metaflow import commands, records
from auto_resume.metaflow.datastore import store_for
from auto_resume.metaflow.deployment import Deployment, StepOptions
from auto_resume.metaflow.flows import FlowFile


def flow_file_deployment(flow: FlowFile, job_name: str | None = None) -> Deployment:
    """The deployment of a ``flow_file:`` entry: what a definitions file would have said."""
    steps = {}
    for step in flow.shape.steps:
        retries, delay = flow.retries.get(step.name, (0, 0.0))
        steps[step.name] = StepOptions(
            max_user_code_retries=retries,
            retry_delay_seconds=delay,
            extra_env=dict(flow.environment.get(step.name, {})),
            decorators=flow.decorators.get(step.name, frozenset()),
        )
    return Deployment(
        definitions_file=flow.flow_file,
        job_name=job_name or flow.shape.name,
        flow_file=flow.flow_file,
        flow_name=flow.shape.name,
        top_args=flow.top_args,
        step_env=dict(flow.step_env),
        steps=steps,
    )


def params_op_name(deployment: Deployment) -> str:
    """Name of the flow job's first op, which carries the flow's parameters as run config."""
    return f"{deployment.job_name}__params"


def flow_run_config(deployment: Deployment, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run config of the flow job for a run with ``parameters``."""
    return {"ops": {params_op_name(deployment): {"config": dict(parameters)}}}


def build_flow_job(deployment: Deployment, flow: FlowFile) -> JobDefinition:
    """Build the job that runs ``flow`` from its first step, named ``deployment.job_name``."""
    return build_step_job(
        deployment.job_name,
        (
            f"Run Metaflow flow {flow.shape.name} from {Path(deployment.flow_file).name}, one op per "
            f"step (built by auto-resume from the policy's flow_file entry)."
        ),
        deployment,
        flow.shape,
        _params_op(deployment, flow),
    )


def _params_op(deployment: Deployment, flow: FlowFile) -> OpDefinition:
    schema = {
        name: Field(AnyType, is_required=False, description=f"Parameter {name} of {flow.shape.name}")
        for name in flow.parameters
    }

    @op(name=params_op_name(deployment), config_schema=schema, out=Out(Any))
    def _params(context: OpExecutionContext) -> ResumeContext:
        run_id = make_run_id(context.run_id)
        context.log.info(f"{RUN_ID_LOG_PREFIX}{run_id}")
        records.register_run(store_for(deployment), deployment, run_id)
        command = commands.init_command(deployment, run_id, PARAMETERS_TASK_ID)
        context.log.info("$ " + " ".join(command))
        result = commands.run_init(deployment, command, dict(context.op_config or {}))
        if result.returncode != 0:
            raise Failure(
                description=(
                    f"{deployment.flow_name}/{run_id}: creating the parameters task failed "
                    f"(exit {result.returncode}); check the run config's parameter values:\n"
                    f"{commands.output_tail(result)}"
                )
            )
        return ResumeContext(
            run_id=run_id,
            origin_run_id=None,
            rerun_steps=frozenset(),
            parameters_pathspec=f"{run_id}/{PARAMETERS_STEP}/{PARAMETERS_TASK_ID}",
            max_parallel_tasks=DEFAULT_MAX_PARALLEL_TASKS,
        )

    return _params
