"""Tests for auto_resume.cli.explain without an instance: the plan preview over a fake origin.

``auto-resume explain`` itself, on a real instance and Metaflow run, is tested in
tests/test_cli_operator.py.
"""

from __future__ import annotations

from auto_resume.cli.explain import preview_plan
from auto_resume.core.flow_shape import FlowShape, OriginTask, StepShape, TaskOutcome


def test_plan_of_a_foreach_clones_every_finished_item() -> None:
    """The preview walks the flow as the resume job does: the failed item and what follows run."""
    flow = FlowShape(
        "ForeachFlow",
        (
            StepShape("start", "foreach", (), ("body",), False),
            StepShape("body", "linear", ("start",), ("join",), False),
            StepShape("join", "join", ("body",), ("end",), True),
            StepShape("end", "end", ("join",), (), False),
        ),
    )

    class Origin:
        """The origin run's datastore as read by OriginReader: item 3 of body failed."""

        def origin_tasks(self, run_id: str, step_name: str) -> dict[tuple[int, ...], OriginTask]:
            if step_name == "_parameters":
                return {(): OriginTask(f"{run_id}/_parameters/params", "params", True)}
            if step_name == "start":
                return {(): OriginTask(f"{run_id}/start/1", "1", True)}
            if step_name == "body":
                return {(i,): OriginTask(f"{run_id}/body/1-{i}", f"1-{i}", i != 3) for i in range(6)}
            return {}

        def task_outcome(self, pathspec: str, step_type: str) -> TaskOutcome:
            return TaskOutcome(6 if step_type == "foreach" else None, None)

    plan = preview_plan(Origin(), flow, "dagster-42eecc53e2dc")
    assert [(t.step, t.task_id, t.action) for t in plan.tasks] == [
        ("start", "1", "clone"),
        *[("body", f"1-{i}", "run" if i == 3 else "clone") for i in range(6)],
        ("join", "1", "run"),
        ("end", "1", "run"),
    ]
    assert (plan.cloned, plan.executed, plan.unknown_after) == (6, 3, ())
