"""The policy's hooks: tell someone that a failed run will not be resumed (``on_give_up``) or
that a storm breaker opened (``breaker.on_open``).

Each is called once per event, right after the event is recorded on the run. A hook that fails
or hangs is logged and never retried: the record on the run is what counts, and a broken hook
must not hold up the sensor.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
from collections.abc import Callable, Mapping

from auto_resume.policy.settings import Hook

_log = logging.getLogger(__name__)


def give_up_values(run_id: str, job_name: str, reason: str, root_run_id: str, attempt: int) -> dict[str, str]:
    """What a hook is told, as ``AUTO_RESUME_*`` environment variable names and values."""
    return {
        "AUTO_RESUME_RUN_ID": run_id,
        "AUTO_RESUME_JOB_NAME": job_name,
        "AUTO_RESUME_REASON": reason,
        "AUTO_RESUME_ROOT_RUN_ID": root_run_id,
        "AUTO_RESUME_ATTEMPT": str(attempt),
    }


def call_hook(hook: Hook, values: Mapping[str, str], field: str) -> str | None:
    """Runs the hook; returns None on success, else what went wrong (also logged).

    Args:
        hook: The policy's ``on_give_up`` or a breaker's ``on_open``.
        values: ``AUTO_RESUME_*`` names and values (`give_up_values` for ``on_give_up``):
            environment of the command, or the callable's argument.
        field: The hook's field in the policy, to name it in the problem.
    """
    try:
        if hook.command is not None:
            result = subprocess.run(
                list(hook.command),
                env={**os.environ, **values},
                capture_output=True,
                text=True,
                timeout=hook.timeout_seconds,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"exit status {result.returncode}: {result.stderr.strip()[-500:]}")
        else:
            assert hook.callable is not None
            module_name, name = hook.callable.split(":")
            function: Callable[[dict[str, str]], object] = getattr(importlib.import_module(module_name), name)
            function(dict(values))
    except Exception as exc:
        problem = f"{field} hook failed for run {values.get('AUTO_RESUME_RUN_ID')}: {exc}"
        _log.warning(problem)
        return problem
    return None
