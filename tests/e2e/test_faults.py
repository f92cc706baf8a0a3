"""Faults on the real dagster-daemon and PostgreSQL: crashes, a database restart, lost data.

Each test has a deployment of its own (`faults_support.FaultyDeployment`), so killing its
daemon, restarting its database server or changing its policy disturbs no other test.
"""

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from auto_resume.dagster import tags
from auto_resume.dagster.run_facts import metaflow_run_id
from tests.e2e.faults_support import FaultyDeployment, PrivatePostgres, artifact_blob, origin_task_dir
from tests.e2e.harness import (
    counts,
    sensor_ticks,
    wait_for_resume_of,
    wait_for_run,
    wait_for_ticks,
    write_policy,
)
from tests.support.events import failure_messages
from tests.support.failed_runs import create_failed_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

FAILURE_INTERVAL_S = 1.0  # a new failed run every second until the restarted daemon has ticked
MAX_FAILURES = 200


def _resumes_by_parent(instance: DagsterInstance) -> dict[str, list[tuple[str, str | None]]]:
    """Resume runs of LinearFlow by the failed run they answer: (attempt, run key) each."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for run in instance.get_runs(RunsFilter(job_name="LinearFlow_resume")):
        parent = run.tags[tags.PARENT_RUN_ID]
        found.setdefault(parent, []).append((run.tags[tags.ATTEMPT], run.tags.get("dagster/run_key")))
    return found


def _kill_during(separate: FaultyDeployment, after: float, phase: str) -> str:
    """SIGKILL the daemon's process group during a tick that started after ``after``.

    ``phase`` ``evaluating``: while the sensor function runs (no run requested yet);
    ``submitting``: once the tick has stored its run requests and created some of the runs,
    not all (after 45 s without catching that, also before it has created any).
    Returns what the killed tick had done, for the test's output.
    """
    assert separate.deployment is not None
    instance = separate.deployment.instance()
    started = time.monotonic()

    def killed_in_phase() -> str | None:
        ticks = [t for t in sensor_ticks(instance, after) if t.status.value == "STARTED"]
        reserved = list(ticks[-1].tick_data.reserved_run_ids or []) if ticks else []
        created = len(instance.get_runs(RunsFilter(run_ids=reserved))) if reserved else 0
        late = time.monotonic() > started + 45
        if ticks and (
            (phase == "evaluating" and not reserved)
            or (phase == "submitting" and reserved and (created > 0 or late) and created < len(reserved))
        ):
            separate.kill_daemon()
            created = len(instance.get_runs(RunsFilter(run_ids=reserved))) if reserved else 0
            return f"killed {phase}: the tick had created {created} of its {len(reserved)} runs"
        return None

    details = separate.deployment.diagnostics
    return wait_until(killed_in_phase, 90, f"no tick in phase {phase!r}", details, interval=0.02)


@pytest.mark.slow
def test_sigkill_mid_tick_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Failures keep arriving while the daemon is SIGKILLed twice mid-tick: each resumed exactly once."""
    with FaultyDeployment(tmp_path / "sigkill", paused_queue=True) as separate:
        assert separate.deployment is not None
        write_policy(separate.deployment.policy_file, max_attempts=1)
        instance = separate.deployment.instance()
        created: list[str] = []
        problems: list[BaseException] = []
        enough = threading.Event()

        def make_failures() -> None:
            own = separate.deployment.instance()  # type: ignore[union-attr]
            try:
                while not enough.is_set() and len(created) < MAX_FAILURES:
                    created.append(create_failed_run(own, "LinearFlow"))
                    enough.wait(FAILURE_INTERVAL_S)
            except BaseException as exc:  # reported by the test thread
                problems.append(exc)

        producer = threading.Thread(target=make_failures, daemon=True)
        started = time.time()
        producer.start()
        notes = [_kill_during(separate, started, "evaluating")]
        notes.append(f"{len(created)} failures so far")
        separate.start_daemon()
        notes.append(_kill_during(separate, time.time(), "submitting"))
        notes.append(f"{len(created)} failures so far")
        separate.start_daemon()
        # Failures go on arriving while the restarted daemon catches up.
        wait_for_ticks(instance, 1, after=time.time())
        enough.set()
        producer.join(timeout=60)
        assert not producer.is_alive() and not problems, problems
        notes.append(f"{len(created)} failures in all, {time.time() - started:.0f}s")
        print("; ".join(notes))

        def all_resumed() -> bool:
            return set(_resumes_by_parent(instance)) >= set(created)

        wait_until(all_resumed, 180, "not every failure was resumed", separate.deployment.diagnostics)
        # Two more finished ticks: a duplicate would come from one of them, or not at all.
        wait_for_ticks(instance, 2, after=time.time())
        resumes = _resumes_by_parent(instance)
        assert set(resumes) == set(created)  # nothing else was resumed
        duplicates = {parent: runs for parent, runs in resumes.items() if len(runs) != 1}
        assert not duplicates, duplicates
        # Attempt 1 each, under the run key that the daemon never creates twice.
        assert all(runs == [("1", f"resume-of-{parent}")] for parent, runs in resumes.items())
        for run_id in created:
            run = instance.get_run_by_id(run_id)
            assert run is not None and tags.GAVE_UP not in run.tags, run_id


