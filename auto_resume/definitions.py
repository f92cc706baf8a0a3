"""The auto-resume code location, as ``workspace.yaml`` loads it.

``python_module: auto_resume.definitions``; the policy is ``$AUTO_RESUME_POLICY`` or
``./policy.yaml`` (the location's working directory).
"""

from auto_resume.code_location import build_definitions

# Not strict: an invalid policy at a reload keeps the location loaded and fails the sensor's
# ticks with the message (auto-resume validate checks a file strictly).
defs = build_definitions(strict=False)
