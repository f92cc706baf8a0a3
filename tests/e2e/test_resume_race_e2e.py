"""A manual resume racing the sensor's own decision never makes two resume runs of one failure.

On the session's deployment (real ``dagster-daemon``, PostgreSQL, the sensor ticking every 5 s,
resumes due 4 s after a failure), 24 failed LinearFlow runs are made through the instance API
(``create_failed_run``: milliseconds each, the event log the sensor reads). Each one is resumed
by hand while the sensor is about to resume it on its own:

- 10 requests are recorded the instant a sensor tick starts after the failures are due (the
  tick that resumes them on its own is evaluating while the requests are written);
- 10 are spread over the seconds around that tick, one every 1.5 s from 2 s after the failures;
- 4 are real ``auto-resume resume`` commands started 1 s after their failures, so that their own
  start-up lands them around the due tick.

Then, for every failure, exactly one run carries its ``auto_resume/parent_run_id``: the sensor's
run key ``resume-of-<failed run id>``, attempt 1, tagged ``auto_resume/manual`` when the request
won and not when the sensor did; every command reports that run (or, having seen it before
recording anything, refuses as "already resumed"). The Metaflow origin is one finished
LinearFlow run shared by all failures, so a resume clones everything and runs no user code: the
first resume run succeeds, the origin guard of the resume job refuses the others.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from dagster import DagsterRun, RunsFilter

from auto_resume.cli.explain import explain_run
from auto_resume.cli.submit import ManualResume, prepare_resume, request_resume
from auto_resume.dagster import tags
from tests.e2e.harness import ROOT, Deployment, sensor_ticks, wait_for_ticks
from tests.support.failed_runs import create_failed_run
from tests.support.linear_origin import example_linear_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

LINEAR_DEFS = ROOT / "examples" / "generated" / "linear_flow_dagster.py"
DUE_AFTER_S = 4.0  # the session policy's backoff before a first resume (harness.ORIGIN_WATCH_BACKOFF)


@pytest.fixture(scope="module")
def finished_origin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LinearFlow run that finished, by Metaflow's own runtime, in the deployment's datastore."""
    base = tmp_path_factory.mktemp("origin")
    return example_linear_run(base, LINEAR_DEFS, user="auto-resume")


def _fail(deployment: Deployment, origin: str, count: int) -> tuple[list[str], float]:
    instance = deployment.instance()
    started = time.time()
    return [create_failed_run(instance, "LinearFlow", metaflow_run_id=origin) for _ in range(count)], started


def _prepare(deployment: Deployment, run_ids: list[str]) -> list[ManualResume]:
    """What `auto-resume resume` decides before it records anything (explain, then prepare)."""
    instance = deployment.instance()
    return [
        prepare_resume(explain_run(instance, deployment.policy_file, run_id), None, force=False)
        for run_id in run_ids
    ]


def _fire(deployment: Deployment, manual: ManualResume, answers: dict[str, str | None]) -> None:
    answer = request_resume(deployment.instance(), manual, wait=60)
    answers[manual.request.run_id] = answer.run_id if answer is not None else None


def _at(moments: list[float], action: Callable[[int], None]) -> list[threading.Thread]:
    """Run ``action(i)`` in a thread of its own at POSIX time ``moments[i]``."""

    def later(index: int) -> None:
        time.sleep(max(0.0, moments[index] - time.time()))
        action(index)

    threads = [threading.Thread(target=later, args=(i,)) for i in range(len(moments))]
    for thread in threads:
        thread.start()
    return threads


def _at_tick_start(deployment: Deployment, origin: str, answers: dict[str, str | None]) -> list[str]:
    run_ids, failed_at = _fail(deployment, origin, 5)
    manuals = _prepare(deployment, run_ids)
    instance = deployment.instance()
    due = failed_at + DUE_AFTER_S

    def tick_started() -> bool:
        return any(tick.timestamp >= due for tick in sensor_ticks(instance, after=due - 1))

    wait_until(tick_started, 30, "no sensor tick after the failures were due", interval=0.02)
    now = time.time()
    for thread in _at([now] * len(manuals), lambda i: _fire(deployment, manuals[i], answers)):
        thread.join()
    return run_ids


def _spread(deployment: Deployment, origin: str, answers: dict[str, str | None]) -> list[str]:
    run_ids, failed_at = _fail(deployment, origin, 5)
    manuals = _prepare(deployment, run_ids)
    moments = [failed_at + 2.0 + 1.5 * i for i in range(len(manuals))]
    for thread in _at(moments, lambda i: _fire(deployment, manuals[i], answers)):
        thread.join()
    return run_ids


def _commands(deployment: Deployment, origin: str, outcomes: dict[str, Any]) -> list[str]:
    run_ids, failed_at = _fail(deployment, origin, 4)

    def command(index: int) -> None:
        run_id = run_ids[index]
        result = deployment.cli("resume", run_id, "--json", "--wait", "60")
        outcomes[run_id] = (result.returncode, json.loads(result.stdout))

    for thread in _at([failed_at + 1.0] * len(run_ids), command):
        thread.join()
    return run_ids


def _resumes(deployment: Deployment, run_id: str) -> list[DagsterRun]:
    return deployment.instance().get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: run_id}))


def test_manual_resumes_racing_the_sensor_make_one_run_per_failure(
    deployment: Deployment, finished_origin: str
) -> None:
    answers: dict[str, str | None] = {}
    outcomes: dict[str, Any] = {}
    failures: list[str] = []
    started = time.monotonic()
    for _ in range(2):
        failures += _at_tick_start(deployment, finished_origin, answers)
        failures += _spread(deployment, finished_origin, answers)
    failures += _commands(deployment, finished_origin, outcomes)
    # Two more ticks: a duplicate made late would show now.
    wait_for_ticks(deployment.instance(), 2, after=time.time())

    manual_won = sensor_won = 0
    problems = []
    for run_id in failures:
        runs = _resumes(deployment, run_id)
        if len(runs) != 1:
            problems.append(f"{run_id}: {len(runs)} resume runs {[r.run_id for r in runs]}")
            continue
        (run,) = runs
        assert run.tags[tags.DAGSTER_RUN_KEY] == f"resume-of-{run_id}"
        assert run.tags[tags.ATTEMPT] == "1"
        assert run.tags[tags.ORIGIN_METAFLOW_RUN_ID] == finished_origin
        if tags.MANUAL in run.tags:
            assert run.tags[tags.MANUAL] == "true"
            manual_won += 1
        else:
            sensor_won += 1
        if run_id in answers:
            assert answers[run_id] == run.run_id, f"the request of {run_id} reported another run"
        else:
            status, document = outcomes[run_id]
            if status == 0:
                assert document["resume"]["run_id"] == run.run_id, document
            else:  # it saw the sensor's resume before recording anything
                assert f"was already resumed by run {run.run_id}" in document["error"], document
    assert problems == [], "\n".join(problems) + "\n" + deployment.diagnostics()
    print(
        f"{len(failures)} races in {time.monotonic() - started:.0f}s: one resume run each; "
        f"the manual request won {manual_won}, the sensor's own decision {sensor_won}"
    )
    # Both orders happened: the requests did race the sensor.
    assert manual_won and sensor_won, (manual_won, sensor_won)
    assert len(failures) == 24
