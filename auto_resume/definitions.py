"""The auto-resume code location, as ``workspace.yaml`` loads it.

``python_module: auto_resume.definitions``; the policy is ``$AUTO_RESUME_POLICY`` or
``./policy.yaml`` (the location's working directory). `build_definitions` says what a flow that
cannot be loaded and an invalid policy do to the location: while the file is invalid, the
location is built from the last good policy kept in the instance of ``$DAGSTER_HOME``.
"""

from auto_resume.dagster.code_location import build_definitions
from auto_resume.dagster.policy_store import last_good_from_home

defs = build_definitions(fall_back=last_good_from_home)
