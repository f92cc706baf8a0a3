"""Every flow shape metaflow-dagster can run, resumed by the real daemon on PostgreSQL.

Nested foreach (three levels), a conditional (split-switch), parameters of every Metaflow type,
@retry / @catch / @environment / --tag, a chain of two failed attempts, and resume from a chosen
step. A foreach with two body steps cannot run as a metaflow-dagster job (0.3.7 generates a job
that does not load), so its origin run is made by Metaflow's own runtime and its resume job is
launched by hand, which is also how a user resumes a run by id. Counter files written by the
flows' user code show what ran again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from auto_resume.dagster import tags
from auto_resume.dagster.run_facts import metaflow_run_id
from auto_resume.metaflow.deployment import read_deployment
from tests.e2e.harness import ROOT, Deployment, counts, wait_for_resume_of, wait_for_run

pytestmark = pytest.mark.e2e

ALPHA = 42  # every example flow's default is 1
NESTED_LEAVES = [f"{i}_{j}_{k}" for i in range(2) for j in range(2) for k in range(2)]
TYPED = {
    "alpha": ALPHA,
    "ratio": 2.5,
    "label": "two words",
    "loud": True,
    "config": '{"layers": [3, 4], "name": "x"}',
}


@dataclass(frozen=True)
class Scenario:
    location: str
    job: str
    config: dict[str, object]
    # Resume runs the sensor must create before one succeeds.
    attempts: int = 1


SCENARIOS = {
    "nested": Scenario("nested_foreach_flow", "NestedForeachFlow", {"alpha": ALPHA, "fail_at": "leaf:1_0_1"}),
    "chain": Scenario(
        "nested_foreach_flow",
        "NestedForeachFlow",
        {"alpha": ALPHA, "fail_twice_at": "leaf:0_1_1"},
        attempts=2,
    ),
    # No injected failure: metaflow-dagster 0.3.7's own switch op fails after start succeeded.
    "switch": Scenario("switch_flow", "SwitchFlow", {"alpha": ALPHA, "branch": "low"}),
    "decorated_start": Scenario("decorated_flow", "DecoratedFlow", {**TYPED, "fail_at": "start"}),
    "decorated_end": Scenario("decorated_flow", "DecoratedFlow", {**TYPED, "fail_at": "end"}),
}


@dataclass(frozen=True)
class Outcome:
    workdir: Path
    failed: DagsterRun
    resumes: list[DagsterRun]  # in lineage order; the last one succeeded
    metaflow_run_ids: list[str]  # of failed, then of each resume


@dataclass(frozen=True)
class ByHand:
    """A resume job launched by hand (run config typed by a user), and what it worked on."""

    workdir: Path
    origin_metaflow_run_id: str
    resume: DagsterRun
    resumed_metaflow_run_id: str


def launch_resume(deployment: Deployment, job: str, origin_run_id: str, from_step: str | None = None) -> str:
    """Launch ``<job>_resume`` in the auto_resume location, as a user would from the CLI."""
    config: dict[str, Any] = {"origin_run_id": origin_run_id}
    if from_step:
        config["from_step"] = from_step
    return deployment.launch_resume("auto_resume", f"{job}_resume", config)


def run_with_metaflow(
    deployment: Deployment, definitions: str, workdir: Path, params: dict[str, object]
) -> str:
    """Run a flow with Metaflow's own local runtime, with the deployment's datastore; its run id."""
    flow = read_deployment(ROOT / "examples" / "generated" / definitions)
    run_id_file = workdir / "metaflow-run-id"
    command = [sys.executable, str(flow.flow_file), *flow.top_args, "run", f"--run-id-file={run_id_file}"]
    command += [f"--{name}={value}" for name, value in {**params, "workdir": workdir}.items()]
    result = subprocess.run(
        command,
        cwd=flow.flow_file.parent,
        env={**deployment.env, **flow.step_env},
        capture_output=True,
        text=True,
    )
    # The injected failure leaves its marker; Metaflow's --quiet output has no traceback.
    assert result.returncode != 0 and list(workdir.glob("*.failed-once")), result.stderr[-3000:]
    return run_id_file.read_text().strip()


@pytest.fixture(scope="module")
def outcomes(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Start every scenario at once, then wait for each failure and its automatic resume(s)."""
    instance = deployment.instance()
    workdirs = {name: tmp_path_factory.mktemp(f"shape-{name}") for name in (*SCENARIOS, "from_step", "multi")}
    # `dagster job launch` loads the whole workspace each time: start the launches together.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(
                deployment.launch,
                scenario.location,
                scenario.job,
                {**scenario.config, "workdir": str(workdirs[name])},
            )
            for name, scenario in SCENARIOS.items()
        }
        # Resume from a chosen step needs a run that succeeded.
        linear_future = pool.submit(
            deployment.launch,
            "linear_flow",
            "LinearFlow",
            {"alpha": ALPHA, "workdir": str(workdirs["from_step"])},
        )
        # A foreach with two body steps, failed in Metaflow's own runtime, resumed by hand.
        multi_workdir = workdirs["multi"]
        multi_origin = run_with_metaflow(
            deployment, "multi_body_flow_dagster.py", multi_workdir, {"alpha": ALPHA, "fail_at": "body2:2"}
        )
        multi_resume = launch_resume(deployment, "MultiBodyFlow", multi_origin)
        launched = {name: (workdirs[name], future.result()) for name, future in futures.items()}
        linear_run, linear_workdir = linear_future.result(), workdirs["from_step"]

    results: dict[str, Any] = {}
    for name, (workdir, run_id) in launched.items():
        failed = wait_for_run(instance, run_id)
        assert failed.status == DagsterRunStatus.FAILURE, f"{name}: the run did not fail"
        resumes, parent = [], run_id
        for _ in range(SCENARIOS[name].attempts):
            resume = wait_for_run(
                instance, wait_for_resume_of(instance, parent, deployment=deployment).run_id
            )
            resumes.append(resume)
            parent = resume.run_id
        results[name] = Outcome(
            workdir=workdir,
            failed=failed,
            resumes=resumes,
            metaflow_run_ids=[
                metaflow_run_id(instance, r) or "" for r in [run_id, *(r.run_id for r in resumes)]
            ],
        )
    results["multi_body"] = by_hand(instance, multi_workdir, multi_origin, multi_resume)
    linear = wait_for_run(instance, linear_run)
    assert linear.status == DagsterRunStatus.SUCCESS
    linear_origin = metaflow_run_id(instance, linear_run) or ""
    from_step = launch_resume(deployment, "LinearFlow", linear_origin, from_step="process")
    results["from_step"] = by_hand(instance, linear_workdir, linear_origin, from_step)
    return results


