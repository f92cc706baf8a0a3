"""Tests for ``auto-resume explain`` and ``auto-resume resume`` (auto_resume.cli.explain, .submit).

Everything is real except the Dagster run workers: a SQLite instance in a temporary DAGSTER_HOME
with the QueuedRunCoordinator of the repo's dagster.yaml; a LinearFlow Metaflow run made by
Metaflow's own runtime (``python linear_flow.py run``, its ``process`` step fails) in the
examples' datastore; Dagster runs named like the flow's job, executed in-process, that log the
metaflow-dagster command line naming that Metaflow run and fail or succeed. ``resume`` records
its request on the run; the sensor is then ticked against the same instance, and the run it
requests is created as the daemon would (no daemon runs here).
"""

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Failure,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    build_sensor_context,
    job,
    op,
)

from auto_resume.cli.explain import explain_run
from auto_resume.cli.main import main
from auto_resume.cli.render import format_resume
from auto_resume.cli.submit import prepare_resume, request_resume
from auto_resume.dagster import tags
from auto_resume.dagster.resume_job import build_resume_job
from auto_resume.dagster.sensor import evaluate
from auto_resume.metaflow.deployment import read_deployment
from auto_resume.metaflow.flows import load_flow_shape
from tests.support.failed_runs import create_requested_run
from tests.support.linear_origin import example_linear_run

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED = REPO_ROOT / "examples" / "generated"
LINEAR_DEFS = GENERATED / "linear_flow_dagster.py"


@op(config_schema={"metaflow_run_id": str, "fail": bool})
def op_process(context: OpExecutionContext) -> None:
    """What a metaflow-dagster op logs before running its step; then fails or succeeds."""
    run_id = context.op_config["metaflow_run_id"]
    context.log.info(f"$ python linear_flow.py --quiet step process --run-id {run_id} --task-id 1")
    if context.op_config["fail"]:
        raise Failure(
            description=(
                "Command failed (exit 1):\nTraceback (most recent call last):\n"
                '  File "linear_flow.py", line 20, in process\n    raise RuntimeError()\n'
                "RuntimeError: injected failure in process\n"
            )
        )


@job(name="LinearFlow")
def linear_flow() -> None:
    op_process()


@job(name="OtherFlow")
def other_flow() -> None:
    op_process()


@pytest.fixture(scope="module")
def metaflow_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A failed LinearFlow run in the examples' datastore: start finished, process failed."""
    base = tmp_path_factory.mktemp("metaflow")
    return example_linear_run(base, LINEAR_DEFS, user="tester", fail_at="process")


def _write_policy(path: Path, settings: str = "") -> Path:
    path.write_text(f"version: 1\n{settings}flows:\n  - definitions_file: {LINEAR_DEFS}\n")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    """DAGSTER_HOME with SQLite storage and the repo's QueuedRunCoordinator; a policy for it."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("AUTO_RESUME_POLICY", str(_write_policy(tmp_path / "policy.yaml")))
    monkeypatch.setenv("METAFLOW_USER", "tester")
    instance = DagsterInstance.get()
    yield instance
    instance.dispose()


def _run(
    instance: DagsterInstance,
    metaflow_run_id: str,
    fail: bool = True,
    job_def: Any = linear_flow,
    **run_tags: str,
) -> str:
    result = job_def.execute_in_process(
        run_config={"ops": {"op_process": {"config": {"metaflow_run_id": metaflow_run_id, "fail": fail}}}},
        instance=instance,
        tags=run_tags,
        raise_on_error=False,
    )
    return str(result.run_id)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """Exit status and the JSON document printed (``--json`` is added)."""
    status = main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("command", ["explain", "resume"])
@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("not a run id!", "is not a Dagster run id"),  # spaces, punctuation: refused before any query
        ("--force", "is not a Dagster run id"),  # option-like
        ("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "no run 1b4e28ba-2fa1-11d2-883f-0016d3cca427 in this"),
    ],
)
def test_bad_or_unknown_run_id_exits_1(
    home: DagsterInstance, capsys: pytest.CaptureFixture[str], command: str, run_id: str, message: str
) -> None:
    status = main([command, "--json", "--", run_id])
    document = json.loads(capsys.readouterr().out)
    assert status == 1
    assert list(document) == ["error"]
    assert message in document["error"]


@pytest.mark.parametrize("command", ["explain", "resume"])
def test_run_of_a_job_not_in_the_policy_exits_1(
    home: DagsterInstance, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    run_id = _run(home, "dagster-0123456789ab", job_def=other_flow)
    status, document = _cli(capsys, command, run_id)
    assert status == 1
    assert "a run of OtherFlow, which is not in the policy" in document["error"]
    assert "LinearFlow" in document["error"]  # the jobs that are in it


def test_explain_a_run_beside_a_broken_flow(
    home: DagsterInstance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One unreadable entry stops only itself, as in the code location; a run of it says why."""
    policy = _write_policy(tmp_path / "policy.yaml")
    policy.write_text(policy.read_text() + f"  - definitions_file: {tmp_path / 'gone_dagster.py'}\n")
    status, document = _cli(capsys, "explain", _run(home, "dagster-0123456789ab"))
    assert status == 0 and document["decision"]["action"] == "resume"
    status, document = _cli(capsys, "explain", _run(home, "dagster-0123456789ab", job_def=other_flow))
    assert status == 1
    assert (
        "a run of OtherFlow, which is not among the flows of the policy that can be read" in document["error"]
    )
    assert (
        f"flows[1].definitions_file: definitions file {tmp_path / 'gone_dagster.py'} does not exist"
        in (document["error"])
    )


