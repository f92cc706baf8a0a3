"""Tests for auto_resume.dagster.runs: the run-status sets, against the Dagster installed."""

from __future__ import annotations

from dagster import DagsterRunStatus

from auto_resume.dagster.runs import FINISHED_STATUSES, NOT_FINISHED_STATUSES


def test_every_dagster_status_is_on_one_side() -> None:
    # A status Dagster adds lands in NOT_FINISHED_STATUSES unseen: this list makes someone look.
    known = {"QUEUED", "NOT_STARTED", "MANAGED", "STARTING", "STARTED", "SUSPENDED"}
    known |= {"SUCCESS", "FAILURE", "CANCELING", "CANCELED"}
    # SUSPENDED is new in dagster 1.13.26; the oldest supported dagster (1.13.0) has the others.
    assert known - {"SUSPENDED"} <= {status.value for status in DagsterRunStatus} <= known
    assert FINISHED_STATUSES.isdisjoint(NOT_FINISHED_STATUSES)
    assert set(DagsterRunStatus) == FINISHED_STATUSES | NOT_FINISHED_STATUSES


def test_dagster_agrees_on_what_is_still_going() -> None:
    # Dagster's own list (private) leaves out MANAGED, runs an outside system drives: for
    # auto-resume they have not ended either.
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES as DAGSTER_NOT_FINISHED

    assert set(DAGSTER_NOT_FINISHED) == NOT_FINISHED_STATUSES - {DagsterRunStatus.MANAGED}
