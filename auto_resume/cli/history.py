"""Resume lineages read back from a Dagster instance: what ``auto-resume history`` shows.

A lineage starts at an original failed run of a flow's job. Every resume run answering it, or a
failed resume of it, carries the ``auto_resume/root_run_id`` tag naming that original run, its
``auto_resume/attempt`` number and its ``auto_resume/parent_run_id``. A failure that auto-resume
refused outright (flow disabled, no Metaflow run id, ...) has no resume run, only the
``auto_resume/gave_up`` tag; it is a lineage of its own too.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    IntMetadataValue,
    MetadataValue,
    RunRecord,
    RunsFilter,
)
from pydantic import BaseModel, ConfigDict, Field

from auto_resume.dagster import naming, tags
from auto_resume.dagster.naming import step_name_of
from auto_resume.dagster.run_facts import metaflow_run_id
from auto_resume.dagster.runs import NOT_FINISHED_STATUSES

Outcome = Literal["succeeded", "failed", "running", "gave_up", "canceled"]

_PAGE_SIZE = 500


class StepCounts(BaseModel):
    """Tasks of one Metaflow step that a resume run cloned and executed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str = Field(description="Metaflow step name.")
    cloned: int = Field(description="Tasks copied from the origin run without running user code.")
    executed: int = Field(description="Tasks whose user code ran (again).")


class RunSummary(BaseModel):
    """One Dagster run of a lineage: the original failure (attempt 0) or a resume attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt: int = Field(description="0 for the original failed run, then 1, 2, ... for its resumes.")
    run_id: str = Field(description="Dagster run id.")
    job_name: str = Field(description="Dagster job of the run ('' when the run was deleted).")
    status: str = Field(
        description="Dagster run status (SUCCESS, FAILURE, STARTED...); NOT_FOUND if deleted."
    )
    created_at: float | None = Field(description="Unix time the run was created.")
    metaflow_run_id: str | None = Field(description="Metaflow run the Dagster run worked on, from its log.")
    origin_metaflow_run_id: str | None = Field(
        description="Metaflow run a resume cloned from (auto_resume/origin_metaflow_run_id)."
    )
    tasks_cloned: int | None = Field(description="Tasks cloned, all steps; None for the original run.")
    tasks_executed: int | None = Field(description="Tasks executed, all steps; None for the original run.")
    steps: tuple[StepCounts, ...] = Field(description="Per-step counts, in the order the steps finished.")
    gave_up: str | None = Field(description="Why auto-resume will not resume this run (auto_resume/gave_up).")
    breaker_opened: str | None = Field(
        default=None,
        description="The storm breaker this failure opened, if it opened one (auto_resume/breaker_opened).",
    )
    changes: dict[str, Any] | None = Field(
        default=None,
        description="How a resume ran differently from its origin, and the policy settings that asked "
        "(auto_resume/changes: with, metaflow_tags, max_runtime_seconds, from_step, because).",
    )


class Lineage(BaseModel):
    """An original failure, every resume attempt that followed it, and how it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root_run_id: str = Field(description="Dagster run id of the original failed run.")
    job_name: str = Field(description="The flow's own Dagster job.")
    outcome: Outcome = Field(description="How the newest run of the lineage stands.")
    reason: str | None = Field(description="For gave_up: why, from the auto_resume/gave_up tag.")
    original: RunSummary = Field(description="The original failed run.")
    attempts: tuple[RunSummary, ...] = Field(description="Resume runs, by attempt number.")


def read_lineages(instance: DagsterInstance, job: str | None = None, limit: int = 20) -> list[Lineage]:
    """The newest resume lineages of the instance, newest original failure first.

    Args:
        instance: The Dagster instance (run and event-log storage are read, nothing is written).
        job: Only lineages of this job (the flow's job or its ``<job>_resume``); all if None.
        limit: At most this many lineages.
    """
    roots = _root_run_ids(instance)
    if not roots:
        return []
    originals = {
        record.dagster_run.run_id: record
        for record in instance.get_run_records(RunsFilter(run_ids=sorted(roots)))
    }
    resumes_by_root = _resumes_by_root(instance, roots)
    lineages = []
    for root in _newest_first(roots, originals, resumes_by_root):
        resumes = resumes_by_root.get(root, [])
        job_name = _job_of(originals.get(root), resumes)
        if job is not None and job not in (job_name, f"{job_name}_resume"):
            continue
        lineages.append(_lineage(instance, root, job_name, originals.get(root), resumes))
        if len(lineages) >= limit:
            break
    return lineages


def step_counts(instance: DagsterInstance, run_id: str) -> tuple[StepCounts, ...]:
    """Per-step clone/execute counts of a resume run, from its step ops' output metadata.

    Each step op of a resume job records ``tasks_cloned`` and ``tasks_executed`` on its output
    (``auto_resume.dagster.resume_job``); an op without them (the first and last ops) is not a step.

    Args:
        instance: The Dagster instance (its event log is read).
        run_id: The resume run.

    Returns:
        One entry per step op that recorded counts, in the order their outputs were written.
    """
    found: list[StepCounts] = []
    cursor = None
    while True:
        connection = instance.get_records_for_run(
            run_id, cursor=cursor, of_type=DagsterEventType.STEP_OUTPUT, limit=_PAGE_SIZE
        )
        for record in connection.records:
            event = record.event_log_entry.dagster_event
            if event is None or event.step_key is None:
                continue
            metadata = event.step_output_data.metadata
            cloned, executed = _count(metadata, naming.TASKS_CLONED), _count(metadata, naming.TASKS_EXECUTED)
            if cloned is not None and executed is not None:
                found.append(StepCounts(step=step_name_of(event.step_key), cloned=cloned, executed=executed))
        if not connection.has_more:
            return tuple(found)
        cursor = connection.cursor


