"""Names inside the jobs auto-resume builds that other modules read back from a run.

The jobs write them (op names, the log line that names the new Metaflow run); failure facts and
``auto-resume history`` read them. Both sides import them from here.
"""

# The first line the first op of a resume or flow job logs: the Metaflow run id it creates.
RUN_ID_LOG_PREFIX = "auto-resume: metaflow_run_id="
# The last op of a job: it fails the run when any task failed, so it is never the failed step.
FINISH_OP_SUFFIX = "__finish"


def finish_op_name(job_name: str) -> str:
    """The name of ``job_name``'s last op."""
    return f"{job_name}{FINISH_OP_SUFFIX}"
