"""The storm breaker on the real daemon: a burst of identical failures across flows.

The failed runs are made through the instance API (tests/support/failed_runs.py): the sensor
cannot tell them from runs that executed. Their resume runs fail at once (there is no such
Metaflow run), with another fingerprint, and with ``max_attempts: 1`` are given up.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunsFilter

from auto_resume.dagster import tags
from auto_resume.dagster.runs import resumes_by_parent
from tests.e2e.harness import ORIGIN_WATCH_BACKOFF, Deployment, wait_for_resume_of, wait_for_run
from tests.support.failed_runs import create_failed_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

STORM = {"exception": "ConnectionError", "message": "database is down (host 10.0.0.7)"}
COOLDOWN = 40


@contextmanager
def breaker_policy(deployment: Deployment, hook_file: Path) -> Iterator[None]:
    original = deployment.policy_file.read_text()
    hook = f"[sh, -c, 'echo \"$AUTO_RESUME_EVENT $AUTO_RESUME_RUN_ID\" >> {hook_file}']"
    breaker = (
        f"breaker:\n  failures: 3\n  window_seconds: 600\n  cooldown_seconds: {COOLDOWN}\n"
        f"  on_open: {{command: {hook}}}\n"
    )
    changed = original.replace("version: 1\n", f"version: 1\n{breaker}", 1)
    changed = changed.replace("defaults:\n  max_attempts: 2\n", "defaults:\n  max_attempts: 1\n", 1)
    # No backoff: with one, whether the first two of the storm are due on the tick that reads the
    # third depends on when that tick comes, and one still waiting then is held by the breaker.
    # (These runs have no Metaflow run for OriginWatch to snapshot, so its backoff is not needed.)
    assert ORIGIN_WATCH_BACKOFF in changed, "the session policy changed: update breaker_policy"
    changed = changed.replace(ORIGIN_WATCH_BACKOFF, "", 1)
    deployment.policy_file.write_text(changed)
    try:
        yield
    finally:
        deployment.policy_file.write_text(original)


def opened(instance: DagsterInstance, run_ids: list[str]) -> list[str]:
    runs = instance.get_runs(RunsFilter(run_ids=run_ids, tags={tags.BREAKER: "opened"}))
    return [run.run_id for run in runs]


def gave_up(instance: DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and tags.GAVE_UP in run.tags


def test_a_burst_opens_the_breaker_once_and_one_resume_is_tried_after_the_cooldown(
    deployment: Deployment, tmp_path: Path
) -> None:
    instance = deployment.instance()
    hook_file = tmp_path / "hook.txt"
    with breaker_policy(deployment, hook_file):
        storm = [create_failed_run(instance, job, **STORM) for job in ("LinearFlow", "BranchFlow") * 3]
        other = create_failed_run(instance, "BranchFlow", exception="ValueError", message="bad input")
        # Another fingerprint is resumed throughout.
        wait_for_resume_of(instance, other, deployment=deployment)
        (opener,) = wait_until(lambda: opened(instance, storm), 60, "no breaker opening recorded")
        assert opener == storm[2]  # the third of three within the window
        assert hook_file.read_text() == f"breaker_opened {opener}\n"
        # The two before it were resumed (failures - 1); none after it.
        for run_id in storm[:2]:
            wait_for_resume_of(instance, run_id, deployment=deployment)
        # (In either order: the sensor submits a tick's resume runs on several threads.)
        resumed = {r for r, runs in resumes_by_parent(instance, storm).items() if runs}
        assert resumed == set(storm[:2]), f"storm {storm}\n" + deployment.diagnostics()
        # explain says why a held failure waits.
        shown = deployment.cli("explain", storm[3])
        expected = "decision: wait: storm breaker all flows: fingerprint"
        assert expected in shown.stdout, shown.stdout + shown.stderr

        # After the cooldown one resume is tried; the others wait until it has ended.
        def probed() -> list[str] | None:
            answered = [r for r, runs in resumes_by_parent(instance, storm).items() if runs]
            return answered if len(answered) > 2 else None

        late = "no resume tried after the cooldown"
        answered = wait_until(probed, COOLDOWN + 60, late, deployment.diagnostics)
        assert len(answered) == 3
        (probe_parent,) = set(answered) - set(storm[:2])
        probe = wait_for_run(instance, wait_for_resume_of(instance, probe_parent).run_id)
        # It failed in another way (no such Metaflow run): the breaker closes, the rest go on.
        for run_id in storm:
            wait_for_resume_of(instance, run_id, timeout=120, deployment=deployment)
        probe_record = instance.get_run_record_by_id(probe.run_id)
        assert probe_record is not None and probe_record.end_time is not None
        rest = [runs[0] for r, runs in resumes_by_parent(instance, storm).items() if r not in answered]
        for run in rest:
            record = instance.get_run_record_by_id(run.run_id)
            assert record is not None and record.create_timestamp.timestamp() >= probe_record.end_time
        # One opening of the storm's breaker, one hook call. (The resumes here all fail alike, on
        # a Metaflow run that does not exist: a storm of their own, which may open another.)
        calls = [line.split() for line in hook_file.read_text().splitlines()]
        assert [call for call in calls if call[1] in storm] == [["breaker_opened", opener]]
        # history shows which failure opened it (once its lineage has a resume).
        history = deployment.cli("history", "LinearFlow").stdout  # the opener is a LinearFlow run
        opener_line = next(line for line in history.splitlines() if f"original   {opener}" in line)
        assert "opened storm breaker all flows: fingerprint" in opener_line, history
        # Every resume of the test ends given up (max_attempts 1) before the policy goes back.
        resumes = [runs[0].run_id for runs in resumes_by_parent(instance, [*storm, other]).values()]
        for run_id in resumes:
            wait_for_run(instance, run_id)
            wait_until(lambda run_id=run_id: gave_up(instance, run_id), 60, f"resume {run_id} not given up")
