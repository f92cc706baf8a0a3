"""Resume when the fix is deployed, on the real daemon and PostgreSQL.

A flow of its own (``FixMeFlow``, in a tmp directory beside a copy of demo_support.py; listed as a
``flow_file:`` entry, or compiled by metaflow-dagster and served as a code location of its own) has
a deterministic bug: its ``process`` step reads a key that does not exist.
An error rule gives a ``KeyError`` up with ``on_code_change: resume``, so the failure is parked.
An edit that leaves the code fingerprint unchanged (a new file nothing imports, the flow file
rewritten with the same bytes) resumes nothing; fixing the flow file resumes the failure within a
tick, with no reload (the definitions file is recompiled, as a deployment would, which changes
nothing the fingerprint reads): start is cloned, process runs the fixed code, the run succeeds.
"""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from auto_resume.dagster import tags
from auto_resume.metaflow.code_fingerprint import code_fingerprint
from auto_resume.metaflow.commands import compile_definitions
from tests.e2e.harness import (
    ROOT,
    SeparateDeployment,
    counts,
    sensor_ticks,
    wait_for_resume_of,
    wait_for_run,
    wait_for_ticks,
    write_policy,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

JOB = "FixMe"
BUGGY = """\
from demo_support import record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step

SETTINGS = {"rate": 2}


class FixMeFlow(FlowSpec):
    workdir = Parameter("workdir", default="", help="Where counter files go")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, "", "start")
        self.value = 10
        self.next(self.process)

    @step
    def process(self):
        record_and_maybe_fail(self.workdir, "", "process")
        self.value *= SETTINGS["ratio"]
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, "", "end")
        record_result(self.workdir, self.value)


if __name__ == "__main__":
    FixMeFlow()
"""
FIXED = BUGGY.replace('SETTINGS["ratio"]', 'SETTINGS["rate"]')
RULE = "  errors:\n    - {action: never, exception: KeyError, on_code_change: resume}\n"


class CodeChangeDeployment(SeparateDeployment):
    """Its own daemon and policy, listing only FixMeFlow: as a flow file (``definitions`` False,
    job ``FixMe`` in the auto_resume location) or compiled (job ``FixMeFlow``, location ``fix_me``)."""

    def __init__(self, base: Path, definitions: bool) -> None:
        super().__init__(base)
        self.definitions = definitions
        self.job = "FixMeFlow" if definitions else JOB
        self.location = "fix_me" if definitions else "auto_resume"
        self.flows = base / "flows"
        self.flow_file = self.flows / "fix_me_flow.py"
        self.definitions_file = self.flows / "fix_me_dagster.py"

    def compile(self) -> None:
        """metaflow-dagster's definitions file of the flow file, as the session compiles its flows."""
        env = {**os.environ, "METAFLOW_USER": "auto-resume", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(ROOT)}
        compile_definitions(
            self.flow_file, self.definitions_file, env, ("--datastore=local", "--metadata=local")
        )

    def configure_home(self, home: Path) -> str:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        self.flows.mkdir()
        shutil.copy(ROOT / "auto_resume" / "examples" / "demo_support.py", self.flows)
        self.flow_file.write_text(BUGGY)
        locations = (
            "load_from:\n  - python_module:\n      module_name: auto_resume.definitions\n"
            f"      working_directory: {ROOT}\n      location_name: auto_resume\n"
        )
        if self.definitions:
            self.compile()
            locations += (
                f"  - python_file:\n      relative_path: {self.definitions_file}\n"
                f"      location_name: {self.location}\n"
            )
        workspace = self.base / "workspace.yaml"
        workspace.write_text(locations)
        return str(workspace)

    def start_daemon(self) -> None:
        assert self.deployment is not None
        policy = self.deployment.policy_file
        write_policy(policy, max_attempts=2, extra=RULE)
        # Only this flow: the examples' resume jobs would only slow the location's load.
        text = policy.read_text()
        entry = (
            f"  - definitions_file: {self.definitions_file}\n"
            if self.definitions
            else f"  - flow_file: {self.flow_file}\n    job_name: {JOB}\n"
        )
        policy.write_text(text[: text.index("flows:\n")] + f"flows:\n{entry}")
        super().start_daemon()


@pytest.fixture(params=[False, True], ids=["flow_file", "definitions_file"])
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CodeChangeDeployment]:
    with CodeChangeDeployment(tmp_path / "deployment", definitions=request.param) as deployment:
        yield deployment


