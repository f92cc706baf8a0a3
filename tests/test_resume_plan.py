"""Tests for auto_resume.core.resume_plan: which tasks a resume run has, and which are cloned."""

from __future__ import annotations

from pathlib import Path

import pytest

from auto_resume.core.errors import UnsupportedFlowError
from auto_resume.core.flow_shape import FlowShape, OriginTask, StepShape
from auto_resume.core.resume_plan import TaskInstance, TaskRecord, instances_for, plan_step, task_id_for
from auto_resume.metaflow.flows import load_flow_shape

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
    widths: tuple[int, ...] | None = None,
) -> TaskRecord:
    # By default every enclosing foreach is 3 wide (what the foreach tests use).
    widths = (3,) * len(indices) if widths is None else widths
    return TaskRecord(indices, pathspec, cloned, num_splits, next_steps, widths)


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
        TaskInstance("body", (0,), ("new/start/1",), 0, False, (3,)),
        TaskInstance("body", (1,), ("new/start/1",), 1, False, (3,)),
        TaskInstance("body", (2,), ("new/start/1",), 2, False, (3,)),
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
        TaskInstance(
            "join",
            (),
            ("new/body/1-0", "new/body/1-1", "new/body/1-2"),
            None,
            join_cloned,
            is_foreach_join=True,
        )
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
        "outer": [
            record("new/outer/1-0", (0,), num_splits=1, widths=(2,)),
            record("new/outer/1-1", (1,), num_splits=2, widths=(2,)),
        ]
    }
    assert plan(NESTED, "inner", parents) == [
        TaskInstance("inner", (0, 0), ("new/outer/1-0",), 0, True, (2, 1)),
        TaskInstance("inner", (1, 0), ("new/outer/1-1",), 0, True, (2, 2)),
        TaskInstance("inner", (1, 1), ("new/outer/1-1",), 1, True, (2, 2)),
    ]

    inner = [
        record("new/inner/1-1-1", (1, 1), cloned=False, widths=(2, 2)),
        record("new/inner/1-0-0", (0, 0), widths=(2, 1)),
        record("new/inner/1-1-0", (1, 0), widths=(2, 2)),
    ]
    assert plan(NESTED, "inner_join", {"inner": inner}) == [
        TaskInstance("inner_join", (0,), ("new/inner/1-0-0",), None, True, (2,), True),
        TaskInstance("inner_join", (1,), ("new/inner/1-1-0", "new/inner/1-1-1"), None, False, (2,), True),
    ]

    joined = [
        record("new/inner_join/1-1-join", (1,), cloned=False, widths=(2,)),
        record("new/inner_join/1-0-join", (0,), widths=(2,)),
    ]
    assert plan(NESTED, "outer_join", {"inner_join": joined}) == [
        TaskInstance(
            "outer_join", (), ("new/inner_join/1-0-join", "new/inner_join/1-1-join"), None, False, (), True
        )
    ]


# A failed task leaves no record; everything that does not depend on it is still planned, so
# the new run holds all completed work for the next resume.


def test_foreach_join_waits_for_every_item() -> None:
    body = [record(f"new/body/1-{i}", (i,)) for i in (0, 2)]  # item 1 failed
    assert plan(FOREACH, "join", {"body": body}) == []


def test_nested_join_plans_only_complete_groups() -> None:
    # Item (1, 1) failed: inner_join (1,) waits; inner_join (0,) is planned (and cloned).
    inner = [
        record("new/inner/1-0-0", (0, 0), widths=(2, 2)),
        record("new/inner/1-0-1", (0, 1), widths=(2, 2)),
        record("new/inner/1-1-0", (1, 0), widths=(2, 2)),
    ]
    assert plan(NESTED, "inner_join", {"inner": inner}) == [
        TaskInstance("inner_join", (0,), ("new/inner/1-0-0", "new/inner/1-0-1"), None, True, (2,), True)
    ]
    # ... and outer_join then lacks inner_join (1,): it waits too.
    joined = [record("new/inner_join/1-0-join", (0,), widths=(2,))]
    assert plan(NESTED, "outer_join", {"inner_join": joined}) == []


