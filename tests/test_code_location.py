"""Tests for auto_resume.dagster.code_location: the Definitions a policy produces, or why it cannot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from dagster import Definitions, instance_for_test

from auto_resume.dagster.code_location import build_definitions
from auto_resume.dagster.disabled_flows import DisabledFlow
from auto_resume.dagster.policy_store import fall_back, record_good
from auto_resume.metaflow.commands import compile_definitions
from auto_resume.policy.loading import PolicyError

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED = REPO_ROOT / "examples" / "generated"
SPLIT_IN_A_BRANCH_FLOW = REPO_ROOT / "tests" / "e2e" / "flows" / "split_in_branch_flow.py"
EXAMPLES = {
    "LinearFlow": ("linear_flow_dagster.py", ["start", "process", "end"]),
    "BranchFlow": ("branch_flow_dagster.py", ["start", "left", "right", "join", "end"]),
    "ForeachFlow": ("foreach_flow_dagster.py", ["start", "body", "join", "end"]),
}


def generated(name: str) -> Path:
    path = GENERATED / name
    assert path.is_file(), f"{path} is missing: run `bash scripts/setup.sh` first"
    return path


def write_policy(directory: Path, *definitions_files: Path) -> Path:
    path = directory / "policy.yaml"
    lines = ["version: 1", "flows:"] + [f"  - definitions_file: {f}" for f in definitions_files]
    path.write_text("\n".join(lines) + "\n")
    return path


def op_names(defs: Definitions) -> list[str]:
    return [node.name for job in defs.resolve_all_job_defs() for node in job.all_node_defs]


def test_examples_give_resume_jobs_and_sensor(tmp_path: Path) -> None:
    files = [generated(file_name) for file_name, _ in EXAMPLES.values()]
    defs = build_definitions(write_policy(tmp_path, *files))

    assert sorted(job.name for job in defs.resolve_all_job_defs()) == sorted(
        f"{job}_resume" for job in EXAMPLES
    )
    for job_name, (_, steps) in EXAMPLES.items():
        resume = defs.resolve_job_def(f"{job_name}_resume")
        assert sorted(node.name for node in resume.all_node_defs) == sorted(
            [f"{job_name}_resume__origin", f"{job_name}_resume__finish"]
            + [f"{job_name}_resume__step_{step}" for step in steps]
        )

    sensor = defs.resolve_sensor_def("auto_resume_sensor")
    assert sorted(target.job_name for target in sensor.targets) == sorted(f"{job}_resume" for job in EXAMPLES)

    names = op_names(defs)
    assert len(names) == len(set(names))


def test_resume_job_wires_steps_like_the_flow(tmp_path: Path) -> None:
    defs = build_definitions(write_policy(tmp_path, generated("branch_flow_dagster.py")))
    job = defs.resolve_job_def("BranchFlow_resume")
    join = job.graph.node_named("BranchFlow_resume__step_join")
    assert sorted(i.name for i in join.definition.input_defs) == ["from_left", "from_right", "resume"]
    start = job.graph.node_named("BranchFlow_resume__step_start")
    assert [i.name for i in start.definition.input_defs] == ["resume"]


def test_repo_policy_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The committed policy.yaml is what the deployed code location loads: a broken location
    # must fail here, not in a deployment.
    monkeypatch.chdir(REPO_ROOT)
    defs = build_definitions(Path("policy.yaml"))
    shapes = ("NestedForeachFlow", "MultiBodyFlow", "SwitchFlow", "DecoratedFlow")  # tests/e2e/test_shapes.py
    from_file = ("SwitchFromFile", "MultiBodyFromFile")  # flow_file entries: their job and resume job
    assert {job.name for job in defs.resolve_all_job_defs()} == {
        *(f"{job}_resume" for job in (*EXAMPLES, *shapes, *from_file)),
        *from_file,
    }
    assert defs.resolve_sensor_def("auto_resume_sensor").name == "auto_resume_sensor"


def build_with_disabled(policy: Path) -> tuple[Definitions, list[DisabledFlow]]:
    disabled: list[DisabledFlow] = []
    return build_definitions(policy, disabled=disabled), disabled


def resume_jobs(defs: Definitions) -> list[str]:
    return sorted(job.name for job in defs.resolve_all_job_defs())


def test_not_a_metaflow_dagster_file_is_disabled_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.py"
    other.write_text("print('hello')\n")
    policy = write_policy(tmp_path, other, generated("linear_flow_dagster.py"))
    defs, (flow,) = build_with_disabled(policy)
    assert resume_jobs(defs) == ["LinearFlow_resume"]
    assert (flow.field, flow.file, flow.kind) == ("flows[0].definitions_file", other, "broken")
    assert str(other) in flow.reason
    assert "does not look like a metaflow-dagster definitions file" in flow.reason
    assert "dagster create" in flow.reason


def test_unknown_flow_class_disables_its_jobs(tmp_path: Path) -> None:
    text = generated("linear_flow_dagster.py").read_text()
    renamed = tmp_path / "renamed_dagster.py"
    renamed.write_text(text.replace("FLOW_NAME = 'LinearFlow'", "FLOW_NAME = 'NoSuchFlow'"))
    defs, (flow,) = build_with_disabled(write_policy(tmp_path, renamed))
    assert resume_jobs(defs) == []
    assert flow.field == "flows[0].definitions_file"
    assert "has no flow class NoSuchFlow" in flow.reason
    assert flow.job_names == ("LinearFlow", "LinearFlow_resume")  # its failures are named as not resumed


def test_a_broken_copy_of_a_watched_job_does_not_claim_its_failures(tmp_path: Path) -> None:
    """Its job is the good entry's: the sensor resumes its failures, no note says otherwise."""
    text = generated("linear_flow_dagster.py").read_text()
    renamed = tmp_path / "renamed_dagster.py"
    renamed.write_text(text.replace("FLOW_NAME = 'LinearFlow'", "FLOW_NAME = 'NoSuchFlow'"))
    defs, (flow,) = build_with_disabled(write_policy(tmp_path, generated("linear_flow_dagster.py"), renamed))
    assert resume_jobs(defs) == ["LinearFlow_resume"]
    assert flow.field == "flows[1].definitions_file" and flow.job_names == ()


