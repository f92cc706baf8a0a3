"""Tests for auto_resume.cli.main and auto_resume.cli.history on a real local Dagster instance.

The runs are real: tiny jobs executed in-process on a SQLite instance in a temporary
DAGSTER_HOME, with the tags the sensor puts on resume runs, the log line that metaflow-dagster ops
write (a Metaflow command line) and the output metadata of auto-resume's step ops (task counts).
"""

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Failure,
    Field,
    In,
    Noneable,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    job,
    op,
)

from auto_resume.cli.main import build_parser, main
from auto_resume.core.resume_changes import ResumeChanges
from auto_resume.dagster import tags
from tests.support import BIN

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED = REPO_ROOT / "examples" / "generated"
RULE_CHANGES = ResumeChanges(with_specs=("resources:memory=32000",), because=("errors[0]",))


@op(config_schema={"metaflow_run_id": str, "fail": bool})
def work(context: OpExecutionContext) -> None:
    """Logs what a real op would, then succeeds or fails as configured."""
    context.log.info(f"$ python flow.py --quiet step start --run-id {context.op_config['metaflow_run_id']}")
    if context.op_config["fail"]:
        raise Failure(description="injected failure")


def _step_op(step: str, first: bool) -> OpDefinition:
    """A step op of a resume job, named, chained and recording its counts as auto-resume's do."""
    counts = {
        "cloned": Field(Noneable(int), default_value=None),
        "executed": Field(Noneable(int), default_value=None),
    }

    ins = {} if first else {"after": In(Nothing)}

    @op(name=f"TinyFlow_resume__step_{step}", config_schema=counts, ins=ins)
    def step_op(context: OpExecutionContext) -> None:
        cloned, executed = context.op_config["cloned"], context.op_config["executed"]
        if cloned is not None and executed is not None:
            context.add_output_metadata(
                {"tasks_cloned": cloned, "tasks_executed": executed, "tasks_failed": 0}
            )

    return step_op


STEPS = ("start", "end")
STEP_OPS = [_step_op(step, first=index == 0) for index, step in enumerate(STEPS)]


@job(name="TinyFlow")
def tiny_flow() -> None:
    work()


@job(name="TinyFlow_resume")
def tiny_flow_resume() -> None:
    work()
    previous = STEP_OPS[0]()
    for step_op in STEP_OPS[1:]:
        previous = step_op(after=previous)


@job(name="OtherFlow")
def other_flow() -> None:
    work()


def _config(
    metaflow_run_id: str, fail: bool, counts: dict[str, tuple[int, int]] | None = None
) -> dict[str, object]:
    ops: dict[str, object] = {"work": {"config": {"metaflow_run_id": metaflow_run_id, "fail": fail}}}
    for step, (cloned, executed) in (counts or {}).items():
        ops[f"TinyFlow_resume__step_{step}"] = {"config": {"cloned": cloned, "executed": executed}}
    return {"ops": ops}


def _execute(
    instance: DagsterInstance,
    job_def: object,
    metaflow_run_id: str,
    fail: bool,
    counts: dict[str, tuple[int, int]] | None = None,
    run_tags: dict[str, str] | None = None,
) -> str:
    result = job_def.execute_in_process(  # type: ignore[attr-defined]
        run_config=_config(metaflow_run_id, fail, counts),
        instance=instance,
        tags=run_tags or {},
        raise_on_error=False,
    )
    return str(result.run_id)


def _resume_tags(root: str, parent: str, attempt: int, origin: str) -> dict[str, str]:
    return {
        tags.ROOT_RUN_ID: root,
        tags.PARENT_RUN_ID: parent,
        tags.ATTEMPT: str(attempt),
        tags.ORIGIN_METAFLOW_RUN_ID: origin,
        tags.SOURCE_JOB: "TinyFlow",
    }


