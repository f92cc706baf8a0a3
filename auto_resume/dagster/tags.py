"""Run tags auto-resume reads and writes; every one is namespaced ``auto_resume/``.

This module owns them: every other module (and the reference in ``docs/``) takes the names
and their meaning from ``TAGS``.
"""

from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "auto_resume/"


@dataclass(frozen=True)
class Tag:
    """One run tag: its key, the runs that carry it and what its value says."""

    key: str
    on: str
    value: str


ROOT_RUN_ID = PREFIX + "root_run_id"
PARENT_RUN_ID = PREFIX + "parent_run_id"
ORIGIN_METAFLOW_RUN_ID = PREFIX + "origin_metaflow_run_id"
ATTEMPT = PREFIX + "attempt"
SOURCE_JOB = PREFIX + "source_job"
PARENT_FAILURE = PREFIX + "parent_failure"
GAVE_UP = PREFIX + "gave_up"
OBSERVED = PREFIX + "observed"
OPT_OUT = PREFIX + "opt_out"
MANUAL = PREFIX + "manual"
RESUME_REQUESTED = PREFIX + "resume_requested"
RESUME_REQUEST = PREFIX + "resume_request"
DUPLICATE_OF = PREFIX + "duplicate_of"
FLOW = PREFIX + "flow"
CHANGES = PREFIX + "changes"
BREAKER = PREFIX + "breaker"
BREAKER_OPENED = PREFIX + "breaker_opened"
PARKED = PREFIX + "parked"
PARKED_CODE = PREFIX + "parked_code"
CODE_CHANGED = PREFIX + "code_changed"
# Values of PARKED: waiting for a code change (the value the sensor queries), and after.
PARKED_WAITING = "waiting"
PARKED_RESUMED = "resumed"
PARKED_EXPIRED = "expired"

TAGS: tuple[Tag, ...] = (
    Tag(ROOT_RUN_ID, "resume runs", "Dagster run id of the original failure (the lineage root)"),
    Tag(PARENT_RUN_ID, "resume runs", "Dagster run id of the failed run this resume answers"),
    Tag(ORIGIN_METAFLOW_RUN_ID, "resume runs", "Metaflow run id the resume clones from"),
    Tag(ATTEMPT, "resume runs", "1 for the first resume of a failure, 2 for the next..."),
    Tag(SOURCE_JOB, "resume runs", "the flow's own Dagster job"),
    Tag(PARENT_FAILURE, "resume runs", "fingerprint of the failure it answers"),
    Tag(GAVE_UP, "failed runs", "why auto-resume will not resume this run, in words"),
    Tag(OBSERVED, "failed runs", "observe mode: what auto-resume would have done, in words"),
    Tag(OPT_OUT, "any run", "`true`: auto-resume leaves the run alone"),
    Tag(MANUAL, "resume runs", "`true`: by `auto-resume resume`; `forced`: with `--force`"),
    Tag(
        RESUME_REQUESTED,
        "finished runs",
        "`manual` or `forced`: `auto-resume resume` asked the sensor to resume the run",
    ),
    Tag(
        RESUME_REQUEST,
        "finished runs",
        'that request: `{"run_id", "run_key", "from_step", "requested_at"}` (JSON)',
    ),
    Tag(
        DUPLICATE_OF,
        "resume runs",
        "the resume run of the same origin that made this one refuse to start (it is opted out)",
    ),
    Tag(FLOW, "jobs auto-resume builds", "the Metaflow flow the job runs or resumes"),
    Tag(
        CHANGES,
        "resume runs",
        'how it runs differently from its origin, and which policy settings asked: `{"with", '
        '"metaflow_tags", "max_runtime_seconds", "from_step", "because"}` (JSON)',
    ),
    Tag(BREAKER, "failed runs", "`opened`: this failure opened a storm breaker"),
    Tag(
        BREAKER_OPENED,
        "failed runs",
        'the breaker it opened: `{"breaker", "until", "reason"}` (JSON; `until` is POSIX time)',
    ),
    Tag(
        PARKED,
        "failed runs",
        "`waiting`: given up as deterministic, parked until the flow's code changes "
        "(`on_code_change: resume`); then `resumed`, or `expired` past max_failure_age_seconds",
    ),
    Tag(PARKED_CODE, "failed runs", "fingerprint of the flow's code when the failure was parked"),
    Tag(
        CODE_CHANGED,
        "resume runs",
        "the resume of a parked failure, launched because the flow's code changed: "
        "`<fingerprint when parked> -> <fingerprint now>`",
    ),
)

# Set by Dagster on a failed run that its own run retries will launch again.
DAGSTER_WILL_RETRY = "dagster/will_retry"
# Set by the daemon on a run a sensor created with a run key (its value); the daemon creates no
# second run with the same key for the same sensor.
DAGSTER_RUN_KEY = "dagster/run_key"
# Read by Dagster's run monitoring (run_monitoring in dagster.yaml): a run still at work after this
# many seconds is canceled and marked failed.
DAGSTER_MAX_RUNTIME = "dagster/max_runtime"


def attempt_of(run_tags: Mapping[str, str]) -> int:
    """The ``auto_resume/attempt`` of a run: 0 for an original run or a value that is not a number."""
    try:
        return int(run_tags.get(ATTEMPT, "0"))
    except ValueError:
        return 0
