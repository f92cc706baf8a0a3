"""The companion resume job of a flow: one op per Metaflow step, cloning what completed.

Run config (the sensor writes it; it can also be typed by hand in the Launchpad)::

    ops:
      <job>_resume__origin:
        config:
          origin_run_id: dagster-1a2b3c4d5e6f   # the Metaflow run to resume
          from_step: train                      # optional: re-run it and everything after it
          with: ["resources:memory=32000"]      # optional: decorators for the tasks it executes
          tags: [resumed-after-oom]             # optional: Metaflow tags of the new run
          max_runtime_seconds: 7200             # optional: Dagster stops the run after this

Whoever can open the Launchpad can start a resume, so ``with`` takes only the decorators the
policy's ``allowed_decorators`` lists, and Metaflow parameters cannot change (the completed steps
used the origin's): the first op refuses both, and malformed specs or tags, before any command.

The job runs in one process (in-process executor): a cloned task costs a few milliseconds, so
starting a Dagster op process per step would dominate the cost of a resume. Tasks that must run
again are Metaflow subprocesses, exactly as metaflow-dagster starts them, several at once within
a step.

A task that fails does not stop the steps after it: they still clone (or run) every task that
does not depend on it, so the new Metaflow run holds all the work done so far and the next
resume, which starts from it, repeats none of it. The last op, ``<job>_resume__finish``, fails
the run if any task failed.
"""

from collections.abc import Collection, Sequence
from typing import Any

from dagster import (
    DagsterRunStatus,
    Failure,
    Field,
    In,
    JobDefinition,
    Noneable,
    OpDefinition,
    OpExecutionContext,
    Out,
    Permissive,
    RunRecord,
    RunsFilter,
    in_process_executor,
    job,
    op,
)

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, StepShape, check_step_name
from auto_resume.core.resume_changes import ResumeChanges
from auto_resume.core.resume_plan import PARAMETERS_STEP, PARAMETERS_TASK_ID, parameters_task
from auto_resume.core.run_ids import check_run_id, make_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.naming import RUN_ID_LOG_PREFIX, finish_op_name, step_op_name
from auto_resume.dagster.runs import NOT_FINISHED_STATUSES
from auto_resume.dagster.step_execution import (
    DEFAULT_MAX_PARALLEL_TASKS,
    ResumeContext,
    StepOutcome,
    execute_step,
)
from auto_resume.metaflow import clone_pool, records
from auto_resume.metaflow.cloning import clone_task
from auto_resume.metaflow.datastore import store_for
from auto_resume.metaflow.decorator_specs import DEFAULT_ALLOWED_DECORATORS, spec_problem, tags_problem
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.origin import read_origin_step


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
        "with": Field(
            [str],
            default_value=[],
            is_required=False,
            description="Decorator specs (`resources:memory=32000`) injected into every task this run "
            "executes, not into clones; only those the policy's allowed_decorators lists.",
        ),
        "tags": Field(
            [str],
            default_value=[],
            is_required=False,
            description="Metaflow tags of the new Metaflow run (as `metaflow resume --tag`).",
        ),
        "max_runtime_seconds": Field(
            Noneable(int),
            default_value=None,
            is_required=False,
            description="Stop the run after this many seconds (Dagster's dagster/max_runtime tag, "
            "enforced by run monitoring).",
        ),
        "parameters": Field(
            Permissive(),  # type: ignore[no-untyped-call]
            default_value={},
            is_required=False,
            description="Not changeable: a resume keeps the origin run's Metaflow parameters; any "
            "value here is refused.",
        ),
    }


