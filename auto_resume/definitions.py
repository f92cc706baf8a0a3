"""The auto-resume code location, as ``workspace.yaml`` loads it.

``python_module: auto_resume.definitions``; the policy is ``$AUTO_RESUME_POLICY`` or
``./policy.yaml`` (the location's working directory). `build_definitions` says what an invalid
policy does to the location.
"""

from auto_resume.dagster.code_location import build_definitions

defs = build_definitions()
