"""The auto-resume code location, as ``workspace.yaml`` loads it.

``python_module: auto_resume.definitions``; the policy is ``$AUTO_RESUME_POLICY`` or
``./policy.yaml`` (the location's working directory).
"""

from auto_resume.dagster.code_location import build_definitions

# Strict: with an invalid policy the location fails to load and the sensor's cursor waits in the
# instance. (A salvaged location would watch a stale flow list until the next reload, and could
# skip failures of flows it does not know.)
defs = build_definitions()
