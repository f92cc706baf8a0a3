"""Executing one Metaflow step inside an op: clone the tasks that completed, run the others.

Tasks that must run again are Metaflow subprocesses, exactly as metaflow-dagster starts them,
several at once (a thread each, waiting on its subprocess). The clones are made while those
subprocesses work: on a wide step they cost nothing on the critical path.
"""

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dagster import Failure, MetadataValue, OpExecutionContext

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, StepShape
from auto_resume.core.resume_plan import TaskAction, TaskRecord, instances_for, plan_step
from auto_resume.dagster import naming
from auto_resume.metaflow import commands, records
from auto_resume.metaflow.clone_pool import CLONE_PROCESSES
from auto_resume.metaflow.cloning import clone_tasks
from auto_resume.metaflow.datastore import Store, store_for
from auto_resume.metaflow.decorator_specs import injection_for
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.origin import OriginStep, read_origin_step, task_outcome
from auto_resume.metaflow.task_logs import AttemptLog

DEFAULT_MAX_PARALLEL_TASKS = 4


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
    with_specs: tuple[str, ...] = ()  # injected into every task the run executes (run config `with`)
    metaflow_tags: tuple[str, ...] = ()  # Metaflow tags of the new run (run config `tags`)


def execute_step(
    context: OpExecutionContext,
    deployment: Deployment,
    flow: FlowShape,
    step: StepShape,
    resume: ResumeContext,
    parents: Mapping[str, Sequence[TaskRecord]],
) -> StepOutcome:
    """Clone or run every task of ``step`` in the new run; report one line and output metadata.

    Raises:
        Failure: The origin step cannot be read (its tasks can be neither cloned nor planned).
    """
    instances = instances_for(step, flow, parents, resume.parameters_pathspec)
    if not instances:
        context.log.info(f"step {step.name}: no task (branch not taken, or its inputs failed)")
        return StepOutcome(records=())
    store = store_for(deployment)
    read_started = time.monotonic()
    try:
        origin = (
            read_origin_step(store, resume.origin_run_id, step.name)
            if resume.origin_run_id
            else OriginStep(run_id="", step_name=step.name, tasks={})
        )
    except MetaflowAccessError as exc:
        raise Failure(description=_unreadable_origin(deployment, resume, step.name, exc)) from exc
    read_seconds = time.monotonic() - read_started
    actions = plan_step(instances, origin.tasks, rerun=step.name in resume.rerun_steps)
    found: dict[tuple[int, ...], TaskRecord] = {}
    clones = [a for a in actions if a.clone]
    executions = [a for a in actions if not a.clone]
    # Start the tasks that must run first, then clone while their subprocesses work.
    with _TaskRunner(context, deployment, store, step, resume, executions, found) as runner:
        started = time.monotonic()
        errors = clone_tasks(
            store,
            origin,
            [(a.origin.pathspec, a.task_id) for a in clones if a.origin is not None],
            resume.run_id,
            processes=CLONE_PROCESSES,
        )
        for action in clones:
            if action.task_id not in errors:
                pathspec = f"{resume.run_id}/{step.name}/{action.task_id}"
                found[action.instance.indices] = _record(store, step, action, pathspec, cloned=True)
        clone_seconds = time.monotonic() - started
    failures = [
        *runner.failures,
        *(
            f"{resume.run_id}/{step.name}/{task_id} could not be cloned: {why}"
            for task_id, why in errors.items()
        ),
    ]
    _report(context, step, resume, clones, executions, failures, (read_seconds, clone_seconds))
    return StepOutcome(records=tuple(found[key] for key in sorted(found)), failures=tuple(failures))


