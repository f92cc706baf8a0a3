"""Resume requests: ``auto-resume resume`` asks, ``auto_resume_sensor`` launches.

A manual resume does not create its run itself: it records a request on the finished run (tags
``auto_resume/resume_requested`` and ``auto_resume/resume_request``, written together by the
public ``instance.add_run_tags``), and the sensor, on its next tick, finds the open requests with
one tag query and turns each into a RunRequest. The request's run key is the sensor's own for
that failure, ``resume-of-<run id>`` (``resume-of-<run id>#<n>`` for the n-th resume of a run
that was resumed before, with ``--force``), so whatever the timing of a request and of the
sensor's own decision, the daemon's run-key check lets one run through: one failure, one resume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from dagster import DagsterInstance, DagsterRun, RunsFilter

from auto_resume.core.resume_changes import ResumeChanges
from auto_resume.dagster import tags

MANUAL = "manual"
FORCED = "forced"
# A request the sensor has not answered within this long is no longer looked at (the query of
# open requests reads runs updated since then, so it stays small however many runs were resumed).
REQUEST_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ResumeRequest:
    """One request to resume a finished run, as recorded on it."""

    run_id: str
    run_key: str
    from_step: str | None
    forced: bool
    requested_at: float
    # The policy's changes for the failure, and the command's own.
    changes: ResumeChanges = field(default_factory=ResumeChanges)


def resume_run_key(run_id: str, number: int = 1) -> str:
    """The run key of the ``number``-th resume of ``run_id``: the sensor's and the requests'."""
    return f"resume-of-{run_id}" if number == 1 else f"resume-of-{run_id}#{number}"


def record_request(instance: DagsterInstance, request: ResumeRequest) -> None:
    """Record ``request`` on its run; the sensor answers it on its next tick.

    Both tags are written by one ``add_run_tags`` call; a later request replaces an earlier one.
    """
    detail = {key: value for key, value in asdict(request).items() if key not in ("forced", "changes")}
    if request.changes:
        detail["changes"] = json.loads(request.changes.as_json())
    instance.add_run_tags(
        request.run_id,
        {
            tags.RESUME_REQUESTED: FORCED if request.forced else MANUAL,
            tags.RESUME_REQUEST: json.dumps(detail, sort_keys=True),
        },
    )


def read_request(run: DagsterRun) -> ResumeRequest | None:
    """The request recorded on ``run``, or None.

    None too for a request that names another run: Dagster copies a run's tags to its
    re-executions, and a copied request is not a request for the copy.
    """
    kind = run.tags.get(tags.RESUME_REQUESTED)
    if kind not in (MANUAL, FORCED):
        return None
    try:
        detail = json.loads(run.tags.get(tags.RESUME_REQUEST, ""))
        request = ResumeRequest(
            run_id=str(detail["run_id"]),
            run_key=str(detail["run_key"]),
            from_step=str(detail["from_step"]) if detail.get("from_step") else None,
            forced=kind == FORCED,
            requested_at=float(detail["requested_at"]),
            changes=_changes(detail.get("changes") or {}),
        )
    except (ValueError, TypeError, KeyError):
        return None
    return request if request.run_id == run.run_id else None


def _changes(data: dict[str, object]) -> ResumeChanges:
    def texts(key: str) -> tuple[str, ...]:
        value = data.get(key) or ()
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    runtime = data.get("max_runtime_seconds")
    return ResumeChanges(
        with_specs=texts("with"),
        metaflow_tags=texts("metaflow_tags"),
        max_runtime_seconds=runtime if isinstance(runtime, int) else None,
        from_step=str(data["from_step"]) if data.get("from_step") else None,
        because=texts("because"),
    )


def open_requests(
    instance: DagsterInstance, now: float | None = None
) -> list[tuple[DagsterRun, ResumeRequest]]:
    """Runs with a request made in the last ``REQUEST_TTL_SECONDS``, and their requests, in one query.

    Answered ones included: whether a request is answered is :func:`is_answered`'s question.
    """
    now = time.time() if now is None else now
    since = datetime.fromtimestamp(now - REQUEST_TTL_SECONDS, tz=UTC)
    runs = instance.get_runs(RunsFilter(tags={tags.RESUME_REQUESTED: [MANUAL, FORCED]}, updated_after=since))
    found = []
    for run in reversed(runs):  # oldest first
        request = read_request(run)
        if request is not None and request.requested_at >= now - REQUEST_TTL_SECONDS:
            found.append((run, request))
    return found


def is_answered(request: ResumeRequest, resumes: Sequence[DagsterRun]) -> bool:
    """Whether one of ``resumes`` (the resume runs of the request's run) has the request's run key."""
    return any(run.tags.get(tags.DAGSTER_RUN_KEY) == request.run_key for run in resumes)


def run_with_key(instance: DagsterInstance, run_key: str) -> DagsterRun | None:
    """The run the sensor created with ``run_key``, if there is one."""
    runs = instance.get_runs(RunsFilter(tags={tags.DAGSTER_RUN_KEY: run_key}), limit=1)
    return runs[0] if runs else None


def wait_for_answer(
    instance: DagsterInstance, run_key: str, timeout: float, interval: float = 0.5
) -> DagsterRun | None:
    """The run created with ``run_key``, polled for up to ``timeout`` seconds; None if none yet."""
    deadline = time.monotonic() + timeout
    while True:
        run = run_with_key(instance, run_key)
        if run is not None or time.monotonic() >= deadline:
            return run
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
