"""Names inside the jobs auto-resume builds that other modules read back from a run.

The jobs write them (op names, the log line that names the new Metaflow run); failure facts and
``auto-resume history`` read them. Both sides import them from here.
"""

# The first line the first op of a resume or flow job logs: the Metaflow run id it creates.
RUN_ID_LOG_PREFIX = "auto-resume: metaflow_run_id="
# Infix of a step op's name: ``<job>__step_<step>`` ("step_" keeps step ops apart from the first
# op whatever the steps are called).
STEP_OP_INFIX = "__step_"
# The last op of a job: it fails the run when any task failed, so it is never the failed step.
FINISH_OP_SUFFIX = "__finish"


def finish_op_name(job_name: str) -> str:
    """The name of ``job_name``'s last op."""
    return f"{job_name}{FINISH_OP_SUFFIX}"


def step_op_name(job_name: str, step_name: str) -> str:
    """The name of the op that runs Metaflow step ``step_name`` in ``job_name``."""
    return f"{job_name}{STEP_OP_INFIX}{step_name}"


def step_name_of(step_key: str) -> str:
    """The Metaflow step of an op: ``op_train`` (metaflow-dagster), ``X_resume__step_train``."""
    key = step_key.split("[", 1)[0]  # dynamic outputs: op_body[3]
    if STEP_OP_INFIX in key:
        return key.split(STEP_OP_INFIX, 1)[1]
    return key.removeprefix("op_")


# Output metadata of every step op: how many of the step's tasks were cloned, executed, failed.
# ``auto-resume history`` and the demo read them back.
TASKS_CLONED = "tasks_cloned"
TASKS_EXECUTED = "tasks_executed"
TASKS_FAILED = "tasks_failed"
# And, for benchmarks and the curious, where a resumed step's own time went: reading the origin
# step to plan it, and cloning its finished tasks (while its other tasks ran).
ORIGIN_READ_SECONDS = "origin_read_seconds"
CLONE_SECONDS = "clone_seconds"
