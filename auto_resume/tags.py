"""Run tags auto-resume reads and writes; every one is namespaced ``auto_resume/``.

| tag | on | value |
|---|---|---|
| ``auto_resume/root_run_id`` | resume runs | Dagster run id of the original failure (the lineage root) |
| ``auto_resume/parent_run_id`` | resume runs | Dagster run id of the failed run this resume answers |
| ``auto_resume/origin_metaflow_run_id`` | resume runs | Metaflow run id the resume clones from |
| ``auto_resume/attempt`` | resume runs | 1 for the first resume of a failure, 2 for the next... |
| ``auto_resume/source_job`` | resume runs | the flow's own Dagster job |
| ``auto_resume/parent_failure`` | resume runs | fingerprint of the failure it answers |
| ``auto_resume/gave_up`` | failed runs | why auto-resume will not resume this run, in words |
| ``auto_resume/observed`` | failed runs | observe mode: what auto-resume would have done, in words |
| ``auto_resume/opt_out`` | any run | ``true``: auto-resume leaves the run alone |
| ``auto_resume/manual`` | resume runs | ``true``: by ``auto-resume resume``; ``forced``: with ``--force`` |
"""

PREFIX = "auto_resume/"
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

# Set by Dagster on a failed run that its own run retries will launch again.
DAGSTER_WILL_RETRY = "dagster/will_retry"