def test_metaflow_dagsters_unexpected_indent_disables_only_that_flow(tmp_path: Path) -> None:
    """The real thing: metaflow-dagster 0.3.7 writes a file Python cannot parse for a split inside
    a branch of a conditional; before, that took the whole location down."""
    definitions = tmp_path / "split_in_branch_dagster.py"
    compile_definitions(SPLIT_IN_A_BRANCH_FLOW, definitions, os.environ)
    with pytest.raises(SyntaxError, match="unexpected indent"):
        compile(definitions.read_text(), str(definitions), "exec")
    policy = write_policy(tmp_path, generated("linear_flow_dagster.py"), definitions)
    defs, (flow,) = build_with_disabled(policy)
    assert resume_jobs(defs) == ["LinearFlow_resume"]
    assert flow.field == "flows[1].definitions_file"
    assert f"definitions file {definitions} is not valid Python (line " in flow.reason
    assert "unexpected indent" in flow.reason and "`flow_file:`" in flow.reason


def duplicate_job_policy(tmp_path: Path) -> tuple[Path, Path, Path]:
    original = generated("linear_flow_dagster.py")
    copy = tmp_path / "linear_copy_dagster.py"
    shutil.copyfile(original, copy)
    return write_policy(tmp_path, original, copy), original, copy


def test_a_second_file_defining_the_same_job_is_disabled(tmp_path: Path) -> None:
    """The first keeps the job; the second, named by its entry, is disabled with both files."""
    policy, original, copy = duplicate_job_policy(tmp_path)
    defs, (flow,) = build_with_disabled(policy)
    assert resume_jobs(defs) == ["LinearFlow_resume"]
    assert flow.field == "flows[1].definitions_file"
    assert "'LinearFlow'" in flow.reason
    assert str(original.resolve()) in flow.reason and str(copy.resolve()) in flow.reason
    assert flow.job_names == ()  # the job's failures are the first entry's to resume


