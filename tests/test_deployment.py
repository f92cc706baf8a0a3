"""Tests for auto_resume.metaflow.deployment: reading metaflow-dagster definitions files as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from auto_resume.metaflow.deployment import DeploymentError, StepOptions, read_deployment

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED = REPO_ROOT / "examples" / "generated"


def generated(name: str) -> Path:
    path = GENERATED / name
    assert path.is_file(), f"{path} is missing: run `bash scripts/setup.sh` first"
    return path


@pytest.mark.parametrize(
    ("file_name", "job_name", "flow_file", "steps"),
    [
        ("linear_flow_dagster.py", "LinearFlow", "linear_flow.py", ["start", "process", "end"]),
        ("branch_flow_dagster.py", "BranchFlow", "branch_flow.py", ["start", "left", "right", "join", "end"]),
        ("foreach_flow_dagster.py", "ForeachFlow", "foreach_flow.py", ["start", "body", "join", "end"]),
        (
            "nested_foreach_flow_dagster.py",
            "NestedForeachFlow",
            "nested_foreach_flow.py",
            ["start", "outer", "middle", "leaf", "join_leaf", "join_middle", "join_outer", "end"],
        ),
        (
            "multi_body_flow_dagster.py",
            "MultiBodyFlow",
            "multi_body_flow.py",
            ["start", "body1", "body2", "join", "end"],
        ),
        ("switch_flow_dagster.py", "SwitchFlow", "switch_flow.py", ["start", "high", "low", "merge", "end"]),
    ],
)
def test_generated_examples(file_name: str, job_name: str, flow_file: str, steps: list[str]) -> None:
    path = generated(file_name)
    deployment = read_deployment(path)
    assert deployment.definitions_file == path.resolve()
    assert deployment.job_name == job_name
    assert deployment.flow_name == job_name
    assert deployment.resume_job_name == f"{job_name}_resume"
    assert deployment.flow_file.name == flow_file
    assert deployment.flow_file.is_file()
    assert deployment.top_arg("datastore") == "local"
    assert deployment.top_arg("metadata") == "local"
    assert sorted(deployment.steps) == sorted(steps)
    for name in steps:
        assert deployment.steps[name] == StepOptions(), name


MINIMAL = """\
from typing import Dict, List

from dagster import RetryPolicy, job, op

FLOW_FILE = "/srv/flows/train_flow.py"
FLOW_NAME = "TrainFlow"
METAFLOW_TOP_ARGS: List[str] = ["--quiet", "--datastore=s3", "--datastore-root=s3://bucket/mf"]
METAFLOW_STEP_ENV: Dict[str, str] = {"METAFLOW_USER": "ci"}
STEP_WITH_DECORATORS: Dict[str, List[str]] = {"start": [], "train": ["timeout:seconds=60"], "end": []}


@op
def op_start(context):
    return _run_step(context, "start", "run", "run/_parameters/params", "1")


@op(retry_policy=RetryPolicy(max_retries=3, delay=2))
def op_train(context, p):
    run_id = p.split("/")[0]
    return _run_step(
        context, "train", run_id, p, "1", max_user_code_retries=3, tags=["a"], extra_env={"X": "1"}
    )


@job
def TrainFlow():
    op_train(op_start())