def build_resume_job(
    deployment: Deployment,
    flow: FlowShape,
    allowed_decorators: Collection[str] = DEFAULT_ALLOWED_DECORATORS,
) -> JobDefinition:
    """Build ``<job>_resume`` for one deployed flow.

    Args:
        deployment: The flow's metaflow-dagster definitions file, parsed.
        flow: The flow graph.
        allowed_decorators: The policy's ``allowed_decorators``: what run config may inject.
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
        _origin_op(job_name, deployment, flow, tuple(allowed_decorators)),
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
    deployment: Deployment,
    origin_run_id: str,
    from_step: str | None = None,
    changes: ResumeChanges | None = None,
) -> dict[str, Any]:
    """Run config of ``<job>_resume`` for resuming ``origin_run_id`` (``changes``' from_step wins)."""
    config: dict[str, Any] = {"origin_run_id": origin_run_id}
    if changes is not None:
        from_step = changes.from_step or from_step
        if changes.with_specs:
            config["with"] = list(changes.with_specs)
        if changes.metaflow_tags:
            config["tags"] = list(changes.metaflow_tags)
        if changes.max_runtime_seconds:
            config["max_runtime_seconds"] = changes.max_runtime_seconds
    if from_step:
        config["from_step"] = from_step
    return {"ops": {origin_op_name(deployment): {"config": config}}}


def config_problems(config: dict[str, Any], allowed_decorators: Collection[str]) -> list[str]:
    """What the origin op refuses in its run config before it runs anything; [] if nothing."""
    problems = []
    for spec in config.get("with") or ():
        if (what := spec_problem(spec, allowed_decorators)) is not None:
            problems.append(f"with: {what}")
    if config.get("tags") and (what := tags_problem(config["tags"])) is not None:
        problems.append(f"tags: {what}")
    if (seconds := config.get("max_runtime_seconds")) is not None and seconds < 1:
        problems.append(f"max_runtime_seconds: must be >= 1 (got {seconds}); fix: e.g. 7200, or null")
    if names := sorted(config.get("parameters") or {}):
        problems.append(
            f"parameters: {', '.join(names)}: a resume keeps the origin run's Metaflow parameters (its "
            "completed steps used them, and metaflow resume refuses changes too); fix: remove "
            "`parameters`, or launch a new run of the flow's job with the new values"
        )
    return problems


def _origin_op(
    job_name: str, deployment: Deployment, flow: FlowShape, allowed_decorators: Sequence[str]
) -> OpDefinition:
    @op(name=origin_op_name(deployment), config_schema=_config_schema(), out=Out(Any))
    def _origin(context: OpExecutionContext) -> ResumeContext:
        config = context.op_config
        if problems := config_problems(config, allowed_decorators):
            raise Failure(
                description=f"invalid run config of {job_name} (op {origin_op_name(deployment)}); "
                "nothing was run:\n" + "\n".join(f"- {p}" for p in problems)
            )
        if any(step.type == "foreach" for step in flow.steps):
            # Only a foreach makes a step wide enough to clone in processes: start their fork
            # server now, so that it loads while this op and the first steps work.
            clone_pool.start()
        try:
            origin_run_id = check_run_id(config["origin_run_id"])
            _refuse_a_second_resume(context, job_name, origin_run_id)
            _record_changes(context, config)
            rerun = (
                flow.downstream_of(check_step_name(flow, config["from_step"]))
                if config.get("from_step")
                else frozenset()
            )
            store = store_for(deployment)
            origin = read_origin_step(store, origin_run_id, PARAMETERS_STEP)
            parameters = parameters_task(
                origin.tasks, deployment.flow_name, deployment.job_name, origin_run_id
            )
        except MetaflowAccessError as exc:
            raise Failure(description=str(exc)) from exc
        run_id = make_run_id(context.run_id)
        context.log.info(f"{RUN_ID_LOG_PREFIX}{run_id} origin_run_id={origin_run_id}")
        records.register_run(store, deployment, run_id, extra_tags=config.get("tags") or ())
        clone_task(store, origin, parameters.pathspec, run_id, PARAMETERS_TASK_ID)
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
            with_specs=tuple(config.get("with") or ()),
            metaflow_tags=tuple(config.get("tags") or ()),
        )

    return _origin


