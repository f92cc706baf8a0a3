"""Tests for auto_resume.dagster.parking: parked failures, resumed once their flow's code changes.

The sensor is ticked with `build_sensor_context` on a temporary instance, as in test_sensor.py;
LinearFlow's deployment points at a copy of its flow file (and demo_support.py) that the test
edits, so the fingerprint on disk changes as a deployed fix would change it.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunRequest, SensorResult, build_sensor_context, instance_for_test

from auto_resume.dagster import tags
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.sensor import evaluate
from auto_resume.metaflow.code_fingerprint import code_fingerprint
from auto_resume.metaflow.deployment import read_deployment
from auto_resume.metaflow.flows import load_flow_shape
from tests.support.failed_runs import create_failed_run

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = REPO_ROOT / "examples" / "generated" / "linear_flow_dagster.py"
PARK_KEY_ERRORS = (
    "defaults:\n  max_failure_age_seconds: 3600\n  errors:\n"
    "    - {action: never, exception: KeyError, on_code_change: resume}\n"
)


class Ticker:
    """Ticks the sensor for LinearFlow, whose flow file is a copy in ``tmp``."""

    def __init__(self, instance: DagsterInstance, tmp: Path) -> None:
        self.instance, self.policy = instance, tmp / "policy.yaml"
        original = read_deployment(DEFINITIONS)
        self.flow_file = tmp / "linear_flow.py"
        shutil.copy(original.flow_file, self.flow_file)
        shutil.copy(Path(original.flow_file).parent / "demo_support.py", tmp / "demo_support.py")
        deployment = dataclasses.replace(original, flow_file=self.flow_file)
        resume_job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
        self.by_job = {deployment.job_name: deployment, deployment.resume_job_name: deployment}
        self.jobs = {resume_job.name: resume_job}
        self.policy.write_text(f"version: 1\n{PARK_KEY_ERRORS}flows:\n  - definitions_file: {DEFINITIONS}\n")
        self.cursor: str | None = None
        self.tick()

    def tick(self, now: float | None = None) -> SensorResult:
        context = build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = evaluate(context, self.by_job, self.jobs, self.policy, now=now)
        self.cursor = result.cursor
        return result


@pytest.fixture
def ticker(tmp_path: Path) -> Iterator[Ticker]:
    with instance_for_test() as instance:
        yield Ticker(instance, tmp_path)


def requests(result: SensorResult) -> list[RunRequest]:
    return list(result.run_requests or [])


def message(result: SensorResult) -> str:
    return result.skip_reason.skip_message or "" if result.skip_reason else ""


def run_tags(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return dict(run.tags)


def test_parked_until_the_code_changes_then_resumed_once_with_a_fresh_budget(ticker: Ticker) -> None:
    instance = ticker.instance
    # A resume (attempt 2 of the lineage of root-1) hits a KeyError: the rule parks it.
    failed = create_failed_run(
        instance,
        "LinearFlow_resume",
        exception="KeyError",
        message="'ratio'",
        run_tags={tags.ATTEMPT: "2", tags.ROOT_RUN_ID: "root-1"},
    )
    before = code_fingerprint(ticker.flow_file)
    result = ticker.tick()
    assert requests(result) == []
    assert f"park (code {before})" in message(result)
    parked = run_tags(instance, failed)
    assert parked[tags.PARKED] == tags.PARKED_WAITING and parked[tags.PARKED_CODE] == before
    assert tags.GAVE_UP not in parked
    # Unchanged code (a new file nothing imports): stays parked, tick after tick.
    (ticker.flow_file.parent / "notes.py").write_text("X = 1\n")
    assert requests(ticker.tick()) == [] and requests(ticker.tick()) == []
    # The fix: resumed, as attempt 1 of a new lineage rooted at the parked run.
    ticker.flow_file.write_text(ticker.flow_file.read_text() + "# fixed\n")
    after = code_fingerprint(ticker.flow_file)
    (request,) = requests(ticker.tick())
    assert request.run_key == f"resume-of-{failed}"
    assert request.job_name == "LinearFlow_resume"
    assert request.tags[tags.CODE_CHANGED] == f"{before} -> {after}"
    assert (request.tags[tags.ATTEMPT], request.tags[tags.ROOT_RUN_ID]) == ("1", failed)
    # Until its run exists, the same key is requested again (the daemon creates one run per key).
    assert [r.run_key for r in requests(ticker.tick())] == [request.run_key]
    create_failed_run(instance, "LinearFlow_resume", run_tags={tags.PARENT_RUN_ID: failed})
    ticker.tick()
    assert run_tags(instance, failed)[tags.PARKED] == tags.PARKED_RESUMED
    ticker.flow_file.write_text(ticker.flow_file.read_text() + "# changed again\n")
    assert [r for r in requests(ticker.tick()) if r.run_key == request.run_key] == []


def test_a_parked_failure_past_its_age_limit_is_let_go(ticker: Ticker) -> None:
    instance = ticker.instance
    failed = create_failed_run(instance, "LinearFlow", exception="KeyError")
    ticker.tick()
    assert run_tags(instance, failed)[tags.PARKED] == tags.PARKED_WAITING
    ticker.flow_file.write_text(ticker.flow_file.read_text() + "# fixed\n")
    result = ticker.tick(now=time.time() + 7200)
    assert requests(result) == []
    assert "older than max_failure_age_seconds (3600)" in message(result)
    assert run_tags(instance, failed)[tags.PARKED] == tags.PARKED_EXPIRED


def test_without_on_code_change_a_deterministic_failure_is_given_up(ticker: Ticker) -> None:
    ticker.policy.write_text(ticker.policy.read_text().replace(", on_code_change: resume", ""))
    failed = create_failed_run(ticker.instance, "LinearFlow", exception="KeyError")
    ticker.tick()
    given_up = run_tags(ticker.instance, failed)
    assert tags.PARKED not in given_up and "errors[0]" in given_up[tags.GAVE_UP]