@dataclass(frozen=True)
class Runs:
    home: Path
    resumed: str  # TinyFlow failure, resumed once, succeeded
    resume_ok: str
    exhausted: str  # TinyFlow failure, resumed once, resume failed, gave up
    resume_failed: str
    refused: str  # OtherFlow failure, given up on without any resume
    in_flight: str  # TinyFlow failure whose resume is still going
    running_resume: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Four lineages on a fresh instance in DAGSTER_HOME, created in this order."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        instance = DagsterInstance.get()
        resumed = _execute(instance, tiny_flow, "dagster-aaaaaaaaaaaa", fail=True)
        resume_ok = _execute(
            instance,
            tiny_flow_resume,
            "dagster-bbbbbbbbbbbb",
            fail=False,
            counts={"start": (1, 0), "end": (0, 1)},
            run_tags=_resume_tags(resumed, resumed, 1, "dagster-aaaaaaaaaaaa"),
        )
        exhausted = _execute(instance, tiny_flow, "dagster-cccccccccccc", fail=True)
        resume_failed = _execute(
            instance,
            tiny_flow_resume,
            "dagster-dddddddddddd",
            fail=True,
            counts={"start": (1, 0), "end": (0, 1)},
            run_tags=_resume_tags(exhausted, exhausted, 1, "dagster-cccccccccccc"),
        )
        instance.add_run_tags(resume_failed, {tags.GAVE_UP: "max_attempts (1) reached for this lineage"})
        # An error rule of the policy had that resume run with more memory.
        instance.add_run_tags(resume_failed, {tags.CHANGES: RULE_CHANGES.as_json()})
        refused = _execute(instance, other_flow, "dagster-eeeeeeeeeeee", fail=True)
        instance.add_run_tags(refused, {tags.GAVE_UP: "OtherFlow is not in the policy"})
        in_flight = _execute(instance, tiny_flow, "dagster-ffffffffffff", fail=True)
        running = instance.create_run_for_job(
            tiny_flow_resume,
            run_config=_config("dagster-000000000000", fail=False),
            status=DagsterRunStatus.STARTED,
            tags=_resume_tags(in_flight, in_flight, 1, "dagster-ffffffffffff"),
        )
        instance.dispose()
        yield Runs(home, resumed, resume_ok, exhausted, resume_failed, refused, in_flight, running.run_id)


@pytest.fixture
def in_home(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> Runs:
    monkeypatch.setenv("DAGSTER_HOME", str(runs.home))
    return runs


def _history_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["history", "--json", *args]) == 0
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


