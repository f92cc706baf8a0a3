"""The companion resume job of a flow: one op per Metaflow step, cloning what completed.

Run config (the sensor writes it; it can also be typed by hand in the Launchpad)::

    ops:
      <job>_resume__origin:
        config:
          origin_run_id: dagster-1a2b3c4d5e6f   # the Metaflow run to resume
          from_step: train                      # optional: re-run it and everything after it

The job runs in one process (in-process executor): a cloned task costs a few milliseconds, so
starting a Dagster op process per step would dominate the cost of a resume. Tasks that must run
again are Metaflow subprocesses, exactly as metaflow-dagster starts them, several at once within
a step.

A task that fails does not stop the steps after it: they still clone (or run) every task that
does not depend on it, so the new Metaflow run holds all the work done so far and the next
resume, which starts from it, repeats none of it. The last op, ``<job>_resume__finish``, fails
the run if any task failed.
"""

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dagster import (
    Failure,
    Field,
    In,
    JobDefinition,
    MetadataValue,
    Noneable,
    OpDefinition,
    OpExecutionContext,
    Out,
    in_process_executor,
    job,
    op,
)

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, StepShape, check_step_name
from auto_resume.core.resume_plan import (
    PARAMETERS_STEP,
    PARAMETERS_TASK_ID,
    TaskAction,
    TaskRecord,
    instances_for,
    parameters_task,
    plan_step,
)
from auto_resume.core.run_ids import check_run_id, make_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.naming import RUN_ID_LOG_PREFIX, finish_op_name
from auto_resume.metaflow.access import MetaflowRun
from auto_resume.metaflow.deployment import Deployment

DEFAULT_MAX_PARALLEL_TASKS = 4
# Processes cloning the tasks of a wide step (see MetaflowRun.clone_tasks).
CLONE_PROCESSES = max(1, min(4, os.cpu_count() or 1))
_STDERR_TAIL = 3000


@dataclass(frozen=True)
class StepOutcome:
    """What a step op hands to the steps after it: its finished tasks, and its failures."""

    records: tuple[TaskRecord, ...]
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResumeContext:
    """What every step op of one resume run shares."""

    run_id: str
    origin_run_id: str | None  # None: a first run (the flow job of a `flow_file:` entry)
    rerun_steps: frozenset[str]
    parameters_pathspec: str
    max_parallel_tasks: int


def _config_schema() -> dict[str, Field]:
    return {
        "origin_run_id": Field(
            str,
            description="Metaflow run id to resume (dagster-<hash>), as logged by the failed run.",
        ),
        "from_step": Field(
            Noneable(str),
            default_value=None,
            is_required=False,
            description="Re-run this step and every step downstream of it, even if they completed.",
        ),
        "max_parallel_tasks": Field(
            int,
            default_value=DEFAULT_MAX_PARALLEL_TASKS,
            is_required=False,
            description="How many Metaflow tasks of one step may execute at the same time.",
        ),
    }


def build_resume_job(deployment: Deployment, flow: FlowShape) -> JobDefinition:
    """Build ``<job>_resume`` for one deployed flow.

    Args:
        deployment: The flow's metaflow-dagster definitions file, parsed.
        flow: The flow graph.
    """
    job_name = deployment.resume_job_name
    return build_step_job(
        job_name,
        (
            f"Resume a failed run of {deployment.job_name} ({deployment.flow_name}): clone every "
            "task that completed in origin_run_id, execute the rest with its parameters."
        ),
        deployment,
        flow,
        _origin_op(job_name, deployment, flow),
    )


def build_step_job(
    job_name: str, description: str, deployment: Deployment, flow: FlowShape, first_op: OpDefinition
) -> JobDefinition:
    """A job of ``first_op`` (which makes the ResumeContext), one op per step, and the finish op.

    The resume job and the job of a ``flow_file:`` entry differ only in their first op.
    """
    step_ops = {step.name: _step_op(job_name, deployment, flow, step) for step in flow.steps}
    finish = _finish_op(job_name, flow)

    @job(
        name=job_name,
        description=description,
        executor_def=in_process_executor,
        tags={tags.FLOW: deployment.flow_name},
    )
    def _step_job() -> None:
        context = first_op()
        outputs: dict[str, Any] = {}
        for step in flow.steps:
            parents = {f"from_{p}": outputs[p] for p in step.in_funcs}
            outputs[step.name] = step_ops[step.name](resume=context, **parents)
        finish(resume=context, **{f"from_{name}": output for name, output in outputs.items()})

    return _step_job


def origin_op_name(deployment: Deployment) -> str:
    """Name of the resume job's first op, which carries the run config."""
    return f"{deployment.resume_job_name}__origin"


def resume_run_config(
    deployment: Deployment, origin_run_id: str, from_step: str | None = None
) -> dict[str, Any]:
    """Run config of ``<job>_resume`` for resuming ``origin_run_id``."""
    config: dict[str, Any] = {"origin_run_id": origin_run_id}
    if from_step:
        config["from_step"] = from_step
    return {"ops": {origin_op_name(deployment): {"config": config}}}