@pytest.mark.slow
def test_database_restart_during_a_resume_run(tmp_path: Path) -> None:
    """PostgreSQL restarts while a real resume run works: the daemon and the run carry on, one resume."""
    with (
        PrivatePostgres() as server,
        FaultyDeployment(tmp_path / "pg-restart", ("linear_flow",), server.url) as separate,
    ):
        assert separate.deployment is not None
        write_policy(separate.deployment.policy_file, max_attempts=1)
        instance = separate.deployment.instance()
        workdir = tmp_path / "counters"
        config = {"alpha": 7, "fail_at": "process", "workdir": str(workdir)}
        original = separate.launch("linear_flow", "LinearFlow", config)
        assert wait_for_run(instance, original).status == DagsterRunStatus.FAILURE
        resume = wait_for_resume_of(instance, original, deployment=separate.deployment)

        def in_flight() -> bool:
            run = instance.get_run_by_id(resume.run_id)
            return run is not None and run.status == DagsterRunStatus.STARTED

        wait_until(in_flight, 120, "the resume run did not start", separate.deployment.diagnostics)
        server.restart()  # every connection of the daemon, the run worker and this test is cut
        restarted = time.time()
        finished = wait_for_run(instance, resume.run_id, timeout=240)
        ticks = wait_for_ticks(instance, 2, after=restarted)
        assert separate.daemon_alive(), separate.deployment.diagnostics()
        assert ticks[-1].status.value in ("SUCCESS", "SKIPPED"), separate.deployment.diagnostics()
        assert finished.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
        print(f"resume run after the restart: {finished.status.value}; ticks since: {len(ticks)}")
        if finished.status == DagsterRunStatus.SUCCESS:
            assert counts(workdir) == {"start": 1, "process": 2, "end": 1}
        else:
            message = failure_messages(instance, resume.run_id, tracebacks=True)
            assert "connection" in message.lower() or "server closed" in message.lower(), message
        resumes = instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: original}))
        assert [r.run_id for r in resumes] == [resume.run_id]


def _waiting(instance: DagsterInstance) -> list[str]:
    """Failed runs the sensor keeps in its cursor to decide again (backoff, window, cap)."""
    ticks = [t for t in sensor_ticks(instance, time.time() - 60) if t.tick_data.cursor]
    cursor = ticks[-1].tick_data.cursor if ticks else None
    return [p["run_id"] for p in json.loads(cursor)["pending"]] if cursor else []


def _launch_failing(separate: FaultyDeployment, workdir: Path, alpha: int) -> str:
    return separate.launch(
        "linear_flow", "LinearFlow", {"alpha": alpha, "fail_at": "process", "workdir": str(workdir)}
    )


def _occupy_resume_slot(instance: DagsterInstance) -> str:
    """A placeholder resume run of LinearFlow, STARTED, never executed: it fills the flow's one slot."""
    run = instance.add_run(
        DagsterRun(
            job_name="LinearFlow_resume",
            run_id=str(uuid.uuid4()),
            tags={tags.SOURCE_JOB: "LinearFlow"},
            status=DagsterRunStatus.STARTED,
        )
    )
    return run.run_id