def by_hand(instance: DagsterInstance, workdir: Path, origin: str, run_id: str) -> ByHand:
    resume = wait_for_run(instance, run_id)
    return ByHand(workdir, origin, resume, metaflow_run_id(instance, run_id) or "")


def metaflow_run(flow_name: str, run_id: str) -> Any:
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(ROOT)
    from metaflow import Flow, namespace

    namespace(None)
    return Flow(flow_name)[run_id]


def assert_lineage(outcome: Outcome) -> None:
    """Every resume succeeded but the last failed; tags link each to its parent and the root."""
    for attempt, resume in enumerate(outcome.resumes, start=1):
        last = attempt == len(outcome.resumes)
        assert resume.status == (DagsterRunStatus.SUCCESS if last else DagsterRunStatus.FAILURE)
        parent = outcome.resumes[attempt - 2].run_id if attempt > 1 else outcome.failed.run_id
        assert resume.tags[tags.PARENT_RUN_ID] == parent
        assert resume.tags[tags.ROOT_RUN_ID] == outcome.failed.run_id
        assert resume.tags[tags.ATTEMPT] == str(attempt)
        assert resume.tags[tags.ORIGIN_METAFLOW_RUN_ID] == outcome.metaflow_run_ids[attempt - 1]
    assert len(set(outcome.metaflow_run_ids)) == len(outcome.metaflow_run_ids)


def nested_counts(again: str, times: int) -> dict[str, int]:
    expected = {"start": 1, "join_outer": 1, "end": 1, "outer-0": 1, "outer-1": 1}
    for i in range(2):
        expected[f"join_middle-{i}"] = 1
        for j in range(2):
            expected[f"middle-{i}_{j}"] = expected[f"join_leaf-{i}_{j}"] = 1
    expected.update({f"leaf-{leaf}": 1 for leaf in NESTED_LEAVES})
    expected[f"leaf-{again}"] = times
    return expected


def test_nested_foreach_resumes_only_the_failed_leaf(outcomes: dict[str, Any]) -> None:
    outcome: Outcome = outcomes["nested"]
    assert_lineage(outcome)
    # Outer item 1's compound op stopped at leaf 1_0_1: what it never reached ran once, in the resume.
    assert counts(outcome.workdir) == nested_counts("1_0_1", 2)
    run = metaflow_run("NestedForeachFlow", outcome.metaflow_run_ids[-1])
    assert run.successful
    assert run["end"].task.data.values == sorted(
        100 * i + 10 * j + k for i in (0, 1) for j in (0, 1) for k in (0, 1)
    )
    # Same task ids as metaflow-dagster's own job, cloned or executed: runs are interchangeable.
    assert sorted(t.id for t in run["leaf"]) == sorted(
        f"1-{leaf.replace('_', '-')}" for leaf in NESTED_LEAVES
    )
    assert sorted(t.id for t in run["join_leaf"]) == ["1-0-0-join", "1-0-1-join", "1-1-0-join", "1-1-1-join"]
    assert sorted(t.id for t in run["join_middle"]) == ["1-0-join", "1-1-join"]