SPLIT_IN_A_BRANCH_ERROR = "    # metaflow-dagster's output for a split inside a branch\n        return x\n"


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("missing", ["missing_dagster.py does not exist", "dagster create", "fix the path"]),
        (
            "unexpected indent",
            ["is not valid Python (line 4): unexpected indent", "regenerate it", "flow_file:"],
        ),
        ("not python", ["is not a Python source file", "point the policy at the .py file"]),
        ("flow file does not import", ["importing flow file", "ModuleNotFoundError", "must be importable"]),
        ("missing flow file", ["flow file", "nope.py does not exist", "fix the path"]),
    ],
)
def test_one_unreadable_flow_stops_only_itself(tmp_path: Path, name: str, fragments: list[str]) -> None:
    """Every other flow keeps its resume job; the sensor loads and says which flow is disabled."""
    field = "definitions_file"
    if name == "missing":
        broken = tmp_path / "missing_dagster.py"
    elif name == "unexpected indent":
        broken = tmp_path / "split_in_branch_dagster.py"
        broken.write_text("import os\n\n" + SPLIT_IN_A_BRANCH_ERROR)
    elif name == "not python":
        broken = tmp_path / "binary_dagster.py"
        broken.write_bytes(b"\xff\xfe\x00 not text")
    elif name == "flow file does not import":
        field, broken = "flow_file", tmp_path / "bad_import_flow.py"
        broken.write_text("import no_such_module_here\n")
    else:
        field, broken = "flow_file", tmp_path / "nope.py"
    good = [generated("linear_flow_dagster.py"), generated("branch_flow_dagster.py")]
    policy = write_policy(tmp_path, *good)
    policy.write_text(policy.read_text() + f"  - {field}: {broken}\n")

    defs, (flow,) = build_with_disabled(policy)

    assert resume_jobs(defs) == ["BranchFlow_resume", "LinearFlow_resume"]
    assert (flow.field, flow.kind) == (f"flows[2].{field}", "broken")
    for fragment in fragments:
        assert fragment in flow.reason
    sensor = defs.resolve_sensor_def("auto_resume_sensor")
    assert sorted(t.job_name for t in sensor.targets) == ["BranchFlow_resume", "LinearFlow_resume"]
    assert sensor.description is not None and f"broken: flows[2].{field}: " in sensor.description


FLOW_WITH_ORIGIN_STEP = """\
from metaflow import FlowSpec, step


class OriginFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.origin)

    @step
    def origin(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    OriginFlow()
"""


def test_step_named_origin(tmp_path: Path) -> None:
    flow_file = tmp_path / "origin_flow.py"
    flow_file.write_text(FLOW_WITH_ORIGIN_STEP)
    definitions = tmp_path / "origin_flow_dagster.py"
    compile_definitions(flow_file, definitions, os.environ)  # metaflow-dagster accepts the flow
    defs = build_definitions(write_policy(tmp_path, definitions))
    names = op_names(defs)
    assert len(names) == len(set(names)) == 5  # origin, three steps, finish


def test_invalid_policy_fails_the_load_without_a_last_good_one(tmp_path: Path) -> None:
    """No salvaged location: it would watch a flow list nobody validated."""
    policy = write_policy(tmp_path, generated("linear_flow_dagster.py"))
    policy.write_text(policy.read_text() + "defaults:\n  max_atempts: 3\n")
    with pytest.raises(PolicyError, match=r"defaults\.max_atempts"):
        build_definitions(policy)
    with instance_for_test() as instance, pytest.raises(PolicyError, match=r"defaults\.max_atempts"):
        build_definitions(policy, fall_back=lambda path, error: fall_back(instance, path, error))


def test_invalid_policy_loads_the_last_good_one(tmp_path: Path) -> None:
    """As the deployed location loads (a workspace reload, a daemon restart) after a bad edit."""
    policy = write_policy(tmp_path, generated("linear_flow_dagster.py"), generated("branch_flow_dagster.py"))
    with instance_for_test() as instance:
        record_good(instance, policy, policy.read_text(), now=1_780_000_000)
        policy.write_text("version: 1\ndefaults:\n  max_atempts: 3\nflows: []\n")
        defs = build_definitions(policy, fall_back=lambda path, error: fall_back(instance, path, error))
    assert resume_jobs(defs) == ["BranchFlow_resume", "LinearFlow_resume"]
    description = defs.resolve_sensor_def("auto_resume_sensor").description or ""
    assert "deciding with the last good policy (in force since 2026-05-28 20:26:40 UTC)" in description
    assert f"{policy}:3: defaults.max_atempts: unknown field" in description


