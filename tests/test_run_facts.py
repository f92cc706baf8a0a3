"""Tests for auto_resume.dagster.run_facts: what failed, read from a run's failure event."""

from __future__ import annotations

import pytest
from dagster import DagsterEvent, DagsterEventType
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.objects import StepFailureData, UserFailureData
from dagster_shared.error import SerializableErrorInfo

from auto_resume.dagster.naming import step_name_of
from auto_resume.dagster.run_facts import FailureDetails, failure_details

STDERR = (
    'Traceback (most recent call last):\n  File "flow.py", line 9, in train\n    load()\n'
    "KeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\n"
    'Traceback (most recent call last):\n  File "flow.py", line 11, in train\n'
    "    raise ValueError(f'bad shard {n}')\nmy_pkg.errors.ShardError: bad shard 7\n\nTask failed.\n"
)


def failure_event(
    step_key: str | None, error: SerializableErrorInfo | None, description: str = ""
) -> EventLogEntry:
    step = None
    if step_key is not None:
        user = UserFailureData(label="intentional-failure", description=description) if description else None
        step = DagsterEvent(
            event_type_value=DagsterEventType.STEP_FAILURE.value,
            job_name="TrainFlow",
            step_key=step_key,
            event_specific_data=StepFailureData(error=error, user_failure_data=user),
        )
    data = JobFailureData(
        error=None if step else error,
        failure_reason=RunFailureReason.STEP_FAILURE if step else RunFailureReason.UNEXPECTED_TERMINATION,
        first_step_failure_event=step,
    )
    event = DagsterEvent(DagsterEventType.RUN_FAILURE.value, job_name="TrainFlow", event_specific_data=data)
    return EventLogEntry(
        error_info=None, level=40, user_message="", run_id="r", timestamp=1.0, dagster_event=event
    )


def wrapped(inner: SerializableErrorInfo) -> SerializableErrorInfo:
    """How Dagster reports an exception raised by op code: its own error, the user's as cause."""
    return SerializableErrorInfo(
        "Error occurred while executing op", [], "DagsterExecutionStepExecutionError", inner
    )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # metaflow-dagster's op raised RuntimeError around the step's stderr: the user's exception
        # is the last of the (chained) traceback, module path dropped.
        (
            failure_event(
                "op_train",
                wrapped(SerializableErrorInfo(f"Command failed (exit 1):\n{STDERR}", [], "RuntimeError")),
            ),
            FailureDetails("step_failure", "train", "ShardError", "bad shard 7"),
        ),
        # metaflow-dagster keeps only the stderr's last 2000 characters: the traceback's header is
        # cut off, its frames and last line remain.
        (
            failure_event(
                "op_process",
                wrapped(
                    SerializableErrorInfo(
                        'Command failed (exit 1):\nn_step_function()\n  File "demo_support.py", line 17\n'
                        "    with open(path, 'a') as counter:\n"
                        "IsADirectoryError: [Errno 21] Is a directory: '/w/process.count'\n",
                        [],
                        "RuntimeError",
                    )
                ),
            ),
            FailureDetails(
                "step_failure",
                "process",
                "IsADirectoryError",
                "[Errno 21] Is a directory: '/w/process.count'",
            ),
        ),
        # A plain Python error in op code, no traceback text: its own class and message.
        (
            failure_event(
                "op_end[3]", wrapped(SerializableErrorInfo("MemoryError: out of memory", [], "MemoryError"))
            ),
            FailureDetails("step_failure", "end", "MemoryError", "out of memory"),
        ),
        # The resume job fails in its final op, naming each failed task: the first task's step and
        # exception.
        (
            failure_event(
                "TrainFlow_resume__finish",
                wrapped(
                    SerializableErrorInfo(
                        "2 task(s) of TrainFlow/dagster-1 failed; ...:\n"
                        f"dagster-1/train/1-0 exited with status 1:\n{STDERR}\n\n"
                        "dagster-1/score/1 exited with status 1:\nTraceback (most recent call last):\n"
                        "OSError: disk full\n",
                        [],
                        "Failure",
                    )
                ),
            ),
            FailureDetails("step_failure", "train", "ShardError", "bad shard 7"),
        ),
        # The run worker died: no step, Dagster's own error.
        (
            failure_event(None, SerializableErrorInfo("worker exited", [], "DagsterRunWorkerError")),
            FailureDetails("unexpected_termination", None, "DagsterRunWorkerError", "worker exited"),
        ),
    ],
    ids=["metaflow-dagster-op", "stderr-tail", "plain-error", "resume-job-finish", "worker-crash"],
)
def test_failure_details(entry: EventLogEntry, expected: FailureDetails) -> None:
    assert failure_details(entry) == expected


def test_step_name_of() -> None:
    assert step_name_of("op_process") == "process"
    assert step_name_of("op_body[3]") == "body"
    assert step_name_of("LinearFlow_resume__step_join") == "join"


def _log_lines(instance, run_id: str, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
    import logging
    import time

    for line in lines:
        instance.handle_new_event(
            EventLogEntry(
                error_info=None,
                level=logging.INFO,
                user_message=line,
                run_id=run_id,
                timestamp=time.time(),
                job_name="LinearFlow",
            )
        )


@pytest.mark.parametrize(
    ("noise_before", "found"),
    [(0, True), (30, True), (700, True), (5100, False)],
    ids=["first-event", "second-page", "third-page", "beyond-the-search"],
)
def test_metaflow_run_id_pages_through_the_log(noise_before: int, found: bool) -> None:
    from dagster import DagsterInstance

    from auto_resume.dagster.run_facts import metaflow_run_id

    instance = DagsterInstance.ephemeral()
    run_id = "0b5f1c3e-1111-4222-8333-944445555666"
    command = "$ python flow.py --quiet step start --run-id dagster-abc123 --task-id 1"
    _log_lines(instance, run_id, [f"noise {i}" for i in range(noise_before)] + [command, "after"])
    assert metaflow_run_id(instance, run_id) == ("dagster-abc123" if found else None)


def test_dagster_failure_data_still_has_the_fields_read() -> None:
    # run_facts reads these private classes by attribute, without importing them: a rename in
    # Dagster would silently turn every failure into "no details". Fail here instead.
    assert {"error", "failure_reason", "first_step_failure_event"} <= set(JobFailureData._fields)
    assert {"error", "user_failure_data"} <= set(StepFailureData._fields)
    assert {"cls_name", "message", "cause"} <= set(SerializableErrorInfo.__annotations__) | set(
        dir(SerializableErrorInfo)
    )
    assert "description" in UserFailureData._fields