def _parked(instance: DagsterInstance, run_id: str) -> dict[str, str] | None:
    run = instance.get_run_by_id(run_id)
    return dict(run.tags) if run is not None and tags.PARKED in run.tags else None


def test_a_parked_failure_is_resumed_once_its_code_is_fixed(
    running: CodeChangeDeployment, tmp_path: Path
) -> None:
    deployment = running.deployment
    assert deployment is not None
    instance = deployment.instance()
    flow_file = running.flow_file
    workdir = tmp_path / "counters"
    if running.definitions:
        failed = deployment.launch(running.location, running.job, {"workdir": str(workdir)})
    else:
        config = {"ops": {f"{JOB}__params": {"config": {"workdir": str(workdir)}}}}
        failed = deployment.launch_with(running.location, JOB, config)
    assert wait_for_run(instance, failed).status == DagsterRunStatus.FAILURE, deployment.diagnostics()

    # Given up as deterministic by the rule, and parked with the code's fingerprint.
    parked = wait_until(lambda: _parked(instance, failed), 120, "not parked", deployment.diagnostics)
    before = code_fingerprint(flow_file)
    assert parked[tags.PARKED] == tags.PARKED_WAITING
    assert parked[tags.PARKED_CODE] == before
    assert tags.GAVE_UP not in parked
    # The tags are written during the tick; its message once it has finished.
    saying = f"run {failed} ({running.job}): park (code {before})"

    def park_message() -> str | None:
        said = [t.tick_data.skip_reason or "" for t in sensor_ticks(instance)]
        return next((reason for reason in said if saying in reason), None)

    print("tick: " + wait_until(park_message, 60, "no tick says it parked", deployment.diagnostics))

    # Edits that leave the fingerprint as it was: a file nothing imports, the same bytes rewritten.
    edited = time.time()
    (running.flows / "notes.py").write_text("TODO = 'rename SETTINGS'\n")
    flow_file.write_text(BUGGY)
    os.utime(flow_file)
    assert code_fingerprint(flow_file) == before
    wait_for_ticks(instance, 3, after=edited)
    assert instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: failed})) == []
    assert _parked(instance, failed) == parked

    # The fix: within a tick, with no reload, the parked failure is resumed with the fixed code.
    flow_file.write_text(FIXED)
    after = code_fingerprint(flow_file)
    if running.definitions:
        running.compile()  # as a deployment of the fix would; the fingerprint does not read it
    resume = wait_for_resume_of(instance, failed, timeout=60, deployment=deployment)
    print(f"resume {resume.run_id}: " + ", ".join(f"{k}={v}" for k, v in sorted(resume.tags.items())))
    assert resume.tags[tags.CODE_CHANGED] == f"{before} -> {after}"
    assert resume.tags[tags.ATTEMPT] == "1"  # a fresh attempt budget
    assert resume.tags[tags.ROOT_RUN_ID] == failed  # a new lineage, rooted at the parked run
    finished = wait_for_run(instance, resume.run_id)
    assert finished.status == DagsterRunStatus.SUCCESS, deployment.diagnostics()
    # start was cloned (its code ran once), process ran again with the fix, end ran once.
    assert counts(workdir) == {"start": 1, "process": 2, "end": 1}
    assert (workdir / "alpha.txt").read_text().split() == ["20"]
    # Answered: no longer parked, and resumed only once.
    wait_until(
        lambda: (_parked(instance, failed) or {}).get(tags.PARKED) == tags.PARKED_RESUMED,
        60,
        "still parked after its resume",
        deployment.diagnostics,
    )
    assert len(instance.get_runs(RunsFilter(tags={tags.PARENT_RUN_ID: failed}))) == 1