@pytest.mark.slow
def test_origin_data_lost_before_the_resume(tmp_path: Path) -> None:
    """Origin datastore objects deleted before the resume: clear messages, no resume storm.

    Two failed runs of LinearFlow, each with a unique ``alpha`` so no other run shares their
    artifacts. While they wait for a resume slot (``max_resumes_in_flight: 1``, taken by a
    placeholder run), the first loses its ``start`` task's artifact index (``0.data.json``),
    the second the content-addressed blob behind its ``start`` task's ``value`` artifact.
    """
    with FaultyDeployment(tmp_path / "lost-data", ("linear_flow",)) as separate:
        assert separate.deployment is not None
        deployment = separate.deployment
        write_policy(deployment.policy_file, max_attempts=2, extra="  max_resumes_in_flight: 1\n")
        instance = deployment.instance()
        placeholder = _occupy_resume_slot(instance)
        alpha = 10_000_000 + int(time.time() * 1000) % 10_000_000
        index_lost = _launch_failing(separate, tmp_path / "index", alpha)
        blob_lost = _launch_failing(separate, tmp_path / "blob", alpha + 1)
        origins = {}
        for run_id in (index_lost, blob_lost):
            assert wait_for_run(instance, run_id).status == DagsterRunStatus.FAILURE
            origins[run_id] = metaflow_run_id(instance, run_id)
            assert origins[run_id]
        (origin_task_dir("LinearFlow", origins[index_lost], "start") / "0.data.json").unlink()
        blob = artifact_blob("LinearFlow", origins[blob_lost], "start", "value")
        blob.unlink()
        for run_id in (index_lost, blob_lost):  # both were seen and wait for the slot
            wait_until(
                lambda r=run_id: r in _waiting(instance),
                60,
                f"{run_id} is not waiting",
                deployment.diagnostics,
            )
        assert [r.run_id for r in instance.get_runs(RunsFilter(job_name="LinearFlow_resume"))] == [
            placeholder
        ]
        instance.delete_run(placeholder)  # the slot is free: the sensor resumes one at a time

        # The lost task index: resume 1 fails reading it and says so; resume 2, from resume 1's
        # Metaflow run (which has no start task), executes start again and succeeds.
        first = wait_for_run(instance, wait_for_resume_of(instance, index_lost, 300, deployment).run_id)
        assert first.status == DagsterRunStatus.FAILURE
        message = failure_messages(instance, first.run_id, tracebacks=True)
        assert "datastore objects of step start are missing or unreadable" in message, message
        assert f"LinearFlow/{origins[index_lost]}/start/" in message, message
        second = wait_for_run(instance, wait_for_resume_of(instance, first.run_id, 300, deployment).run_id)
        assert second.status == DagsterRunStatus.SUCCESS, failure_messages(
            instance, tracebacks=True, run_id=second.run_id
        )
        assert counts(tmp_path / "index") == {"start": 2, "process": 2, "end": 1}

        # The lost blob: resume 1 checks the blobs of what it clones, refuses to clone start
        # (naming the artifact and the missing file) and fails; resume 2, from resume 1's
        # Metaflow run, executes start again and succeeds.
        first = wait_for_run(instance, wait_for_resume_of(instance, blob_lost, 300, deployment).run_id)
        assert first.status == DagsterRunStatus.FAILURE
        message = failure_messages(instance, first.run_id, tracebacks=True)
        assert f"artifact 'value' of LinearFlow/{origins[blob_lost]}/start/1 is missing" in message, message
        assert str(blob) in message, message
        second = wait_for_run(instance, wait_for_resume_of(instance, first.run_id, 300, deployment).run_id)
        assert second.status == DagsterRunStatus.SUCCESS, failure_messages(
            instance, tracebacks=True, run_id=second.run_id
        )
        assert counts(tmp_path / "blob") == {"start": 2, "process": 2, "end": 1}
        wait_for_ticks(instance, 2, after=time.time())
        for root in (index_lost, blob_lost):  # two resume runs each, then none: no storm
            assert len(instance.get_runs(RunsFilter(tags={tags.ROOT_RUN_ID: root}))) == 2
