"""Hostile run config for a resume job, typed into the Launchpad (here: `dagster job launch`).

Each value is rejected by the resume job's first op before any Metaflow command runs: the run
fails with a message naming the value, no step command is logged, nothing is written outside
the run, and the sensor records a give-up for it instead of freezing.
"""

from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster import tags
from tests.e2e.harness import ROOT, Deployment, wait_for_run
from tests.support.events import failure_messages
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

PWNED = Path("/tmp/auto-resume-pwned")

# (value, a fragment the failure message must contain)
HOSTILE = {
    "option": ("--help", "is not a Metaflow run id"),
    "path": ("../x", "is not a Metaflow run id"),
    "shell": (f"$(touch {PWNED})", "is not a Metaflow run id"),
    "huge": ("a" * 100_000, "is not a Metaflow run id"),
    "unknown run": ("dagster-000000000000", "no finished _parameters task"),
    # Well formed, but no run of this flow has it.
    "integer id": ("1", "no finished _parameters task"),
}


def _logged_commands(deployment: Deployment, run_id: str) -> list[str]:
    instance = deployment.instance()
    return [
        entry.user_message
        for entry in instance.all_logs(run_id)
        if (entry.user_message or "").startswith("$ ")
    ]


def test_hostile_origin_run_ids_are_rejected_before_any_command(deployment: Deployment) -> None:
    PWNED.unlink(missing_ok=True)
    launched = {
        name: deployment.launch_resume("auto_resume", "LinearFlow_resume", {"origin_run_id": value})
        for name, (value, _) in HOSTILE.items()
    }
    instance = deployment.instance()
    for name, run_id in launched.items():
        run = wait_for_run(instance, run_id)
        assert run.status == DagsterRunStatus.FAILURE, name
        message = failure_messages(deployment.instance(), run_id)
        assert HOSTILE[name][1] in message, f"{name}: {message[:500]}"
        assert len(message) < 5000, f"{name}: the message repeats the whole value"
        assert _logged_commands(deployment, run_id) == [], name
    assert not PWNED.exists()
    # None of these runs started a Metaflow run (the resume job's would be make_run_id(run id)).
    datastore = ROOT / ".metaflow" / "LinearFlow"
    for run_id in launched.values():
        assert not (datastore / make_run_id(run_id)).exists()
    # The sensor sees these failed resume runs, gives up on each (no Metaflow run started) and
    # goes on: it is not frozen.
    pending = set(launched.values())

    def all_given_up() -> bool:
        for run_id in list(pending):
            run = instance.get_run_by_id(run_id)
            if run is not None and tags.GAVE_UP in run.tags:
                pending.discard(run_id)
        return not pending

    def still_pending() -> str:
        return f"no give-up recorded for {sorted(pending)}\n{deployment.diagnostics()}"

    wait_until(all_given_up, 60, "a give-up recorded for each", still_pending, interval=1)