def _count(metadata: Mapping[str, MetadataValue], key: str) -> int | None:
    value = metadata.get(key)
    return value.value if isinstance(value, IntMetadataValue) else None


def _root_run_ids(instance: DagsterInstance) -> set[str]:
    roots: set[str] = set()
    for _key, values in instance.get_run_tags(tag_keys=[tags.ROOT_RUN_ID]):
        roots |= values
    # Failures given up on without any resume carry no root tag: they are roots themselves.
    for _key, reasons in instance.get_run_tags(tag_keys=[tags.GAVE_UP]):
        for run in instance.get_runs(RunsFilter(tags={tags.GAVE_UP: sorted(reasons)})):
            roots.add(run.tags.get(tags.ROOT_RUN_ID, run.run_id))
    return roots


def _resumes_by_root(instance: DagsterInstance, roots: set[str]) -> dict[str, list[RunRecord]]:
    by_root: dict[str, list[RunRecord]] = {}
    for record in instance.get_run_records(RunsFilter(tags={tags.ROOT_RUN_ID: sorted(roots)})):
        by_root.setdefault(record.dagster_run.tags[tags.ROOT_RUN_ID], []).append(record)
    for records in by_root.values():
        records.sort(key=lambda record: (_attempt(record), record.create_timestamp))
    return by_root


def _newest_first(
    roots: set[str], originals: dict[str, RunRecord], resumes: dict[str, list[RunRecord]]
) -> list[str]:
    def created(root: str) -> tuple[float, int]:
        record = originals.get(root) or next(iter(resumes.get(root, [])), None)
        if record is None:
            return (0.0, 0)
        # The storage id orders runs created within one timestamp tick.
        return (record.create_timestamp.timestamp(), record.storage_id)

    return sorted(roots, key=lambda root: (created(root), root), reverse=True)


def _lineage(
    instance: DagsterInstance,
    root: str,
    job_name: str,
    original: RunRecord | None,
    resumes: Sequence[RunRecord],
) -> Lineage:
    original_summary = _summary(instance, root, original, attempt=0, counted=False)
    attempts = tuple(
        _summary(instance, record.dagster_run.run_id, record, _attempt(record), counted=True)
        for record in resumes
    )
    outcome, reason = _outcome(attempts[-1] if attempts else original_summary)
    return Lineage(
        root_run_id=root,
        job_name=job_name,
        outcome=outcome,
        reason=reason,
        original=original_summary,
        attempts=attempts,
    )


def _summary(
    instance: DagsterInstance, run_id: str, record: RunRecord | None, attempt: int, counted: bool
) -> RunSummary:
    if record is None:
        return RunSummary(
            attempt=attempt,
            run_id=run_id,
            job_name="",
            status="NOT_FOUND",
            created_at=None,
            metaflow_run_id=None,
            origin_metaflow_run_id=None,
            tasks_cloned=None,
            tasks_executed=None,
            steps=(),
            gave_up=None,
        )
    run = record.dagster_run
    steps = step_counts(instance, run_id) if counted else ()
    return RunSummary(
        attempt=attempt,
        run_id=run_id,
        job_name=run.job_name,
        status=run.status.value,
        created_at=record.create_timestamp.timestamp(),
        metaflow_run_id=metaflow_run_id(instance, run_id),
        origin_metaflow_run_id=run.tags.get(tags.ORIGIN_METAFLOW_RUN_ID),
        tasks_cloned=sum(s.cloned for s in steps) if counted else None,
        tasks_executed=sum(s.executed for s in steps) if counted else None,
        steps=steps,
        gave_up=run.tags.get(tags.GAVE_UP),
        changes=_json_tag(run.tags.get(tags.CHANGES)),
        breaker_opened=(_json_tag(run.tags.get(tags.BREAKER_OPENED)) or {}).get("breaker"),
    )


def _json_tag(text: str | None) -> dict[str, Any] | None:
    try:
        found = json.loads(text) if text else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _outcome(newest: RunSummary) -> tuple[Outcome, str | None]:
    if newest.gave_up is not None:
        return "gave_up", newest.gave_up
    if newest.status == DagsterRunStatus.SUCCESS.value:
        return "succeeded", None
    if newest.status == DagsterRunStatus.CANCELED.value:
        return "canceled", None
    if newest.status in {status.value for status in NOT_FINISHED_STATUSES}:
        return "running", None
    # A failure not yet given up on: the sensor may still resume it on a later tick.
    return "failed", None


def _job_of(original: RunRecord | None, resumes: Sequence[RunRecord]) -> str:
    if original is not None:
        return original.dagster_run.job_name
    for record in resumes:
        if tags.SOURCE_JOB in record.dagster_run.tags:
            return record.dagster_run.tags[tags.SOURCE_JOB]
    return ""


def _attempt(record: RunRecord) -> int:
    return tags.attempt_of(record.dagster_run.tags)