def test_static_join_waits_for_every_branch() -> None:
    assert plan(BRANCH, "join", {"left": [record("new/left/1")], "right": []}) == []


def test_steps_after_a_failed_task_have_no_task() -> None:
    # process failed: end has no input, so no task (and no KeyError for a missing parent).
    assert plan(LINEAR, "end", {"process": []}) == []
    assert plan(LINEAR, "end", {}) == []


def test_foreach_body_chain_keeps_widths() -> None:
    # body1 -> body2 inside one foreach: body2's tasks carry the foreach width to the join.
    multi = flow(
        step("start", "foreach", (), ("body1",)),
        step("body1", "linear", ("start",), ("body2",)),
        step("body2", "linear", ("body1",), ("join",)),
        step("join", "join", ("body2",), ("end",), is_foreach_join=True),
        step("end", "end", ("join",)),
    )
    body1 = plan(multi, "body1", {"start": [record("new/start/1", num_splits=2)]})
    body1_records = [record(f"new/body1/1-{i.indices[0]}", i.indices, widths=i.widths) for i in body1]
    body2 = plan(multi, "body2", {"body1": body1_records})
    assert [(i.indices, i.widths, i.split_index) for i in body2] == [((0,), (2,), None), ((1,), (2,), None)]
    body2_records = [record(f"new/body2/1-{i.indices[0]}", i.indices, widths=i.widths) for i in body2]
    (join,) = plan(multi, "join", {"body2": body2_records})
    assert join.input_paths == ("new/body2/1-0", "new/body2/1-1")


# --- plan_step -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("indices", "task_id"), [((), "1"), ((3,), "1-3"), ((1, 0), "1-1-0")])
def test_task_id_for(indices: tuple[int, ...], task_id: str) -> None:
    assert task_id_for(indices) == task_id


@pytest.mark.parametrize(("indices", "task_id"), [((), "1"), ((3,), "1-3-join"), ((1, 0), "1-1-0-join")])
def test_task_id_for_foreach_join(indices: tuple[int, ...], task_id: str) -> None:
    # metaflow-dagster's compound op names a nested join's task after its foreach task + "-join".
    assert task_id_for(indices, foreach_join=True) == task_id


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


def test_plan_step_nested_join_without_origin_gets_join_suffix() -> None:
    instance = TaskInstance("inner_join", (1,), ("new/inner/1-1-0",), None, True, (2,), True)
    (action,) = plan_step([instance], {}, rerun=False)
    assert (action.clone, action.task_id) == (False, "1-1-join")


# --- shapes a resume cannot be planned for: refused when the flow is loaded ------------------

RECURSIVE_FLOW = """\
from metaflow import FlowSpec, step


class LoopFlow(FlowSpec):
    @step
    def start(self):
        self.n = 0
        self.next(self.loop)

    @step
    def loop(self):
        self.n += 1
        self.done = "yes" if self.n > 2 else "no"
        self.next({"no": self.loop, "yes": self.end}, condition="done")

    @step
    def end(self):
        pass
"""

PARALLEL_FLOW = """\
from metaflow import FlowSpec, parallel, step


class GangFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @parallel
    @step
    def train(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
"""


@pytest.mark.parametrize(
    ("source", "flow_name", "fragment"),
    [
        # A switch that goes back to itself: Metaflow does not list it as its own in_func.
        pytest.param(RECURSIVE_FLOW, "LoopFlow", "step 'loop' goes back to loop", id="recursive"),
        # A gang of @parallel tasks needs Metaflow's control/worker runtime.
        pytest.param(PARALLEL_FLOW, "GangFlow", "@parallel step", id="parallel"),
    ],
)
def test_unsupported_shapes_are_refused_at_load(
    tmp_path: Path, source: str, flow_name: str, fragment: str
) -> None:
    flow_file = tmp_path / f"{flow_name.lower()}.py"
    flow_file.write_text(source)
    # UnsupportedFlowError: the code location refuses that flow alone and loads the others.
    with pytest.raises(UnsupportedFlowError) as info:
        load_flow_shape(flow_file, flow_name)
    assert fragment in str(info.value)
    assert "remove the flow from the policy" in str(info.value)