def test_chain_reuses_every_task_of_every_earlier_attempt(outcomes: dict[str, Any]) -> None:
    outcome: Outcome = outcomes["chain"]
    assert_lineage(outcome)
    # leaf 0_1_1 failed in the run and in the first resume; nothing else ever ran twice, though
    # the first resume failed before join_leaf 0_0 (complete in the origin) was needed.
    assert counts(outcome.workdir) == nested_counts("0_1_1", 3)
    assert metaflow_run("NestedForeachFlow", outcome.metaflow_run_ids[-1]).successful


def test_switch_clones_start_and_follows_its_branch(outcomes: dict[str, Any]) -> None:
    outcome: Outcome = outcomes["switch"]
    assert_lineage(outcome)
    # start ran once (in metaflow-dagster's job), high never: the clone kept the branch taken.
    assert counts(outcome.workdir) == {"start": 1, "low": 1, "merge": 1, "end": 1}
    assert (outcome.workdir / "alpha.txt").read_text().split() == [str(ALPHA), str(-ALPHA)]
    run = metaflow_run("SwitchFlow", outcome.metaflow_run_ids[-1])
    assert run.successful
    assert sorted(step.id for step in run) == ["end", "low", "merge", "start"]


def _typed_line() -> list[str]:
    return [str(ALPHA), "2.5", "two", "words", "True", "{'layers':", "[3,", "4],", "'name':", "'x'}"]


def test_typed_parameters_retry_catch_environment_when_every_step_executes(outcomes: dict[str, Any]) -> None:
    outcome: Outcome = outcomes["decorated_start"]
    assert_lineage(outcome)
    # start failed, so everything executed in the resume: flaky failed once and the resume job
    # retried it (@retry times=1), guarded raised and @catch kept the task successful.
    assert counts(outcome.workdir) == {"start": 2, "flaky": 2, "guarded": 1, "end": 1}
    assert (outcome.workdir / "alpha.txt").read_text().split() == _typed_line()
    assert (outcome.workdir / "env.txt").read_text().split() == ["from-environment-decorator", "caught=True"]
    run = metaflow_run("DecoratedFlow", outcome.metaflow_run_ids[-1])
    assert run.successful
    assert run["flaky"].task.current_attempt == 1
    assert "team:auto-resume" in run["end"].task.tags  # the definitions file's --tag


def test_retried_and_caught_tasks_are_cloned(outcomes: dict[str, Any]) -> None:
    outcome: Outcome = outcomes["decorated_end"]
    assert_lineage(outcome)
    assert counts(outcome.workdir) == {"start": 1, "flaky": 2, "guarded": 1, "end": 2}
    assert (outcome.workdir / "alpha.txt").read_text().split() == _typed_line()
    assert (outcome.workdir / "env.txt").read_text().split() == ["from-environment-decorator", "caught=True"]
    run = metaflow_run("DecoratedFlow", outcome.metaflow_run_ids[-1])
    assert run.successful
    assert run["end"].task.data.config == {"layers": [3, 4], "name": "x"}


def test_foreach_with_two_body_steps_resumes_a_metaflow_run(outcomes: dict[str, Any]) -> None:
    hand: ByHand = outcomes["multi_body"]
    assert hand.resume.status == DagsterRunStatus.SUCCESS
    expected = {"start": 1, "join": 1, "end": 1, **{f"body{s}-{i}": 1 for s in (1, 2) for i in range(4)}}
    expected["body2-2"] = 2
    assert counts(hand.workdir) == expected
    assert (hand.workdir / "alpha.txt").read_text().split() == [str(ALPHA), "100"]
    assert metaflow_run("MultiBodyFlow", hand.resumed_metaflow_run_id).successful


def test_resume_from_a_chosen_step_reruns_it_and_what_follows(outcomes: dict[str, Any]) -> None:
    hand: ByHand = outcomes["from_step"]
    assert hand.resume.status == DagsterRunStatus.SUCCESS
    assert counts(hand.workdir) == {"start": 1, "process": 2, "end": 2}
    assert (hand.workdir / "alpha.txt").read_text().split() == [str(ALPHA), str(ALPHA * 10 + 1)]
    run = metaflow_run("LinearFlow", hand.resumed_metaflow_run_id)
    assert run.successful
    assert run["start"].task.metadata_dict.get("origin-run-id") == hand.origin_metaflow_run_id
    # An executed task of a resume records its origin too, as in `metaflow resume` (issue 10).
    assert run["process"].task.metadata_dict.get("origin-run-id") == hand.origin_metaflow_run_id
