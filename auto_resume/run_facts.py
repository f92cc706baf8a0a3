"""Facts about a failed Dagster run, read from the instance's run and event-log storage."""

from __future__ import annotations

from dagster import DagsterInstance, DagsterRun

from auto_resume import tags
from auto_resume.decision import FailedRun
from auto_resume.metaflow_access import run_id_from_command_line
from auto_resume.resume_job import RUN_ID_LOG_PREFIX

# Event records read per storage query while looking for the Metaflow run id. The id is logged
# before the first Metaflow command runs, so the first page nearly always holds it.
_PAGE_SIZE = 200


def metaflow_run_id(instance: DagsterInstance, run_id: str) -> str | None:
    """The Metaflow run id a Dagster run worked on, from its event log.

    metaflow-dagster ops log each command line (``$ python flow.py ... --run-id dagster-...``);
    auto-resume's resume jobs log ``auto-resume: metaflow_run_id=...``. Pages through the log and
    stops at the first match instead of loading every event.
    """
    cursor = None
    while True:
        connection = instance.get_records_for_run(run_id, cursor=cursor, limit=_PAGE_SIZE)
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


def failed_run_facts(instance: DagsterInstance, run: DagsterRun) -> FailedRun:
    """Everything :func:`auto_resume.decision.decide` needs about ``run``."""
    run_tags = run.tags
    try:
        attempt = int(run_tags.get(tags.ATTEMPT, "0"))
    except ValueError:
        attempt = 0
    return FailedRun(
        run_id=run.run_id,
        job_name=run.job_name,
        metaflow_run_id=metaflow_run_id(instance, run.run_id),
        root_run_id=run_tags.get(tags.ROOT_RUN_ID),
        attempt=attempt,
        will_retry=run_tags.get(tags.DAGSTER_WILL_RETRY) == "true",
        opted_out=run_tags.get(tags.OPT_OUT, "").lower() == "true",
    )