def _report(
    context: OpExecutionContext,
    step: StepShape,
    resume: ResumeContext,
    clones: Sequence[TaskAction],
    executions: Sequence[TaskAction],
    failures: Sequence[str],
    seconds: tuple[float, float],
) -> None:
    read_seconds, clone_seconds = seconds
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
            naming.TASKS_CLONED: len(clones),
            naming.TASKS_EXECUTED: len(executions),
            naming.TASKS_FAILED: len(failures),
            naming.ORIGIN_READ_SECONDS: round(read_seconds, 3),
            naming.CLONE_SECONDS: round(clone_seconds, 3),
            "cloned_from": MetadataValue.md(
                "\n".join(f"- `{a.origin.pathspec}`" for a in clones[:50] if a.origin)
                + ("\n- ..." if len(clones) > 50 else "")
            ),
        }
    )


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
        deployment: Deployment,
        store: Store,
        step: StepShape,
        resume: ResumeContext,
        executions: Sequence[TaskAction],
        found: dict[tuple[int, ...], TaskRecord],
    ) -> None:
        self._context = context
        self._deployment = deployment
        self._store = store
        self._step = step
        self._resume = resume
        self._executions = executions
        self._found = found
        self._options = deployment.step_options(step.name)
        self._injection = injection_for(resume.with_specs, step.name, self._options.decorators)
        self._running = commands.RunningSteps()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[str | None]] = []
        self.failures: list[str] = []

    def __enter__(self) -> "_TaskRunner":
        if self._executions and self._injection.ignored:
            self._context.log.warning(
                f"step {self._step.name} has its own decorator of that name, which wins (Metaflow's "
                f"rule for --with): {', '.join(self._injection.ignored)} not injected there"
            )
        if self._executions:
            workers = min(self._resume.max_parallel_tasks, len(self._executions))
            self._pool = ThreadPoolExecutor(max_workers=workers)
            self._futures = [self._pool.submit(self._run, action) for action in self._executions]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if self._pool is None:
            return
        if exc_type is not None:
            self._stop()  # the exception goes on; the tasks must not outlive the step
            return
        try:
            self._pool.shutdown(wait=True)
        except BaseException:
            self._stop()
            raise
        self.failures = [message for future in self._futures if (message := future.result())]

    def _stop(self) -> None:
        """The run is stopped (Dagster's termination, a time limit, Ctrl-C) or the step broke:
        its Metaflow tasks stop with it, no other starts, and no thread is left waiting on them."""
        assert self._pool is not None
        self._running.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, action: TaskAction) -> str | None:
        deployment, step, resume, injection = self._deployment, self._step, self._resume, self._injection
        instance = action.instance
        records.register_task(
            self._store, deployment, resume.run_id, step.name, action.task_id, resume.metaflow_tags
        )
        pathspec = f"{resume.run_id}/{step.name}/{action.task_id}"
        # The step's own @retry wins; an injected one counts only where the step has none.
        retries, delay = self._options.max_user_code_retries, self._options.retry_delay_seconds
        if injection.user_code_retries is not None:
            retries, delay = injection.user_code_retries, injection.retry_delay_seconds
        for attempt in range(retries + 1):
            if self._running.stopped:
                return f"{pathspec} was stopped with the run"
            command = commands.step_command(
                deployment,
                step.name,
                resume.run_id,
                action.task_id,
                instance.input_paths,
                instance.split_index,
                retry_count=attempt,
                origin_run_id=resume.origin_run_id,
                injected=injection.specs,
                extra_tags=resume.metaflow_tags,
                max_user_code_retries=retries,
            )
            self._context.log.info("$ " + " ".join(command))
            log = AttemptLog()
            result = commands.run_step(
                deployment, command, step.name, log, extra_env=injection.env, running=self._running
            )
            self._keep_output(pathspec, attempt, log, result.returncode)
            if result.returncode == 0:
                self._found[instance.indices] = _record(self._store, step, action, pathspec, cloned=False)
                return None
            if attempt < retries and delay:
                time.sleep(delay)
        return (
            f"{resume.run_id}/{step.name}/{action.task_id} exited with status "
            f"{result.returncode}:\n{commands.output_tail(result)}"
        )

    def _keep_output(self, pathspec: str, attempt: int, log: AttemptLog, returncode: int) -> None:
        """The attempt's output in its task datastore (``task.stdout``, ``python flow.py logs``)
        and in the op's log, as Metaflow's runtime and metaflow-dagster's op keep it."""
        try:
            log.save(self._store, pathspec, attempt, returncode)
        except Exception as exc:  # the task's outcome does not depend on its logs
            self._context.log.warning(f"{pathspec} attempt {attempt}: its logs could not be saved: {exc!r}")
        for stream in ("stdout", "stderr"):
            text = log.text(stream)
            if text.strip():
                self._context.log.info(f"{pathspec} attempt {attempt} {stream}:\n{text}")


def _record(store: Store, step: StepShape, action: TaskAction, pathspec: str, cloned: bool) -> TaskRecord:
    outcome = task_outcome(store, pathspec, step.type)
    return TaskRecord(
        indices=action.instance.indices,
        pathspec=pathspec,
        cloned=cloned,
        num_splits=outcome.num_splits,
        next_steps=outcome.next_steps,
        widths=action.instance.widths,
    )