def test_explain_decides_under_the_last_good_policy_while_the_file_is_invalid(
    home: DagsterInstance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """As the sensor decides meanwhile; with no last good policy, the file's error as before."""
    from auto_resume.dagster.policy_store import read_last_good, record_good

    policy = tmp_path / "policy.yaml"
    run_id = _run(home, "dagster-0123456789ab")
    good = policy.read_text()
    policy.write_text(good.replace("flows:", "defaults: {max_atempts: 3}\nflows:"))
    status, document = _cli(capsys, "explain", run_id)
    assert status == 1 and "defaults.max_atempts: unknown field" in document["error"]
    record_good(
        home, policy, good.replace("flows:", "defaults: {max_attempts: 5}\nflows:"), now=1_780_000_000
    )
    status, document = _cli(capsys, "explain", run_id)
    assert status == 0
    assert document["decision"]["reason"].endswith("(attempt 1 of 5)")
    assert document["policy_note"].startswith(
        "policy file invalid, deciding with the last good policy (in force since 2026-05-28 20:26:40 UTC)"
    )
    assert "defaults.max_atempts: unknown field" in document["policy_note"]
    assert main(["explain", run_id]) == 0
    assert (
        "\npolicy in force: policy file invalid, deciding with the last good policy"
        in capsys.readouterr().out
    )
    assert read_last_good(home, policy) is not None and read_last_good(home, policy).since == 1_780_000_000


@pytest.mark.parametrize("command", ["explain", "resume"])
def test_run_still_going_exits_1(
    home: DagsterInstance, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    run = home.add_run(DagsterRun(job_name="LinearFlow", run_id="a" * 8, status=DagsterRunStatus.STARTED))
    status, document = _cli(capsys, command, run.run_id)
    assert status == 1
    assert document["error"].startswith(f"run {run.run_id} (LinearFlow) is still going (status STARTED)")


def test_explain_json_shows_decision_and_plan(
    home: DagsterInstance, metaflow_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _run(home, metaflow_run)
    status, document = _cli(capsys, "explain", run_id)
    assert status == 0
    assert document["run_id"] == run_id
    assert (document["job_name"], document["status"]) == ("LinearFlow", "FAILURE")
    assert document["metaflow_run_id"] == metaflow_run
    assert document["failure"] == {
        "reason": "step_failure",
        "step": "process",
        "exception": "RuntimeError",
        "message": "injected failure in process",
    }
    assert document["decision"] == {
        "action": "resume",
        "reason": f"resume {metaflow_run} (attempt 1 of 2)",
        "attempt": 1,
        "root_run_id": run_id,
        "due_at": None,
        "error_rule": None,
        "changes": None,  # the policy changes nothing in how this resume runs
    }
    assert document["resumes"] == []
    assert document["plan_error"] is None
    plan = document["plan"]
    assert (plan["origin_metaflow_run_id"], plan["tasks_cloned"], plan["tasks_executed"]) == (
        metaflow_run,
        1,
        2,
    )
    assert [(t["step"], t["action"], t["why"]) for t in plan["tasks"]] == [
        ("start", "clone", "finished in the origin run"),
        ("process", "run", "failed in the origin run"),
        ("end", "run", "did not run in the origin run"),
    ]
    assert plan["tasks"][0]["origin"].startswith(f"{metaflow_run}/start/")
    assert plan["steps"] == [
        {"step": "start", "cloned": 1, "executed": 0},
        {"step": "process", "cloned": 0, "executed": 1},
        {"step": "end", "cloned": 0, "executed": 1},
    ]

    assert main(["explain", run_id]) == 0
    text = capsys.readouterr().out
    assert f"decision: resume: resume {metaflow_run} (attempt 1 of 2)" in text
    assert "1 task(s) cloned, 2 executed" in text
    assert "    clone  start/" in text


@pytest.mark.parametrize(
    ("settings", "action", "reason", "rule"),
    [
        # an error rule that never resumes this exception: give up, rule 0 named
        (
            "defaults:\n  errors:\n    - {exception: RuntimeError, action: never}\n",
            "give_up",
            "error rule errors[0] says never resume",
            0,
        ),
        # a rule for another exception does not match; the next rule does
        (
            "defaults:\n  errors:\n"
            "    - {exception: KeyError, action: never}\n    - {step: proc*, action: resume}\n",
            "resume",
            "(attempt 1 of 2)",
            1,
        ),
        # backoff: the first resume is due an hour after the failure
        ("defaults:\n  backoff: {initial_seconds: 3600}\n", "wait", "backoff: attempt 1 is due at", None),
        # the flow switched off
        ("defaults:\n  enabled: false\n", "skip", "auto-resume is disabled for LinearFlow", None),
    ],
)
def test_explain_names_the_check_that_decided(
    home: DagsterInstance,
    metaflow_run: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    settings: str,
    action: str,
    reason: str,
    rule: int | None,
) -> None:
    policy = _write_policy(tmp_path / "other-policy.yaml", settings)
    run_id = _run(home, metaflow_run)
    status, document = _cli(capsys, "explain", run_id, "--policy", str(policy))
    assert status == 0
    assert document["policy"] == str(policy)
    assert document["decision"]["action"] == action
    assert reason in document["decision"]["reason"]
    assert document["decision"]["error_rule"] == rule
    assert document["plan"]["tasks_cloned"] == 1  # the plan does not depend on the decision


def test_explain_without_a_metaflow_datastore_run_still_decides(
    home: DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _run(home, "dagster-0123456789ab")  # logged, but not in the datastore
    status, document = _cli(capsys, "explain", run_id)
    assert status == 0
    assert document["decision"]["action"] == "resume"
    assert document["plan"] is None
    assert "LinearFlow/dagster-0123456789ab has no finished _parameters task" in document["plan_error"]
    status, document = _cli(capsys, "resume", run_id, "--dry-run")
    assert status == 1
    assert document["error"].startswith(f"cannot resume run {run_id}: LinearFlow/dagster-0123456789ab has no")


@pytest.mark.parametrize(
    ("run_tags", "settings", "refusal"),
    [
        ({tags.OPT_OUT: "true"}, "", "(skip): run {run} is tagged auto_resume/opt_out=true"),
        (
            {},
            "defaults:\n  errors:\n    - {exception: Runtime*, action: never}\n",
            "(give_up): error rule errors[0] says never",
        ),
        # attempt 2 of a lineage whose max_attempts is 2: spent
        (
            {tags.ATTEMPT: "2", tags.ROOT_RUN_ID: "r00t"},
            "",
            "(give_up): max_attempts (2) spent for the failure of run r00t",
        ),
    ],
)
def test_resume_refuses_what_the_policy_forbids_unless_forced(
    home: DagsterInstance,
    metaflow_run: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    run_tags: dict[str, str],
    settings: str,
    refusal: str,
) -> None:
    policy = str(_write_policy(tmp_path / "p.yaml", settings))
    run_id = _run(home, metaflow_run, **run_tags)
    status, document = _cli(capsys, "resume", run_id, "--dry-run", "--policy", policy)
    assert status == 1
    assert f"the policy refuses to resume run {run_id} {refusal.format(run=run_id)}" in document["error"]
    assert document["error"].endswith("; pass --force to resume it anyway")

    status, document = _cli(capsys, "resume", run_id, "--dry-run", "--force", "--policy", policy)
    assert status == 0
    resume = document["resume"]
    assert resume["dry_run"] is True and resume["run_id"] is None
    assert resume["tags"][tags.MANUAL] == "forced"
    assert resume["notes"][0].startswith("--force overrides the policy's")
    expected_attempt = int(run_tags.get(tags.ATTEMPT, "0")) + 1
    assert resume["tags"][tags.ATTEMPT] == str(expected_attempt)
    assert resume["tags"][tags.ROOT_RUN_ID] == run_tags.get(tags.ROOT_RUN_ID, run_id)
    assert home.get_runs_count() == 1  # a dry run submits nothing
    run = home.get_run_by_id(run_id)
    assert run is not None and tags.RESUME_REQUESTED not in run.tags  # and records nothing


def test_resume_overrides_a_wait_and_says_so(
    home: DagsterInstance, metaflow_run: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = str(_write_policy(tmp_path / "p.yaml", "defaults:\n  backoff: {initial_seconds: 3600}\n"))
    run_id = _run(home, metaflow_run)
    status, document = _cli(capsys, "resume", run_id, "--dry-run", "--policy", policy)
    assert status == 0
    assert document["decision"]["action"] == "wait"
    [note] = document["resume"]["notes"]
    assert note.startswith("a manual resume does not wait: the sensor would wait (backoff: attempt 1")
    assert document["resume"]["tags"][tags.MANUAL] == "true"


def test_succeeded_run_needs_from_step(
    home: DagsterInstance, metaflow_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _run(home, metaflow_run, fail=False)
    status, document = _cli(capsys, "resume", run_id, "--dry-run")
    assert status == 1
    assert document["error"].startswith(
        f"run {run_id} succeeded: there is nothing to resume; pass --from-step"
    )
    status, document = _cli(capsys, "resume", run_id, "--dry-run", "--from-step", "nosuchstep")
    assert status == 1
    assert (
        document["error"]
        == "from_step 'nosuchstep' is not a step of LinearFlow; choose one of: start, process, end"
    )

    status, document = _cli(capsys, "resume", run_id, "--dry-run", "--from-step", "start")
    assert status == 0
    resume = document["resume"]
    assert resume["run_config"] == {
        "ops": {
            "LinearFlow_resume__origin": {"config": {"origin_run_id": metaflow_run, "from_step": "start"}}
        }
    }
    assert tags.PARENT_FAILURE not in resume["tags"]  # nothing failed
    # From start on, everything runs again: nothing is cloned.
    assert (document["plan"]["tasks_cloned"], document["plan"]["tasks_executed"]) == (0, 3)
    assert document["plan"]["tasks"][0]["why"] == "at or after --from-step"


def _tick(instance: DagsterInstance) -> list[RunRequest]:
    """One tick of the sensor, its cursor placed before every failure of the instance."""
    policy = Path(os.environ["AUTO_RESUME_POLICY"])
    deployment = read_deployment(LINEAR_DEFS)
    resume_job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
    by_job = {deployment.job_name: deployment, deployment.resume_job_name: deployment}
    context = build_sensor_context(instance=instance, cursor=json.dumps({"after": 0, "pending": []}))
    result = evaluate(context, by_job, {resume_job.name: resume_job}, policy, now=time.time())
    return list(result.run_requests or [])


def test_resume_records_a_request_that_the_sensor_answers_once(
    home: DagsterInstance, metaflow_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _run(home, metaflow_run)
    status, document = _cli(capsys, "resume", run_id, "--wait", "0")
    assert status == 0, document
    resume = document["resume"]
    assert (resume["requested"], resume["pending"], resume["run_id"]) == (True, True, None)
    assert resume["run_key"] == f"resume-of-{run_id}"
    # Recorded on the run; no run created by the command itself.
    failed = home.get_run_by_id(run_id)
    assert failed is not None
    assert failed.tags[tags.RESUME_REQUESTED] == "manual"
    request = json.loads(failed.tags[tags.RESUME_REQUEST])
    assert (request["run_id"], request["run_key"], request["from_step"]) == (run_id, resume["run_key"], None)
    assert home.get_runs_count() == 1

    # The sensor's tick reads the failure and the request: one run request, the manual one.
    (run_request,) = _tick(home)
    assert run_request.run_key == f"resume-of-{run_id}"
    assert run_request.job_name == "LinearFlow_resume"
    assert (
        run_request.run_config
        == resume["run_config"]
        == {"ops": {"LinearFlow_resume__origin": {"config": {"origin_run_id": metaflow_run}}}}
    )
    expected = {
        tags.ROOT_RUN_ID: run_id,
        tags.PARENT_RUN_ID: run_id,
        tags.ORIGIN_METAFLOW_RUN_ID: metaflow_run,
        tags.ATTEMPT: "1",
        tags.SOURCE_JOB: "LinearFlow",
        tags.MANUAL: "true",
    }
    assert {key: run_request.tags[key] for key in expected} == expected
    assert run_request.tags == resume["tags"]
    created = create_requested_run(home, run_request)
    assert _tick(home) == []  # answered: neither the request nor the failure again

    # A second manual resume is refused unless forced; forced, it is the run's second resume.
    status, document = _cli(capsys, "resume", run_id, "--dry-run")
    assert status == 1
    assert f"was already resumed by run {created.run_id} (NOT_STARTED, manual)" in document["error"]
    status, document = _cli(capsys, "resume", run_id, "--dry-run", "--force")
    assert status == 0
    assert document["resume"]["run_key"] == f"resume-of-{run_id}#2"
    assert document["resume"]["tags"][tags.MANUAL] == "forced"
    status, document = _cli(capsys, "explain", run_id)
    assert document["decision"]["action"] == "skip"
    assert document["resumes"] == [{"run_id": created.run_id, "status": "NOT_STARTED", "manual": True}]


def test_resume_waits_for_the_run_and_names_it(
    home: DagsterInstance, metaflow_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _run(home, metaflow_run, fail=False)

    def sensor() -> None:
        # Another process's sensor: ticks once the request is there, as the daemon would.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            run = home.get_run_by_id(run_id)
            if run is not None and tags.RESUME_REQUESTED in run.tags:
                for run_request in _tick(home):
                    create_requested_run(home, run_request)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=sensor)
    thread.start()
    status, document = _cli(capsys, "resume", run_id, "--from-step", "process", "--wait", "30")
    thread.join()
    assert status == 0, document
    resume = document["resume"]
    assert (resume["pending"], resume["manual"]) == (False, True)
    created = home.get_run_by_id(resume["run_id"])
    assert created is not None
    assert created.tags[tags.DAGSTER_RUN_KEY] == f"resume-of-{run_id}"
    assert created.run_config == {
        "ops": {
            "LinearFlow_resume__origin": {"config": {"origin_run_id": metaflow_run, "from_step": "process"}}
        }
    }
    assert tags.PARENT_FAILURE not in created.tags  # a succeeded run: no failure to fingerprint


def test_the_sensor_deciding_first_answers_the_request(
    home: DagsterInstance, metaflow_run: str, tmp_path: Path
) -> None:
    # The command decided and prepared its request; the sensor resumed the failure on its own in
    # between. The request has the same run key: it is answered by that run, nothing more is made.
    run_id = _run(home, metaflow_run)
    policy = Path(os.environ["AUTO_RESUME_POLICY"])
    explanation = explain_run(home, policy, run_id)
    manual = prepare_resume(explanation, None, force=False)
    (automatic,) = _tick(home)
    created = create_requested_run(home, automatic)
    answer = request_resume(home, manual, wait=5)
    assert answer is not None and answer.run_id == created.run_id
    assert tags.MANUAL not in answer.tags
    assert _tick(home) == []
    text = format_resume(explanation, manual, False, answer, 5)
    assert f"resumed by the sensor itself: its run {created.run_id} (resume-of-{run_id})" in text
    assert len(home.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: run_id}))) == 1


def test_help_usage_errors_and_text_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("explain", "resume"):
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        assert exited.value.code == 0
        assert "exit status:\n  0  success" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exited:
            main([name])  # RUN_ID missing
        assert exited.value.code == 2
    capsys.readouterr()
    # Without --json the refusal goes to stderr, prefixed with the command; stdout stays empty.
    assert main(["resume", "x y"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("auto-resume resume: 'x y' is not a Dagster run id")
    for wait in ("-1", "soon", "3601"):
        with pytest.raises(SystemExit) as exited:
            main(["resume", "abc", "--wait", wait])
        assert exited.value.code == 2
    assert "--wait: must be a number of seconds from 0 to 3600" in capsys.readouterr().err