"""


def test_hand_written_file(tmp_path: Path) -> None:
    path = tmp_path / "train_flow_dagster.py"
    path.write_text(MINIMAL)
    deployment = read_deployment(path)
    assert deployment.job_name == "TrainFlow"
    assert deployment.flow_name == "TrainFlow"
    assert deployment.flow_file == Path("/srv/flows/train_flow.py")
    assert deployment.step_env == {"METAFLOW_USER": "ci"}
    assert deployment.top_args == ("--quiet", "--datastore=s3", "--datastore-root=s3://bucket/mf")
    # --datastore= must not match --datastore-root=.
    assert deployment.top_arg("datastore") == "s3"
    assert deployment.top_arg("datastore-root") == "s3://bucket/mf"
    assert deployment.top_arg("namespace") is None
    assert deployment.step_options("train") == StepOptions(
        max_user_code_retries=3,
        retry_delay_seconds=2.0,
        tags=("a",),
        extra_env={"X": "1"},
        with_decorators=("timeout:seconds=60",),
        decorators=frozenset({"timeout"}),
    )
    assert deployment.step_options("start") == StepOptions()
    # Listed only in STEP_WITH_DECORATORS: defaults.
    assert deployment.step_options("end") == StepOptions()
    # Not mentioned anywhere: defaults too.
    assert deployment.step_options("unknown") == StepOptions()


def test_op_retry_policy_above_user_code_retries_wins(tmp_path: Path) -> None:
    path = tmp_path / "train_flow_dagster.py"
    path.write_text(MINIMAL.replace("max_retries=3", "max_retries=5").replace("delay=2", "delay=0.5"))
    options = read_deployment(path).step_options("train")
    assert (options.max_user_code_retries, options.retry_delay_seconds) == (5, 0.5)


# (file name, bytes written or None for no file, fragments the message must contain)
BAD_FILES = [
    # The file does not exist.
    pytest.param(
        "missing_dagster.py",
        None,
        ["cannot read"],
        id="missing",
    ),
    # Not Python at all.
    pytest.param("broken_dagster.py", b"def oops(:\n", ["not valid Python", "line 1"], id="syntax-error"),
    # Python, but not written by metaflow-dagster.
    pytest.param(
        "other.py",
        b"import os\n\nprint(os.getcwd())\n",
        ["does not look like a metaflow-dagster definitions file", "FLOW_FILE"],
        id="not-metaflow-dagster",
    ),
    # Has the constants, but two @job functions.
    pytest.param(
        "two_jobs_dagster.py",
        (MINIMAL + "\n\n@job\ndef Other():\n    pass\n").encode(),
        ["defines 2 @job functions"],
        id="two-jobs",
    ),
    # A compiled file (or any binary) by mistake: not UTF-8.
    pytest.param(
        "train_flow_dagster.pyc",
        b"\xa7\r\r\n\x00\x00\x00\x00\xff\xfe binary",
        ["not a Python source file"],
        id="binary",
    ),
]


@pytest.mark.parametrize(("name", "content", "fragments"), BAD_FILES)
def test_bad_files(tmp_path: Path, name: str, content: bytes | None, fragments: list[str]) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DeploymentError) as info:
        read_deployment(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    # The fix: regenerate the file / point at the generated one.
    assert "dagster create" in message


def test_decorated_flow_forwards_retry_tags_and_environment() -> None:
    # decorated_flow is compiled with `--tag team:auto-resume` (scripts/setup.sh).
    deployment = read_deployment(generated("decorated_flow_dagster.py"))
    tag = ("team:auto-resume",)
    assert deployment.step_options("start") == StepOptions(tags=tag)
    # @retry(times=1): one user-code retry, and the op's RetryPolicy(max_retries=1).
    # Each step knows its own decorators' names: a resume's --with of one of them is ignored there.
    assert deployment.step_options("flaky") == StepOptions(
        max_user_code_retries=1, tags=tag, decorators=frozenset({"retry"})
    )
    # @catch needs nothing on the command line.
    assert deployment.step_options("guarded") == StepOptions(tags=tag, decorators=frozenset({"catch"}))
    # @environment(vars=...) arrives as the step's extra environment.
    assert deployment.step_options("end") == StepOptions(
        tags=tag,
        extra_env={"AUTO_RESUME_EXAMPLE_VAR": "from-environment-decorator"},
        decorators=frozenset({"environment"}),
    )


@pytest.mark.parametrize(
    ("constant", "spec"),
    [
        # --with=kubernetes would run the step remotely: not what a local resume can do.
        ("STEP_WITH_DECORATORS", "kubernetes:cpu=2"),
        # @conda swaps the interpreter in its runtime_step_cli hook.
        ("STEP_DECORATOR_SPECS", "conda:python=3.11"),
        # @parallel needs the control/worker task machinery of Metaflow's runtime.
        ("STEP_DECORATOR_SPECS", "parallel"),
    ],
)
def test_launcher_decorators_are_refused(tmp_path: Path, constant: str, spec: str) -> None:
    path = tmp_path / "train_flow_dagster.py"
    source = MINIMAL.replace('"timeout:seconds=60"', '"card"')
    source += f'\n{constant} = {{"train": [{spec!r}]}}\n'
    path.write_text(source)
    with pytest.raises(DeploymentError) as info:
        read_deployment(path)
    message = str(info.value)
    assert str(path) in message and "'train'" in message and f"@{spec.split(':')[0]}" in message
    assert "remove the flow from the policy" in message
