"""Dagster runs as auto-resume reads them: which statuses mean "still going", and run queries.

Dagster's own status lists live in a private module (``dagster._core.storage.dagster_run``), so
the sets here are built on the public `DagsterRunStatus`; tests/test_runs.py fails when Dagster
adds a status, so that someone decides which side it belongs on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from auto_resume.core.decision import Situation
from auto_resume.dagster import tags
from auto_resume.policy.model import EffectiveFlowSettings

# A run in one of these has ended: it will not change status again.
FINISHED_STATUSES: frozenset[DagsterRunStatus] = frozenset(
    {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
)
# Queued, starting, running, canceling, suspended, or managed outside Dagster: still going.
NOT_FINISHED_STATUSES: frozenset[DagsterRunStatus] = frozenset(DagsterRunStatus) - FINISHED_STATUSES


def runs_by_id(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, DagsterRun]:
    """The runs of ``run_ids`` that exist, by id, in one query.

    Args:
        instance: The Dagster instance.
        run_ids: Run ids, repeats allowed.

    Returns:
        The runs found; a deleted run is missing.
    """
    if not run_ids:
        return {}
    return {run.run_id: run for run in instance.get_runs(RunsFilter(run_ids=list(set(run_ids))))}


def resumes_of(instance: DagsterInstance, run_id: str) -> list[DagsterRun]:
    """The resume runs answering ``run_id`` (tagged ``auto_resume/parent_run_id``), oldest first.

    The sensor's or a manual one (``auto-resume resume``): either way the failure is answered.
    """
    return resumes_by_parent(instance, [run_id]).get(run_id, [])


def resumes_by_parent(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, list[DagsterRun]]:
    """:func:`resumes_of` for many failed runs, in one query (a tick decides up to 200)."""
    if not run_ids:
        return {}
    found: dict[str, list[DagsterRun]] = {}
    # get_runs lists the newest first.
    for resume in reversed(instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: list(run_ids)}))):
        found.setdefault(resume.tags[tags.PARENT_RUN_ID], []).append(resume)
    return found


def resumes_in_flight(instance: DagsterInstance) -> Counter[str]:
    """Resume runs not finished yet, counted by the flow job they resume (``auto_resume/source_job``)."""
    runs = instance.get_runs(RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
    return Counter(run.tags[tags.SOURCE_JOB] for run in runs if tags.SOURCE_JOB in run.tags)


class InFlight:
    """Resume runs queued or running, counted once per tick (only when a cap needs it)."""

    def __init__(self, instance: DagsterInstance, cap: int | None) -> None:
        self._instance, self.cap = instance, cap
        self._counts: Counter[str] | None = None

    def counts(self) -> Counter[str]:
        """Resume runs in flight by flow job, read on first use."""
        if self._counts is None:
            self._counts = resumes_in_flight(self._instance)
        return self._counts

    def situation(self, job: str, rules: EffectiveFlowSettings, now: float, seen_at: float) -> Situation:
        """The moment and the load that :func:`decide` weighs for a failure of ``job``."""
        if self.cap is None and rules.max_resumes_in_flight is None:
            return Situation(now=now, first_seen_at=seen_at)
        counts = self.counts()
        return Situation(now, seen_at, sum(counts.values()), counts[job], self.cap)

    def add(self, job: str) -> None:
        """Count a resume of ``job`` requested during this tick."""
        if self._counts is not None:
            self._counts[job] += 1