def test_flow_file_entries_get_their_flow_job(tmp_path: Path) -> None:
    flows = REPO_ROOT / "examples" / "flows"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nflows:\n"
        f"  - flow_file: {flows / 'switch_flow.py'}\n"
        f"  - flow_file: {flows / 'linear_flow.py'}\n    job_name: LinearFromFile\n"
        f"  - definitions_file: {generated('linear_flow_dagster.py')}\n"
    )
    defs = build_definitions(policy)
    assert sorted(job.name for job in defs.resolve_all_job_defs()) == [
        "LinearFlow_resume",
        "LinearFromFile",
        "LinearFromFile_resume",
        "SwitchFlow",
        "SwitchFlow_resume",
    ]
    switch = defs.resolve_job_def("SwitchFlow")
    assert sorted(node.name for node in switch.all_node_defs) == sorted(
        ["SwitchFlow__params", "SwitchFlow__finish"]
        + [f"SwitchFlow__step_{step}" for step in ("start", "high", "low", "merge", "end")]
    )
    names = op_names(defs)
    assert len(names) == len(set(names))


def test_flow_file_that_is_not_a_flow_names_the_entry(tmp_path: Path) -> None:
    not_a_flow = tmp_path / "helpers.py"
    not_a_flow.write_text("X = 1\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nflows:\n  - flow_file: helpers.py\n")
    _, (flow,) = build_with_disabled(policy)
    assert flow.field == "flows[0].flow_file" and "defines 0 flow classes" in flow.reason


# --- flows auto-resume cannot resume are refused one by one -------------------------------------

LAUNCHED_ELSEWHERE_FLOW = """
from metaflow import FlowSpec, kubernetes, step


class RemoteFlow(FlowSpec):
    @kubernetes(cpu=2)
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteFlow()
"""


def test_a_flow_that_cannot_be_resumed_is_refused_alone(tmp_path: Path) -> None:
    """The other flows keep their resume jobs; the refusal names the entry, the step and why."""
    text = generated("linear_flow_dagster.py").read_text()
    remote = tmp_path / "remote_dagster.py"
    # The same flow deployed with @kubernetes on one step (the last assignment counts).
    remote.write_text(text + '\nSTEP_DECORATOR_SPECS = {"process": ["kubernetes:cpu=2"]}\n')
    remote_file = tmp_path / "remote_flow.py"
    remote_file.write_text(LAUNCHED_ELSEWHERE_FLOW)
    policy = write_policy(tmp_path, generated("linear_flow_dagster.py"), remote)
    policy.write_text(policy.read_text() + f"  - flow_file: {remote_file}\n")

    defs, disabled = build_with_disabled(policy)

    assert sorted(job.name for job in defs.resolve_all_job_defs()) == ["LinearFlow_resume"]
    assert [flow.kind for flow in disabled] == ["refused", "refused"]
    refused = [flow.line() for flow in disabled]
    assert refused[0].startswith("flows[1].definitions_file: ")
    assert str(remote) in refused[0] and "'process' uses @kubernetes" in refused[0]
    assert refused[1].startswith("flows[2].flow_file: ")
    assert "'start' uses @kubernetes" in refused[1]
    # Without a list to report to, the location loads all the same.
    assert [job.name for job in build_definitions(policy).resolve_all_job_defs()] == ["LinearFlow_resume"]


CONFIG_FLOW = """
from metaflow import Config, FlowSpec, step


class ConfiguredFlow(FlowSpec):
    settings = Config("settings", default_value={"a": 1})

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ConfiguredFlow()
"""


@pytest.mark.parametrize(
    ("flow_file", "uses"),
    [
        (REPO_ROOT / "tests" / "e2e" / "flows" / "config_mutator_flow.py", "a FlowMutator"),
        (None, "a Config"),
    ],
)
def test_flow_file_entry_with_configs_or_mutators_is_refused(
    tmp_path: Path, flow_file: Path | None, uses: str
) -> None:
    """Their steps, parameters and decorators exist only once Metaflow has processed the configs:
    auto-resume cannot build their job from the class as written; metaflow-dagster can."""
    if flow_file is None:
        flow_file = tmp_path / "configured_flow.py"
        flow_file.write_text(CONFIG_FLOW)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nflows:\n  - flow_file: {flow_file}\n")
    defs, disabled = build_with_disabled(policy)
    assert defs.resolve_all_job_defs() == []
    refused = [flow.line() for flow in disabled if flow.refused]
    assert len(refused) == 1 and refused[0].startswith("flows[0].flow_file: ")
    assert uses in refused[0] and "dagster create" in refused[0] and "definitions_file" in refused[0]
