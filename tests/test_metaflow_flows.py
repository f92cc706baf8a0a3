"""Tests for auto_resume.metaflow.flows: flow graphs read from flow files."""

from __future__ import annotations

from pathlib import Path

import pytest

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.metaflow.flows import load_flow_shape

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOWS = REPO_ROOT / "examples" / "flows"


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


# --- flows that Metaflow hands over as something else than a plain class -------------------------

FEATURE_FLOWS = REPO_ROOT / "tests" / "e2e" / "flows"


def test_flow_decorated_by_a_bare_flow_mutator() -> None:
    """``@mutator`` without parentheses leaves a FlowMutator instance at module level, not the class."""
    import auto_resume.metaflow.flows as flows

    module = flows._import_flow_module(FEATURE_FLOWS / "config_mutator_flow.py")
    assert not isinstance(module.ConfigMutatorFlow, type)  # what the test is about
    shape = load_flow_shape(FEATURE_FLOWS / "config_mutator_flow.py", "ConfigMutatorFlow")
    assert shape.name == "ConfigMutatorFlow"
    assert [s.name for s in shape.steps] == ["start", "process", "end"]


def test_only_flow_of_a_file_decorated_by_a_bare_flow_mutator() -> None:
    from auto_resume.metaflow.flows import _flow_class

    flow_class = _flow_class(FEATURE_FLOWS / "config_mutator_flow.py", None)
    assert isinstance(flow_class, type) and flow_class.__name__ == "ConfigMutatorFlow"


def test_project_flow_shape() -> None:
    shape = load_flow_shape(FEATURE_FLOWS / "project_flow.py", "ProjectFlow")
    assert [s.name for s in shape.steps] == ["start", "process", "end"]