def _origin_op(job_name: str, deployment: Deployment, flow: FlowShape) -> OpDefinition:
    @op(name=origin_op_name(deployment), config_schema=_config_schema(), out=Out(Any))
    def _origin(context: OpExecutionContext) -> ResumeContext:
        config = context.op_config
        try:
            origin_run_id = check_run_id(config["origin_run_id"])
            rerun = (
                flow.downstream_of(check_step_name(flow, config["from_step"]))
                if config.get("from_step")
                else frozenset()
            )
            access = _access(deployment)
            parameters = parameters_task(
                access.origin_tasks(origin_run_id, PARAMETERS_STEP),
                deployment.flow_name,
                deployment.job_name,
                origin_run_id,
            )
        except MetaflowAccessError as exc:
            raise Failure(description=str(exc)) from exc
        run_id = make_run_id(context.run_id)
        context.log.info(f"{RUN_ID_LOG_PREFIX}{run_id} origin_run_id={origin_run_id}")
        access.register_run(run_id)
        access.clone_task(parameters.pathspec, run_id, PARAMETERS_STEP, PARAMETERS_TASK_ID)
        context.log.info(
            f"cloned {parameters.pathspec} -> {run_id}/{PARAMETERS_STEP}/{PARAMETERS_TASK_ID} "
            "(the origin run's parameters)"
        )
        return ResumeContext(
            run_id=run_id,
            origin_run_id=origin_run_id,
            rerun_steps=rerun,
            parameters_pathspec=f"{run_id}/{PARAMETERS_STEP}/{PARAMETERS_TASK_ID}",
            max_parallel_tasks=max(1, int(config.get("max_parallel_tasks") or 1)),
        )

    return _origin


def _step_op(job_name: str, deployment: Deployment, flow: FlowShape, step: StepShape) -> OpDefinition:
    """The op of one Metaflow step: clones or executes its tasks (see the module docstring)."""
    ins = {"resume": In(Any), **{f"from_{p}": In(Any) for p in step.in_funcs}}

    # "step_" keeps step ops apart from the origin op whatever the steps are called.
    @op(name=f"{job_name}__step_{step.name}", ins=ins, out=Out(Any))
    def _step(context: OpExecutionContext, resume: ResumeContext, **parents: StepOutcome) -> StepOutcome:
        by_step = {name[len("from_") :]: outcome.records for name, outcome in parents.items()}
        return _execute_step(context, deployment, flow, step, resume, by_step)

    return _step


def _finish_op(job_name: str, flow: FlowShape) -> OpDefinition:
    """The last op: fails the run if any task failed."""
    ins = {"resume": In(Any), **{f"from_{s.name}": In(Any) for s in flow.steps}}

    @op(name=finish_op_name(job_name), ins=ins)
    def _finish(context: OpExecutionContext, resume: ResumeContext, **steps: StepOutcome) -> None:
        failures = [message for outcome in steps.values() for message in outcome.failures]
        if failures:
            raise Failure(
                description=(
                    f"{len(failures)} task(s) of {flow.name}/{resume.run_id} failed; every task "
                    "that did not depend on them was cloned or run, so resuming this run repeats "
                    "none of that work:\n" + "\n\n".join(failures)
                ),
                metadata={"metaflow_run_id": resume.run_id},
            )
        context.log.info(f"{flow.name}/{resume.run_id}: every task finished")

    return _finish


def _execute_step(
    context: OpExecutionContext,
    deployment: Deployment,
    flow: FlowShape,
    step: StepShape,
    resume: ResumeContext,
    parents: Mapping[str, Sequence[TaskRecord]],
) -> StepOutcome:
    instances = instances_for(step, flow, parents, resume.parameters_pathspec)
    if not instances:
        context.log.info(f"step {step.name}: no task (branch not taken, or its inputs failed)")
        return StepOutcome(records=())
    access = _access(deployment)
    try:
        origin = access.origin_tasks(resume.origin_run_id, step.name) if resume.origin_run_id else {}
    except MetaflowAccessError as exc:
        raise Failure(description=_unreadable_origin(deployment, resume, step.name, exc)) from exc
    actions = plan_step(instances, origin, rerun=step.name in resume.rerun_steps)
    records: dict[tuple[int, ...], TaskRecord] = {}
    clones = [a for a in actions if a.clone]
    executions = [a for a in actions if not a.clone]
    # Start the tasks that must run first, then clone while their subprocesses work: clones
    # are in-process file copies, so on a wide step they cost nothing on the critical path.
    with _TaskRunner(context, access, step, resume, executions, records) as runner:
        started = time.monotonic()
        errors = access.clone_tasks(
            [(a.origin.pathspec, a.task_id) for a in clones if a.origin is not None],
            resume.run_id,
            step.name,
            processes=CLONE_PROCESSES,
        )
        for action in clones:
            if action.task_id not in errors:
                pathspec = f"{resume.run_id}/{step.name}/{action.task_id}"
                records[action.instance.indices] = _record(access, step, action, pathspec, cloned=True)
        clone_seconds = time.monotonic() - started
    failures = [
        *runner.failures,
        *(
            f"{resume.run_id}/{step.name}/{task_id} could not be cloned: {why}"
            for task_id, why in errors.items()
        ),
    ]
    summary = (
        f"step {step.name}: {len(clones)} task(s) cloned from {resume.origin_run_id} "
        f"in {clone_seconds:.2f}s, {len(executions)} executed"
        if resume.origin_run_id
        else f"step {step.name}: {len(executions)} task(s) executed"
    )
    # One log line per step, not per cloned task: each event is a row in the event log storage.
    context.log.info(summary)
    if failures:
        context.log.error(
            f"{summary}; {len(failures)} failed (the steps after it go on with the other tasks):\n"
            + "\n\n".join(failures)
        )
    context.add_output_metadata(
        {
            "metaflow_run_id": resume.run_id,
            "tasks_cloned": len(clones),
            "tasks_executed": len(executions),
            "tasks_failed": len(failures),
            "cloned_from": MetadataValue.md(
                "\n".join(f"- `{a.origin.pathspec}`" for a in clones[:50] if a.origin)
                + ("\n- ..." if len(clones) > 50 else "")
            ),
        }
    )
    return StepOutcome(records=tuple(records[key] for key in sorted(records)), failures=tuple(failures))


