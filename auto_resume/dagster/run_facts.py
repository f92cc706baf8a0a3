"""Facts about a failed Dagster run, read from the instance's run and event-log storage."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from dagster import DagsterEventType, DagsterInstance, DagsterRun, EventLogEntry, EventLogRecord

from auto_resume.core.decision import FailedRun
from auto_resume.core.run_ids import run_id_from_command_line
from auto_resume.dagster import tags
from auto_resume.dagster.naming import FINISH_OP_SUFFIX, RUN_ID_LOG_PREFIX, step_name_of

# Event records read per storage query while looking for the Metaflow run id. The id is logged
# before the first Metaflow command runs (about the 10th event), so a small first page nearly
# always holds it: on PostgreSQL a first page of 200 costs a sort of the whole run's events.
_FIRST_PAGE_SIZE = 25
_PAGE_SIZE = 500
# Events searched at most: a run that logged no command line in its first events never started
# a Metaflow step (it failed before, or is not a Metaflow job), however long its log.
_MAX_EVENTS_SEARCHED = 5000
# The last line of a Python traceback: "module.ClassName: message" (or a bare class name).
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")
_TRACEBACK = "Traceback (most recent call last):"
_FRAME = '\n  File "'  # a traceback frame; the header may have been cut off with the stderr's head
# How the resume job reports one failed task: "<run>/<step>/<task> exited with status 1:", or
# "<run>/<step>/<task> could not be cloned: ..." when copying it from the origin failed.
_TASK_FAILED = re.compile(r"^[^\s/]+/(\w+)/\S+ (?:exited with status|could not be cloned)", re.MULTILINE)
# The resume job's last op, which fails the run when tasks failed (resume_job._finish_op).


_END_EVENTS = {DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_CANCELED}


class ErrorInfo(Protocol):
    """What is read of a Dagster error (``SerializableErrorInfo``): its class, message and cause.

    The failure details of a RUN_FAILURE event (``JobFailureData``, ``StepFailureData``) are
    classes of Dagster's private modules; the public ``DagsterEvent.event_specific_data`` holds
    them. They are read here by attribute, never imported, and tests/test_run_facts.py checks
    that Dagster's classes still have the fields read (``error``, ``failure_reason``,
    ``first_step_failure_event``, ``user_failure_data``).
    """

    @property
    def cls_name(self) -> str | None: ...

    @property
    def message(self) -> str: ...

    @property
    def cause(self) -> ErrorInfo | None: ...


@dataclass(frozen=True)
class _Described:
    """A ``Failure(description=...)`` raised by an op, read as an error of class ``Failure``."""

    message: str
    cls_name: str = "Failure"
    cause: None = None


@dataclass(frozen=True)
class FailureDetails:
    """What failed, from a run's failure event."""

    reason: str | None = None  # Dagster's RunFailureReason, lower-cased
    step_name: str | None = None
    exception_class: str | None = None
    message: str = ""


def metaflow_run_id(instance: DagsterInstance, run_id: str) -> str | None:
    """The Metaflow run id a Dagster run worked on, from its event log.

    metaflow-dagster ops log each command line (``$ python flow.py ... --run-id dagster-...``);
    auto-resume's resume jobs log ``auto-resume: metaflow_run_id=...``. Pages through the log and
    stops at the first match instead of loading every event; gives up after the first 5,000.
    """
    cursor = None
    searched = 0
    while searched < _MAX_EVENTS_SEARCHED:
        limit = _FIRST_PAGE_SIZE if cursor is None else _PAGE_SIZE
        connection = instance.get_records_for_run(run_id, cursor=cursor, limit=limit)
        searched += limit
        for record in connection.records:
            message = record.event_log_entry.user_message or ""
            if message.startswith(RUN_ID_LOG_PREFIX):
                return message[len(RUN_ID_LOG_PREFIX) :].split()[0]
            if message.startswith("$ "):
                found = run_id_from_command_line(message.splitlines()[0])
                if found:
                    return found
        if not connection.has_more:
            return None
        cursor = connection.cursor
    return None


