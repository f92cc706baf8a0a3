"""A failed run of a metaflow-dagster job, made through the instance API as a run worker leaves one.

The sensor reads only the event log, so it cannot tell these runs from runs that executed,
and they cost milliseconds instead of a run worker each: the unit tests of the sensor, the
end-to-end policy and fault tests and the benchmarks make their bursts of failures this way.
"""

import logging
import time
import uuid

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRequest

from auto_resume.dagster.tags import DAGSTER_RUN_KEY


def create_failed_run(
    instance: DagsterInstance,
    job_name: str,
    *,
    metaflow_run_id: str = "dagster-0123456789ab",
    step: str = "process",
    exception: str = "RuntimeError",
    message: str = "injected failure",
    run_tags: dict[str, str] | None = None,
) -> str:
    """A failed run of ``job_name`` made through the instance API, as a run worker leaves one.

    The run row, the metaflow-dagster command line in its log (``$ python flow.py ... --run-id``)
    and a real RUN_FAILURE event whose first step failure carries the Metaflow traceback: the
    event log is all the sensor reads, so it cannot tell these from runs that executed, and
    they cost milliseconds instead of a run worker each. Returns the run id.
    """
    from dagster import DagsterEvent, DagsterEventType
    from dagster._core.events import JobFailureData, RunFailureReason
    from dagster._core.events.log import EventLogEntry
    from dagster._core.execution.plan.objects import StepFailureData
    from dagster_shared.error import SerializableErrorInfo

    run = instance.add_run(
        DagsterRun(
            job_name=job_name,
            run_id=str(uuid.uuid4()),
            tags=run_tags or {},
            status=DagsterRunStatus.STARTED,
        )
    )
    command = f"$ python flow.py --quiet step {step} --run-id {metaflow_run_id} --task-id 1"
    # What `context.log.info(...)` stores: a plain log line, no Dagster event type.
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level=logging.INFO,
            user_message=command,
            run_id=run.run_id,
            timestamp=time.time(),
            job_name=job_name,
        )
    )
    stderr = (
        f'Traceback (most recent call last):\n  File "flow.py", line 9, in {step}\n'
        f"    raise {exception}()\n{exception}: {message}\n\nTask failed.\n"
    )
    error = SerializableErrorInfo(f"Command failed (exit 1):\n{stderr}", [], "RuntimeError")
    step_failure = DagsterEvent(
        event_type_value=DagsterEventType.STEP_FAILURE.value,
        job_name=job_name,
        step_key=f"op_{step}",
        event_specific_data=StepFailureData(error=error, user_failure_data=None),
    )
    instance.report_run_failed(
        run,
        job_failure_data=JobFailureData(
            error=None, failure_reason=RunFailureReason.STEP_FAILURE, first_step_failure_event=step_failure
        ),
    )
    return run.run_id


def create_requested_run(instance: DagsterInstance, request: RunRequest) -> DagsterRun:
    """What the daemon makes of a sensor's RunRequest: a queued run tagged with its run key."""
    assert request.job_name is not None and request.run_key is not None
    return instance.add_run(
        DagsterRun(
            job_name=request.job_name,
            run_id=str(uuid.uuid4()),
            run_config=request.run_config,
            tags={**request.tags, DAGSTER_RUN_KEY: request.run_key},
            status=DagsterRunStatus.NOT_STARTED,
        )
    )