def _unreadable_origin(
    deployment: Deployment, resume: ResumeContext, step_name: str, error: MetaflowAccessError
) -> str:
    """Why a step cannot be resumed when its origin tasks cannot be read, and what happens next."""
    root = deployment.top_arg("datastore-root")
    where = f" under {root}/{deployment.flow_name}/{resume.origin_run_id}/{step_name}/" if root else ""
    return (
        f"the origin run's datastore objects of step {step_name} are missing or unreadable{where} "
        f"({error}): its tasks cannot be cloned. Resuming this run instead executes step "
        f"{step_name} and the steps after it again (the new run {resume.run_id} has no task of them)."
    )


class _TaskRunner:
    """Runs tasks as Metaflow subprocesses in a thread pool, from ``__enter__`` to ``__exit__``.

    ``failures`` holds one message per task that failed once the ``with`` block has ended.
    """

    def __init__(
        self,
        context: OpExecutionContext,
        access: MetaflowRun,
        step: StepShape,
        resume: ResumeContext,
        executions: Sequence[TaskAction],
        records: dict[tuple[int, ...], TaskRecord],
    ) -> None:
        self._context = context
        self._access = access
        self._step = step
        self._resume = resume
        self._executions = executions
        self._records = records
        self._options = access.deployment.step_options(step.name)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[str | None]] = []
        self.failures: list[str] = []

    def __enter__(self) -> "_TaskRunner":
        if self._executions:
            workers = min(self._resume.max_parallel_tasks, len(self._executions))
            self._pool = ThreadPoolExecutor(max_workers=workers)
            self._futures = [self._pool.submit(self._run, action) for action in self._executions]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)
        self.failures = [message for future in self._futures if (message := future.result())]

    def _run(self, action: TaskAction) -> str | None:
        access, step, resume, options = self._access, self._step, self._resume, self._options
        instance = action.instance
        access.register_task(resume.run_id, step.name, action.task_id)
        for attempt in range(options.max_user_code_retries + 1):
            command = access.step_command(
                step.name,
                resume.run_id,
                action.task_id,
                instance.input_paths,
                instance.split_index,
                retry_count=attempt,
            )
            self._context.log.info("$ " + " ".join(command))
            result = access.run_step(command, step.name)
            if result.returncode == 0:
                pathspec = f"{resume.run_id}/{step.name}/{action.task_id}"
                self._records[instance.indices] = _record(access, step, action, pathspec, cloned=False)
                return None
            if attempt < options.max_user_code_retries and options.retry_delay_seconds:
                time.sleep(options.retry_delay_seconds)
        return (
            f"{resume.run_id}/{step.name}/{action.task_id} exited with status "
            f"{result.returncode}:\n{(result.stderr or result.stdout)[-_STDERR_TAIL:]}"
        )


def _record(
    access: MetaflowRun, step: StepShape, action: TaskAction, pathspec: str, cloned: bool
) -> TaskRecord:
    outcome = access.task_outcome(pathspec, step.type)
    return TaskRecord(
        indices=action.instance.indices,
        pathspec=pathspec,
        cloned=cloned,
        num_splits=outcome.num_splits,
        next_steps=outcome.next_steps,
        widths=action.instance.widths,
    )


_ACCESS: dict[str, MetaflowRun] = {}


def access_for(deployment: Deployment) -> MetaflowRun:
    """The datastore access of ``deployment``, shared by the ops of this process."""
    return _access(deployment)


def _access(deployment: Deployment) -> MetaflowRun:
    # Keyed by where the flow's data lives too: tests run one flow on several datastores.
    key = repr((str(deployment.definitions_file), deployment.top_args, sorted(deployment.step_env.items())))
    if key not in _ACCESS:
        _ACCESS[key] = MetaflowRun(deployment)
    return _ACCESS[key]
