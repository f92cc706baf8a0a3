"""Tests for auto_resume.resume_plan: which tasks a resume run has, and which are cloned."""

from __future__ import annotations

import pytest

from auto_resume.metaflow_access import FlowShape, OriginTask, StepShape
from auto_resume.resume_plan import TaskInstance, TaskRecord, instances_for, plan_step, task_id_for

PARAMS = "new/_parameters/params"


def step(
    name: str,
    type_: str,
    in_funcs: tuple[str, ...] = (),
    out_funcs: tuple[str, ...] = (),
    is_foreach_join: bool = False,
) -> StepShape:
    return StepShape(name, type_, in_funcs, out_funcs, is_foreach_join)


def flow(*steps: StepShape) -> FlowShape:
    return FlowShape("TestFlow", steps)


LINEAR = flow(
    step("start", "start", (), ("process",)),
    step("process", "linear", ("start",), ("end",)),
    step("end", "end", ("process",)),
)
FOREACH = flow(
    step("start", "foreach", (), ("body",)),
    step("body", "linear", ("start",), ("join",)),
    step("join", "join", ("body",), ("end",), is_foreach_join=True),
    step("end", "end", ("join",)),
)
BRANCH = flow(
    step("start", "split", (), ("left", "right")),
    step("left", "linear", ("start",), ("join",)),
    step("right", "linear", ("start",), ("join",)),
    step("join", "join", ("left", "right"), ("end",)),
    step("end", "end", ("join",)),
)
SWITCH = flow(
    step("start", "split-switch", (), ("a", "b")),
    step("a", "linear", ("start",), ("merge",)),
    step("b", "linear", ("start",), ("merge",)),
    step("merge", "linear", ("a", "b"), ("end",)),
    step("end", "end", ("merge",)),
)
NESTED = flow(
    step("start", "foreach", (), ("outer",)),
    step("outer", "foreach", ("start",), ("inner",)),
    step("inner", "linear", ("outer",), ("inner_join",)),
    step("inner_join", "join", ("inner",), ("outer_join",), is_foreach_join=True),
    step("outer_join", "join", ("inner_join",), ("end",), is_foreach_join=True),
    step("end", "end", ("outer_join",)),
)


def record(
    pathspec: str,
    indices: tuple[int, ...] = (),
    cloned: bool = True,
    num_splits: int | None = None,
    next_steps: tuple[str, ...] | None = None,
) -> TaskRecord:
    return TaskRecord(indices, pathspec, cloned, num_splits, next_steps)


def plan(shape: FlowShape, name: str, parents: dict[str, list[TaskRecord]]) -> list[TaskInstance]:
    return instances_for(shape.step(name), shape, parents, PARAMS)


# --- instances_for -------------------------------------------------------------------------------


def test_start_reads_the_parameters_task() -> None:
    assert plan(LINEAR, "start", {}) == [TaskInstance("start", (), (PARAMS,), None, True)]


@pytest.mark.parametrize("cloned", [True, False])
def test_linear_keeps_indices_and_cloned_flag(cloned: bool) -> None:
    parents = {"start": [record("new/start/1", cloned=cloned)]}
    assert plan(LINEAR, "process", parents) == [TaskInstance("process", (), ("new/start/1",), None, cloned)]


def test_foreach_fans_out_one_task_per_split() -> None:
    parents = {"start": [record("new/start/1", cloned=False, num_splits=3)]}
    assert plan(FOREACH, "body", parents) == [
        TaskInstance("body", (0,), ("new/start/1",), 0, False),
        TaskInstance("body", (1,), ("new/start/1",), 1, False),
        TaskInstance("body", (2,), ("new/start/1",), 2, False),
    ]


@pytest.mark.parametrize(
    ("body_cloned", "join_cloned"), [((True, True, True), True), ((True, False, True), False)]
)
def test_foreach_join_groups_items_in_split_order(
    body_cloned: tuple[bool, bool, bool], join_cloned: bool
) -> None:
    # Records arrive in any order; the join reads them in split order.
    body = [record(f"new/body/1-{i}", (i,), body_cloned[i]) for i in (2, 0, 1)]
    assert plan(FOREACH, "join", {"body": body}) == [
        TaskInstance("join", (), ("new/body/1-0", "new/body/1-1", "new/body/1-2"), None, join_cloned)
    ]


@pytest.mark.parametrize(("right_cloned", "join_cloned"), [(True, True), (False, False)])
def test_static_split_join_groups_every_branch(right_cloned: bool, join_cloned: bool) -> None:
    parents = {
        "left": [record("new/left/1")],
        "right": [record("new/right/1", cloned=right_cloned)],
    }
    assert plan(BRANCH, "join", parents) == [
        TaskInstance("join", (), ("new/left/1", "new/right/1"), None, join_cloned)
    ]


def test_static_split_starts_every_branch() -> None:
    parents = {"start": [record("new/start/1")]}
    assert plan(BRANCH, "left", parents) == [TaskInstance("left", (), ("new/start/1",), None, True)]
    assert plan(BRANCH, "right", parents) == [TaskInstance("right", (), ("new/start/1",), None, True)]