def user_exception(error: ErrorInfo) -> tuple[str, str]:
    """The user's exception class and message behind a Dagster error.

    Follows ``cause`` to the innermost error (Dagster wraps user code errors). When its message
    holds a Python traceback (a Metaflow step's stderr, as metaflow-dagster and the resume job
    report it, often cut to its tail), the traceback's last exception is the user's, not the
    ``RuntimeError`` around it; with several failed tasks in one message, the first task's.
    """
    while error.cause is not None:
        error = error.cause
    name, message = (error.cls_name or "").rsplit(".", 1)[-1], error.message or ""
    tasks = list(_TASK_FAILED.finditer(message))
    segment = message
    if tasks:
        end = tasks[1].start() if len(tasks) > 1 else len(message)
        segment = message[tasks[0].end() : end]
    if _TRACEBACK in segment:
        segment = segment.split(_TRACEBACK, 1)[1]
    elif _FRAME not in segment:
        return name, message.removeprefix(f"{error.cls_name}: ").strip()
    found = None
    for line in segment.splitlines():
        match = _EXCEPTION_LINE.match(line)  # not indented: traceback frames are
        if match:
            found = match
    if found is None:
        return name, message
    return found.group(1).rsplit(".", 1)[-1], (found.group(2) or "").strip()


def _failed_step(step_key: str, message: str) -> str:
    """The Metaflow step of the op that failed; for the resume job's final op, of its first task."""
    if step_key.split("[", 1)[0].endswith(FINISH_OP_SUFFIX):
        match = _TASK_FAILED.search(message)
        if match:
            return match.group(1)
    return step_name_of(step_key)


def failure_details(entry: EventLogEntry) -> FailureDetails:
    """What failed, from a RUN_FAILURE event: reason, first failed step and its exception."""
    event = entry.dagster_event
    if event is None or event.event_type != DagsterEventType.RUN_FAILURE:
        return FailureDetails(message=entry.user_message or "")
    data: Any = event.event_specific_data  # JobFailureData, read by attribute (see ErrorInfo)
    failure_reason = getattr(data, "failure_reason", None)
    reason = failure_reason.value.lower() if failure_reason is not None else None
    step = getattr(data, "first_step_failure_event", None)
    step_data: Any = step.event_specific_data if step is not None else None  # StepFailureData
    error: ErrorInfo | None = getattr(step_data, "error", None) if step_data else getattr(data, "error", None)
    user_failure = getattr(step_data, "user_failure_data", None)
    if user_failure is not None:
        # `raise Failure(description=...)` (the resume job does): the description is the message.
        description = user_failure.description or ""
        if error is None or _TRACEBACK in description:
            error = _Described(description)
    exception_class, message = (
        user_exception(error) if error is not None else (None, entry.user_message or "")
    )
    innermost = error
    while innermost is not None and innermost.cause is not None:
        innermost = innermost.cause
    raw = (innermost.message or "") if innermost is not None else ""
    return FailureDetails(
        reason=reason,
        step_name=_failed_step(step.step_key, raw) if step is not None and step.step_key else None,
        exception_class=exception_class,
        message=message,
    )


def end_event(instance: DagsterInstance, run_id: str) -> EventLogRecord | None:
    """The run's last RUN_FAILURE, RUN_SUCCESS or RUN_CANCELED event, if it has one."""
    records = instance.get_records_for_run(run_id, of_type=_END_EVENTS, limit=1, ascending=False).records
    return records[0] if records else None


def failed_run_facts(instance: DagsterInstance, run: DagsterRun, failure: EventLogEntry) -> FailedRun:
    """Everything :func:`auto_resume.core.decision.decide` needs about ``run``.

    Args:
        instance: The Dagster instance.
        run: The failed run.
        failure: Its RUN_FAILURE event.
    """
    run_tags = run.tags
    attempt = tags.attempt_of(run_tags)
    details = failure_details(failure)
    return FailedRun(
        run_id=run.run_id,
        job_name=run.job_name,
        metaflow_run_id=metaflow_run_id(instance, run.run_id),
        root_run_id=run_tags.get(tags.ROOT_RUN_ID),
        attempt=attempt,
        will_retry=run_tags.get(tags.DAGSTER_WILL_RETRY) == "true",
        opted_out=run_tags.get(tags.OPT_OUT, "").lower() == "true",
        failed_at=failure.timestamp,
        failure_reason=details.reason,
        step_name=details.step_name,
        exception_class=details.exception_class,
        message=details.message,
        parent_failure=run_tags.get(tags.PARENT_FAILURE),
    )
