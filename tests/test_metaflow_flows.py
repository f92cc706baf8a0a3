"""Tests for auto_resume.metaflow.flows (flow graphs), and the run id rules of auto_resume.core.run_ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.run_ids import check_run_id, make_run_id, run_id_from_command_line
from auto_resume.metaflow.flows import load_flow_shape

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOWS = REPO_ROOT / "examples" / "flows"


# --- check_run_id --------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["dagster-1a2b3c4d5e6f", "1700000000000000", "a" * 64, "run_1"])
def test_check_run_id_accepts(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param("--help", id="option"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("../x", id="parent-dir"),
        pytest.param("a/b", id="slash"),
        pytest.param("$(touch /tmp/pwned)", id="shell"),
        pytest.param("a b", id="space"),
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("x" * 10_000, id="10k-chars"),
        pytest.param("dagster-abc\n", id="trailing-newline"),
    ],
)
def test_check_run_id_rejects(run_id: str) -> None:
    with pytest.raises(MetaflowAccessError) as info:
        check_run_id(run_id)
    message = str(info.value)
    assert len(message) < 400
    assert "is not a Metaflow run id" in message
    assert "dagster-1a2b3c4d5e6f" in message  # an example of what is expected


def test_check_run_id_shortens_huge_values() -> None:
    with pytest.raises(MetaflowAccessError) as info:
        check_run_id("x" * 10_000)
    assert "x" * 80 + "..." in str(info.value)
    assert "x" * 81 not in str(info.value)


# --- run_id_from_command_line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "run_id"),
    [
        # What a metaflow-dagster op logs for a step.
        (
            "$ /usr/bin/python flow.py --quiet step start --run-id dagster-abc123 --task-id 1 "
            "--input-paths dagster-abc123/_parameters/params",
            "dagster-abc123",
        ),
        # The init command of a metaflow-dagster resume: --clone-run-id is not the run's id.
        (
            "$ python flow.py init --run-id dagster-new --task-id params --clone-run-id dagster-old",
            "dagster-new",
        ),
        # The --name=value form, as auto-resume's own step commands are logged.
        ("$ python flow.py step end --run-id=dagster-x --task-id=1", "dagster-x"),
        # No --run-id at all.
        ("$ python flow.py --quiet show", None),
        # Only --clone-run-id.
        ("$ python flow.py step start --clone-run-id dagster-old", None),
        # Not a command line.
        ("run-id dagster-abc123 failed", None),
        ("", None),
    ],
)
def test_run_id_from_command_line(line: str, run_id: str | None) -> None:
    assert run_id_from_command_line(line) == run_id


# --- make_run_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dagster_run_id", ["0b5f1c3e-1111-4222-8333-944445555666", "x"])
def test_make_run_id(dagster_run_id: str) -> None:
    expected = "dagster-" + hashlib.sha1(dagster_run_id.encode()).hexdigest()[:12]
    assert make_run_id(dagster_run_id) == expected
    assert check_run_id(expected) == expected


# --- load_flow_shape and FlowShape ---------------------------------------------------------------


def test_foreach_flow_shape() -> None:
    shape = load_flow_shape(FLOWS / "foreach_flow.py", "ForeachFlow")
    assert shape.name == "ForeachFlow"
    assert [s.name for s in shape.steps] == ["start", "body", "join", "end"]
    assert shape.step("start").type == "foreach"
    assert shape.step("start").out_funcs == ("body",)
    assert shape.step("join").type == "join"
    assert shape.step("join").is_foreach_join is True
    assert shape.step("join").in_funcs == ("body",)
    assert not any(s.is_foreach_join for s in shape.steps if s.name != "join")


def test_branch_flow_shape() -> None:
    shape = load_flow_shape(FLOWS / "branch_flow.py", "BranchFlow")
    names = [s.name for s in shape.steps]
    assert names[0] == "start" and names[-2:] == ["join", "end"]
    assert sorted(names[1:3]) == ["left", "right"]
    join = shape.step("join")
    assert join.type == "join"
    assert join.is_foreach_join is False
    assert join.in_funcs == ("left", "right")


def test_flow_shape_topological_order() -> None:
    for file_name, flow_name in [
        ("linear_flow.py", "LinearFlow"),
        ("branch_flow.py", "BranchFlow"),
        ("foreach_flow.py", "ForeachFlow"),
    ]:
        shape = load_flow_shape(FLOWS / file_name, flow_name)
        position = {s.name: i for i, s in enumerate(shape.steps)}
        for s in shape.steps:
            assert all(position[p] < position[s.name] for p in s.in_funcs), (flow_name, s.name)


def test_downstream_of() -> None:
    branch = load_flow_shape(FLOWS / "branch_flow.py", "BranchFlow")
    assert branch.downstream_of("left") == {"left", "join", "end"}
    assert branch.downstream_of("start") == {"start", "left", "right", "join", "end"}
    assert branch.downstream_of("end") == {"end"}
    foreach = load_flow_shape(FLOWS / "foreach_flow.py", "ForeachFlow")
    assert foreach.downstream_of("body") == {"body", "join", "end"}
    with pytest.raises(KeyError):
        branch.downstream_of("nope")


def test_unknown_flow_class() -> None:
    with pytest.raises(MetaflowAccessError, match="has no flow class NoSuchFlow"):
        load_flow_shape(FLOWS / "linear_flow.py", "NoSuchFlow")


def test_flow_file_that_fails_to_import(tmp_path: Path) -> None:
    flow_file = tmp_path / "bad_flow.py"
    flow_file.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(MetaflowAccessError) as info:
        load_flow_shape(flow_file, "BadFlow")
    assert str(flow_file) in str(info.value)
    assert "boom at import" in str(info.value)