def test_split_switch_runs_only_the_chosen_branch() -> None:
    parents = {"start": [record("new/start/1", next_steps=("a",))]}
    assert plan(SWITCH, "a", parents) == [TaskInstance("a", (), ("new/start/1",), None, True)]
    assert plan(SWITCH, "b", parents) == []


def test_condition_merge_follows_the_branch_that_ran() -> None:
    # merge has two in_funcs but is not a join: one task, reading the branch that was taken.
    parents: dict[str, list[TaskRecord]] = {"a": [], "b": [record("new/b/1", cloned=False)]}
    assert plan(SWITCH, "merge", parents) == [TaskInstance("merge", (), ("new/b/1",), None, False)]


def test_nested_foreach_indices() -> None:
    outer = plan(NESTED, "outer", {"start": [record("new/start/1", num_splits=2)]})
    assert [(i.indices, i.split_index) for i in outer] == [((0,), 0), ((1,), 1)]

    parents = {
        "outer": [record("new/outer/1-0", (0,), num_splits=1), record("new/outer/1-1", (1,), num_splits=2)]
    }
    assert plan(NESTED, "inner", parents) == [
        TaskInstance("inner", (0, 0), ("new/outer/1-0",), 0, True),
        TaskInstance("inner", (1, 0), ("new/outer/1-1",), 0, True),
        TaskInstance("inner", (1, 1), ("new/outer/1-1",), 1, True),
    ]

    inner = [
        record("new/inner/1-1-1", (1, 1), cloned=False),
        record("new/inner/1-0-0", (0, 0)),
        record("new/inner/1-1-0", (1, 0)),
    ]
    assert plan(NESTED, "inner_join", {"inner": inner}) == [
        TaskInstance("inner_join", (0,), ("new/inner/1-0-0",), None, True),
        TaskInstance("inner_join", (1,), ("new/inner/1-1-0", "new/inner/1-1-1"), None, False),
    ]

    joined = [record("new/inner_join/1-1", (1,), cloned=False), record("new/inner_join/1-0", (0,))]
    assert plan(NESTED, "outer_join", {"inner_join": joined}) == [
        TaskInstance("outer_join", (), ("new/inner_join/1-0", "new/inner_join/1-1"), None, False)
    ]


# --- plan_step -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("indices", "task_id"), [((), "1"), ((3,), "1-3"), ((1, 0), "1-1-0")])
def test_task_id_for(indices: tuple[int, ...], task_id: str) -> None:
    assert task_id_for(indices) == task_id


OK = OriginTask("old/train/42", "42", ok=True)
FAILED = OriginTask("old/train/42", "42", ok=False)


# (origin task, inputs cloned, rerun, cloned, task id)
PLAN_CASES = [
    # Finished origin, unchanged inputs, not forced: the only case that clones.
    pytest.param(OK, True, False, True, "42", id="clone"),
    # Inputs were re-executed, so the task's data may differ: execute, keep the origin's task id.
    pytest.param(OK, False, False, False, "42", id="inputs-executed"),
    # from_step forces the step to run again.
    pytest.param(OK, True, True, False, "42", id="rerun"),
    # The origin task failed: execute under the origin's task id.
    pytest.param(FAILED, True, False, False, "42", id="origin-failed"),
    # The origin run never got to this task: execute under metaflow-dagster's task id.
    pytest.param(None, True, False, False, "1", id="origin-missing"),
]


@pytest.mark.parametrize(("origin", "inputs_cloned", "rerun", "cloned", "task_id"), PLAN_CASES)
def test_plan_step(
    origin: OriginTask | None, inputs_cloned: bool, rerun: bool, cloned: bool, task_id: str
) -> None:
    instance = TaskInstance("train", (), ("new/start/1",), None, inputs_cloned)
    origins: dict[tuple[int, ...], OriginTask] = {(): origin} if origin is not None else {}
    (action,) = plan_step([instance], origins, rerun=rerun)
    assert action.instance == instance
    assert action.clone is cloned
    assert action.origin == (origin if cloned else None)
    assert action.task_id == task_id


def test_plan_step_matches_foreach_tasks_by_index() -> None:
    instances = [TaskInstance("body", (i,), ("new/start/1",), i, True) for i in range(3)]
    origins: dict[tuple[int, ...], OriginTask] = {
        (0,): OriginTask("old/body/1-0", "1-0", ok=True),
        (1,): OriginTask("old/body/1-1", "1-1", ok=False),
    }
    actions = plan_step(instances, origins, rerun=False)
    assert [(a.instance.indices, a.clone, a.task_id) for a in actions] == [
        ((0,), True, "1-0"),
        ((1,), False, "1-1"),
        ((2,), False, "1-2"),
    ]
    assert actions[0].origin == origins[(0,)]


def test_plan_step_nested_missing_origin_uses_full_index_path() -> None:
    instance = TaskInstance("inner", (1, 0), ("new/outer/1-1",), 0, True)
    (action,) = plan_step([instance], {}, rerun=False)
    assert (action.clone, action.task_id) == (False, "1-1-0")