def _record_changes(context: OpExecutionContext, config: dict[str, Any]) -> None:
    """Tag the run with its changes (a Launchpad run has none yet) and its time limit.

    Dagster's run monitoring reads ``dagster/max_runtime`` on every check, so a limit tagged now
    counts from the run's start.
    """
    run_tags = context.run.tags
    new: dict[str, str] = {}
    changes = ResumeChanges(
        with_specs=tuple(config.get("with") or ()),
        metaflow_tags=tuple(config.get("tags") or ()),
        max_runtime_seconds=config.get("max_runtime_seconds"),
        from_step=config.get("from_step"),
        because=("run config",),
    )
    if changes and tags.CHANGES not in run_tags:
        new[tags.CHANGES] = changes.as_json()
    if changes.max_runtime_seconds and tags.DAGSTER_MAX_RUNTIME not in run_tags:
        new[tags.DAGSTER_MAX_RUNTIME] = str(changes.max_runtime_seconds)
    if new:
        context.instance.add_run_tags(context.run_id, new)
    if changes:
        context.log.info(f"this resume runs {changes.describe()}")


# Another resume of the same origin waiting before this one, or at work (every other status that
# is not finished: started, canceling, suspended, managed outside Dagster), keeps it from starting.
# Derived, not listed: SUSPENDED exists only from dagster 1.13.26.
_WAITING = frozenset({DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING})
_AT_WORK = NOT_FINISHED_STATUSES - _WAITING


def _refuse_a_second_resume(context: OpExecutionContext, job_name: str, origin_run_id: str) -> None:
    """Fail, naming it, if another resume of ``origin_run_id`` is at work, waiting before this one, or done.

    The sensor and ``auto-resume resume`` cannot make two resumes of one failure (one run key);
    a run launched from the Launchpad has no run key and no ``auto_resume/...`` tags, so this op
    tags its own run with its origin first, then looks at the other runs of this job with that
    origin: one at work (started) or succeeded blocks this one, and so does one still waiting
    that was created before it; a run made with ``--force`` (tag ``auto_resume/manual=forced``)
    is not blocked by a succeeded one. The refused run is tagged ``auto_resume/opt_out``, so the
    sensor does not resume it, and ``auto_resume/duplicate_of`` with the other run's id.
    """
    instance = context.instance
    own_id = context.run_id
    if context.run.tags.get(tags.ORIGIN_METAFLOW_RUN_ID) != origin_run_id:
        instance.add_run_tags(own_id, {tags.ORIGIN_METAFLOW_RUN_ID: origin_run_id})
    records = instance.get_run_records(
        RunsFilter(job_name=job_name, tags={tags.ORIGIN_METAFLOW_RUN_ID: origin_run_id})
    )
    own = next((r for r in records if r.dagster_run.run_id == own_id), None)
    forced = context.run.tags.get(tags.MANUAL) == "forced"
    blocker = next((r for r in records if r is not own and _blocks(r, own, forced)), None)
    if blocker is None:
        return
    other = blocker.dagster_run
    instance.add_run_tags(own_id, {tags.OPT_OUT: "true", tags.DUPLICATE_OF: other.run_id})
    raise Failure(
        description=(
            f"another resume of {origin_run_id} exists: run {other.run_id} ({other.status.value}); "
            "two resumes of one origin would run the same tasks twice. This run did nothing and is "
            f"tagged {tags.OPT_OUT}=true (the sensor leaves it alone)"
        )
    )


def _blocks(other: RunRecord, own: RunRecord | None, forced: bool) -> bool:
    status = other.dagster_run.status
    if status in _AT_WORK:
        return True
    if status is DagsterRunStatus.SUCCESS:
        return not forced
    # Created before this run, and not started yet: it will see this run at work and refuse.
    return status in _WAITING and own is not None and other.storage_id < own.storage_id


def _step_op(job_name: str, deployment: Deployment, flow: FlowShape, step: StepShape) -> OpDefinition:
    """The op of one Metaflow step: clones or executes its tasks (see the module docstring)."""
    ins = {"resume": In(Any), **{f"from_{p}": In(Any) for p in step.in_funcs}}

    @op(name=step_op_name(job_name, step.name), ins=ins, out=Out(Any))
    def _step(context: OpExecutionContext, resume: ResumeContext, **parents: StepOutcome) -> StepOutcome:
        by_step = {name[len("from_") :]: outcome.records for name, outcome in parents.items()}
        return execute_step(context, deployment, flow, step, resume, by_step)

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