def test_history_json_shows_each_lineage_newest_first(
    in_home: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    lineages = _history_json(capsys)["lineages"]
    assert isinstance(lineages, list)
    by_root = {lineage["root_run_id"]: lineage for lineage in lineages}
    order = [in_home.in_flight, in_home.refused, in_home.exhausted, in_home.resumed]
    assert [lineage["root_run_id"] for lineage in lineages] == order

    resumed = by_root[in_home.resumed]
    assert (resumed["job_name"], resumed["outcome"], resumed["reason"]) == ("TinyFlow", "succeeded", None)
    assert resumed["original"]["status"] == "FAILURE"
    assert resumed["original"]["metaflow_run_id"] == "dagster-aaaaaaaaaaaa"
    [attempt] = resumed["attempts"]
    assert attempt["run_id"] == in_home.resume_ok
    assert attempt["attempt"] == 1
    assert attempt["status"] == "SUCCESS"
    assert attempt["metaflow_run_id"] == "dagster-bbbbbbbbbbbb"
    assert attempt["origin_metaflow_run_id"] == "dagster-aaaaaaaaaaaa"
    assert (attempt["tasks_cloned"], attempt["tasks_executed"]) == (1, 1)
    assert attempt["steps"] == [
        {"step": "start", "cloned": 1, "executed": 0},
        {"step": "end", "cloned": 0, "executed": 1},
    ]


def test_history_json_outcomes(in_home: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    lineages = _history_json(capsys)["lineages"]
    assert isinstance(lineages, list)
    by_root = {lineage["root_run_id"]: lineage for lineage in lineages}

    exhausted = by_root[in_home.exhausted]
    assert exhausted["outcome"] == "gave_up"
    assert exhausted["reason"] == "max_attempts (1) reached for this lineage"
    assert [a["status"] for a in exhausted["attempts"]] == ["FAILURE"]
    assert exhausted["attempts"][0]["changes"] == json.loads(RULE_CHANGES.as_json())
    assert by_root[in_home.resumed]["attempts"][0]["changes"] is None

    refused = by_root[in_home.refused]
    assert (refused["job_name"], refused["outcome"]) == ("OtherFlow", "gave_up")
    assert refused["reason"] == "OtherFlow is not in the policy"
    assert refused["attempts"] == []

    in_flight = by_root[in_home.in_flight]
    assert in_flight["outcome"] == "running"
    assert [a["run_id"] for a in in_flight["attempts"]] == [in_home.running_resume]


def test_history_filters_by_job_and_limits(in_home: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    other = _history_json(capsys, "OtherFlow")["lineages"]
    assert [lineage["root_run_id"] for lineage in other] == [in_home.refused]  # type: ignore[union-attr]
    # The resume job's name selects its flow's lineages too.
    tiny = _history_json(capsys, "TinyFlow_resume")["lineages"]
    assert len(tiny) == 3  # type: ignore[arg-type]
    newest = _history_json(capsys, "--limit", "1")["lineages"]
    assert [lineage["root_run_id"] for lineage in newest] == [in_home.in_flight]  # type: ignore[union-attr]
    assert _history_json(capsys, "NoSuchFlow")["lineages"] == []


def test_history_text(in_home: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "TinyFlow"]) == 0
    out = capsys.readouterr().out
    assert f"TinyFlow: failure {in_home.resumed}, 1 resume attempt(s) -> succeeded" in out
    assert f"TinyFlow: failure {in_home.exhausted}, 1 resume attempt(s) -> gave up: max_attempts (1)" in out
    assert f"TinyFlow: failure {in_home.in_flight}, 1 resume attempt(s) -> running" in out
    resume_line = next(line for line in out.splitlines() if in_home.resume_ok in line)
    assert resume_line.split() == [
        "attempt",
        "1",
        in_home.resume_ok,
        "SUCCESS",
        "metaflow",
        "dagster-bbbbbbbbbbbb",
        "cloned",
        "1,",
        "executed",
        "1",
    ]
    assert "OtherFlow" not in out
    changed = next(line for line in out.splitlines() if in_home.resume_failed in line)
    assert changed.endswith('changes {"with": ["resources:memory=32000"]} (errors[0])')

    assert main(["history", "NoSuchFlow"]) == 0
    assert capsys.readouterr().out.strip() == "no resume lineages of NoSuchFlow in this instance"


def test_history_without_dagster_home_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["history"]) == 1
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err

    assert main(["history", "--json"]) == 1
    assert "DAGSTER_HOME is not set" in json.loads(capsys.readouterr().out)["error"]


def test_history_with_missing_dagster_home_directory_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("DAGSTER_HOME", str(missing))
    assert main(["history"]) == 1
    err = capsys.readouterr().err
    assert f"cannot open the Dagster instance in DAGSTER_HOME={missing}" in err
    assert not missing.exists()


def test_validate_json_good_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    linear = GENERATED / "linear_flow_dagster.py"
    assert linear.is_file(), f"{linear} is missing: run `bash scripts/setup.sh` first"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nflows:\n  - definitions_file: {linear}\n")

    assert main(["validate", str(policy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "policy": str(policy),
        "valid": True,
        "resume_jobs": ["LinearFlow_resume"],
        "refused": [],
        "broken": [],
    }


def test_validate_names_a_refused_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flow auto-resume cannot resume is refused alone: the policy is valid, the others load."""
    linear = GENERATED / "linear_flow_dagster.py"
    remote = tmp_path / "remote_dagster.py"
    remote.write_text(linear.read_text() + '\nSTEP_DECORATOR_SPECS = {"process": ["batch"]}\n')
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nflows:\n  - definitions_file: {linear}\n  - definitions_file: {remote}\n")

    assert main(["validate", str(policy)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{policy}: valid; resume jobs: LinearFlow_resume\n")
    assert f"refused: flows[1].definitions_file: {remote}: step 'process' uses @batch" in out
    assert main(["validate", str(policy), "--json"]) == 0
    refused = json.loads(capsys.readouterr().out)["refused"]
    assert len(refused) == 1 and "@batch" in refused[0]


def test_validate_names_a_broken_flow_and_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flow whose file cannot be read is disabled alone: valid, but not every flow loads."""
    linear = GENERATED / "linear_flow_dagster.py"
    broken = tmp_path / "broken_dagster.py"
    broken.write_text("import os\n    x = 1\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nflows:\n  - definitions_file: {linear}\n  - definitions_file: {broken}\n")

    assert main(["validate", str(policy)]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{policy}: valid; resume jobs: LinearFlow_resume"
    assert lines[1].startswith(
        f"broken: flows[1].definitions_file: definitions file {broken} is not valid Python (line 2): "
        "unexpected indent; regenerate it"
    )
    assert lines[2].startswith("1 flow(s) broken: each is disabled alone")
    assert main(["validate", str(policy), "--json"]) == 3
    document = json.loads(capsys.readouterr().out)
    assert document["valid"] is True and document["resume_jobs"] == ["LinearFlow_resume"]
    assert len(document["broken"]) == 1 and "unexpected indent" in document["broken"][0]


def test_validate_says_the_last_good_policy_is_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from auto_resume.dagster.policy_store import record_good

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefaults:\n  max_atempts: 3\n")
    assert main(["validate", str(policy)]) == 1
    assert f"policy in force: none (the instance of DAGSTER_HOME={home} holds no valid version" in (
        capsys.readouterr().err
    )
    with DagsterInstance.get() as instance:
        record_good(instance, policy, "version: 1\n", now=1_780_000_000)
    assert main(["validate", str(policy)]) == 1
    err = capsys.readouterr().err
    assert f"{policy}:3: defaults.max_atempts: unknown field" in err
    assert "policy in force: the last good one, in force since 2026-05-28 20:26:40 UTC" in err
    assert main(["validate", str(policy), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["in_force"]["last_good_since"] == "2026-05-28 20:26:40 UTC"
    monkeypatch.delenv("DAGSTER_HOME")
    assert main(["validate", str(policy)]) == 1
    assert "policy in force: unknown (DAGSTER_HOME is not set" in capsys.readouterr().err


def test_validate_json_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefaults:\n  max_attempts: -1\nflows: []\n")

    assert main(["validate", str(policy), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["policy"] == str(policy)
    assert document["valid"] is False
    assert any("max_attempts" in problem for problem in document["problems"])


def test_validate_text_bad_policy_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "missing.yaml"
    assert main(["validate", str(policy)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(policy) in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no command
        ["resurrect"],  # unknown command
        ["history", "--limit", "0"],  # limit must be >= 1
        ["history", "--limit", "many"],
        ["validate", "--no-such-option"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: auto-resume" in capsys.readouterr().err


def test_help_documents_exit_status_and_json() -> None:
    parser = build_parser()
    assert "exit status:" in parser.format_help()
    for name in ("validate", "history"):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args([name, "--help"])
        assert exited.value.code == 0
    out = parser.parse_args(["history"])
    assert (out.command, out.limit, out.json, out.job) == ("history", 20, False, None)


def test_history_of_a_deleted_original_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = DagsterInstance.get()
    original = _execute(instance, tiny_flow, "dagster-aaaaaaaaaaaa", fail=True)
    resume = _execute(
        instance,
        tiny_flow_resume,
        "dagster-bbbbbbbbbbbb",
        fail=False,
        run_tags=_resume_tags(original, original, 1, "dagster-aaaaaaaaaaaa"),
    )
    instance.delete_run(original)

    [lineage] = _history_json(capsys, "TinyFlow")["lineages"]  # type: ignore[misc]
    assert lineage["job_name"] == "TinyFlow"  # from the resume run's auto_resume/source_job tag
    assert lineage["original"]["status"] == "NOT_FOUND"
    assert [attempt["run_id"] for attempt in lineage["attempts"]] == [resume]
    assert lineage["outcome"] == "succeeded"


def test_demo_json_reports_the_resume() -> None:
    # A subprocess: the demo points Metaflow's datastore at a directory it deletes afterwards,
    # which must not leak into this test process.
    command = ["demo", "--width", "2", "--fail-index", "1", "--json"]
    script = BIN / "auto-resume"
    result = subprocess.run([str(script), *command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["resumed"] is True
    assert any(line.strip().startswith("body-1") for line in document["lines"]), document["lines"]
