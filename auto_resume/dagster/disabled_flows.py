"""Flows of the policy that the code location could not load: disabled alone, and said so.

A definitions file that is missing, is not Python, or is not a metaflow-dagster file, a flow
file that does not import, or a flow auto-resume refuses (``UnsupportedFlowError``) gives that
flow no resume job; the other flows load. Every tick of ``auto_resume_sensor`` names each
disabled flow, and a failure of its job, read once from the failure stream, is noted as not
resumed, with why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterRun


@dataclass(frozen=True)
class DisabledFlow:
    """One policy entry whose flow has no resume job, and why."""

    field: str  # its policy field, e.g. flows[2].definitions_file
    file: Path
    reason: str  # what is wrong and how to fix it
    refused: bool  # True: a flow auto-resume cannot resume; False: a file that cannot be read
    job_names: tuple[str, ...] = ()  # its job and resume job, when they could be read

    @property
    def kind(self) -> str:
        """``refused`` or ``broken``."""
        return "refused" if self.refused else "broken"

    def line(self) -> str:
        """One line: the field, the file, what and the fix."""
        return f"{self.field}: {self.reason}"


def tick_notes(disabled: Sequence[DisabledFlow]) -> list[str]:
    """One note per disabled flow, for every tick."""
    return [f"flow disabled ({flow.kind}, not resumed): {flow.line()}" for flow in disabled]


def failure_notes(disabled: Sequence[DisabledFlow], runs: Iterable[DagsterRun | None]) -> list[str]:
    """A note for each failed run of a disabled flow's job: not resumed, and why."""
    by_job = {job: flow for flow in disabled for job in flow.job_names}
    return [
        f"run {run.run_id} ({run.job_name}): not resumed: its flow is disabled ({by_job[run.job_name].field})"
        for run in runs
        if run is not None and run.job_name in by_job
    ]


def description(disabled: Sequence[DisabledFlow]) -> str:
    """What the sensor's description adds in the UI: the disabled flows, or nothing."""
    if not disabled:
        return ""
    return " Disabled flows (not resumed until fixed and reloaded): " + "; ".join(
        f"{flow.kind}: {flow.line()}" for flow in disabled
    )
