"""Error rules that change how a resume runs, on the real daemon and PostgreSQL.

LinearFlow's counter lines show each execution of a step's code, with the value of
``AUTO_RESUME_INJECTED`` when a resume's injected ``@environment`` set it (demo_support).
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster import tags
from tests.e2e.harness import Deployment, counts, wait_for_resume_of, wait_for_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

INJECT = 'environment:vars={"AUTO_RESUME_INJECTED": "more-memory"}'
WITH_RULE = f"    - {{action: resume, step: process, with: ['{INJECT}'], metaflow_tags: [oom-fix]}}\n"
FROM_START_RULE = "    - {action: resume, step: end, exception: RuntimeError, from_step: start}\n"


@contextmanager
def error_rules(deployment: Deployment, rules: str) -> Iterator[None]:
    """The session policy with these error rules in its defaults, for the ``with`` block."""
    original = deployment.policy_file.read_text()
    anchor = "defaults:\n  max_attempts: 2\n"
    assert anchor in original
    deployment.policy_file.write_text(original.replace(anchor, f"{anchor}  errors:\n{rules}"))
    try:
        yield
    finally:
        deployment.policy_file.write_text(original)


def lines(workdir: Path, step: str) -> list[str]:
    return (workdir / f"{step}.count").read_text().splitlines()


def test_a_rule_with_with_changes_only_the_attempt_it_decided(deployment: Deployment, tmp_path: Path) -> None:
    """process fails (the rule matches: inject), then end fails in that resume (no rule: plain)."""
    instance = deployment.instance()
    workdir = tmp_path / "counters"
    with error_rules(deployment, WITH_RULE):
        failed = deployment.launch(
            "linear_flow", "LinearFlow", {"workdir": str(workdir), "fail_at": "process,end"}
        )
        assert wait_for_run(instance, failed).status == DagsterRunStatus.FAILURE
        first = wait_for_resume_of(instance, failed, deployment=deployment)
        assert wait_for_run(instance, first.run_id).status == DagsterRunStatus.FAILURE
        # explain, under the same policy, says which rule decides it and what the resume carries.
        shown = deployment.cli("explain", "--json", failed)
        assert shown.returncode == 0, shown.stderr
        decision = json.loads(shown.stdout)["decision"]
        assert decision["error_rule"] == 0 and decision["changes"]["with"] == [INJECT]
        second = wait_for_resume_of(instance, first.run_id, deployment=deployment)
        assert wait_for_run(instance, second.run_id).status == DagsterRunStatus.SUCCESS, (
            deployment.diagnostics()
        )
    # start ran once (cloned twice, untouched); process ran plain, then with the injection;
    # end ran with it in the first resume, and without it in the second, which no rule decided.
    assert lines(workdir, "start") == ["ran"]
    assert lines(workdir, "process") == ["ran", "ran with AUTO_RESUME_INJECTED=more-memory"]
    assert lines(workdir, "end") == ["ran with AUTO_RESUME_INJECTED=more-memory", "ran"]
    recorded = json.loads(first.tags[tags.CHANGES])
    assert recorded == {"with": [INJECT], "metaflow_tags": ["oom-fix"], "because": ["errors[0]"]}
    assert tags.CHANGES not in second.tags
    config = first.run_config["ops"]["LinearFlow_resume__origin"]["config"]
    assert (config["with"], config["tags"]) == ([INJECT], ["oom-fix"])


def test_a_rule_with_from_step_reruns_that_step_and_what_follows(
    deployment: Deployment, tmp_path: Path
) -> None:
    instance = deployment.instance()
    workdir = tmp_path / "counters"
    with error_rules(deployment, FROM_START_RULE):
        failed = deployment.launch("linear_flow", "LinearFlow", {"workdir": str(workdir), "fail_at": "end"})
        assert wait_for_run(instance, failed).status == DagsterRunStatus.FAILURE
        resume = wait_for_resume_of(instance, failed, deployment=deployment)
        assert wait_for_run(instance, resume.run_id).status == DagsterRunStatus.SUCCESS, (
            deployment.diagnostics()
        )
    assert counts(workdir) == {"start": 2, "process": 2, "end": 2}
    assert json.loads(resume.tags[tags.CHANGES]) == {"from_step": "start", "because": ["errors[0]"]}


SLOW = 'environment:vars={"AUTO_RESUME_EXAMPLE_SLEEP": "600"}'
TIME_LIMIT_RULE = (
    f"    - {{action: resume, step: process, message: 'injected failure', with: ['{SLOW}'],"
    " max_runtime_seconds: 10}\n"
)


def step_processes(metaflow_run_id: str) -> list[int]:
    """Processes whose command line runs a task of ``metaflow_run_id``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--run-id={metaflow_run_id}".encode() in argv:
            found.append(int(proc.name))
    return found


def test_a_time_limit_stops_the_resume_and_its_tasks(deployment: Deployment, tmp_path: Path) -> None:
    """The rule's resume runs process slowly past its max_runtime_seconds: Dagster's run monitoring
    (dagster.yaml) stops the run, its Metaflow task with it; the next resume, plain, finishes."""
    instance = deployment.instance()
    workdir = tmp_path / "counters"
    with error_rules(deployment, TIME_LIMIT_RULE):
        failed = deployment.launch(
            "linear_flow", "LinearFlow", {"workdir": str(workdir), "fail_at": "process"}
        )
        assert wait_for_run(instance, failed).status == DagsterRunStatus.FAILURE
        limited = wait_for_resume_of(instance, failed, deployment=deployment)
        assert limited.tags[tags.DAGSTER_MAX_RUNTIME] == "10"
        assert wait_for_run(instance, limited.run_id).status == DagsterRunStatus.FAILURE
        metaflow_id = make_run_id(limited.run_id)
        assert wait_until(lambda: not step_processes(metaflow_id), 30, "the stopped run's task still runs")
        plain = wait_for_resume_of(instance, limited.run_id, deployment=deployment)
        assert wait_for_run(instance, plain.run_id).status == DagsterRunStatus.SUCCESS, (
            deployment.diagnostics()
        )
    messages = [entry.message for entry in instance.all_logs(limited.run_id)]
    assert any("Exceeded maximum runtime of 10 seconds" in m for m in messages), messages[-5:]
    assert tags.DAGSTER_MAX_RUNTIME not in plain.tags
    assert counts(workdir) == {"start": 1, "process": 3, "end": 1}
