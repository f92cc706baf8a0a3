"""What a resume may change (`with`, Metaflow tags, a time limit, from_step), from the policy or
run config: checked before anything runs, decided by the rule that matched, applied only to the
tasks the resume executes."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import DagsterInstance

from auto_resume.core.decision import Action, FailedRun, decide
from auto_resume.core.resume_changes import ResumeChanges, changes_for
from auto_resume.core.run_ids import make_run_id
from auto_resume.dagster import tags
from auto_resume.dagster.flow_job import build_flow_job, flow_run_config
from auto_resume.dagster.resume_job import build_resume_job, config_problems, resume_run_config
from auto_resume.dagster.resume_runs import resume_tags
from auto_resume.metaflow.decorator_specs import DEFAULT_ALLOWED_DECORATORS, injection_for, spec_problem
from auto_resume.policy.loading import PolicyError, load_policy
from auto_resume.policy.model import EffectiveFlowSettings
from auto_resume.policy.settings import ErrorRule
from tests.support.client_probe import client_probe
from tests.support.parity_deployment import parity_deployment

OOM = FailedRun(
    run_id="run-1",
    job_name="TrainFlow",
    metaflow_run_id="dagster-0123456789ab",
    root_run_id=None,
    attempt=0,
    failure_reason="step_failure",
    step_name="train",
    exception_class="MemoryError",
    message="out of memory",
)
INJECT = 'environment:vars={"AUTO_RESUME_INJECTED": "yes"}'


def test_the_matching_rule_decides_how_the_resume_runs() -> None:
    rules = EffectiveFlowSettings.model_validate(
        {
            "with": ["resources:memory=8000", "timeout:seconds=600"],
            "metaflow_tags": ["auto-resumed"],
            "errors": [
                {"action": "resume", "exception": "ValueError", "from_step": "start"},
                {
                    "action": "resume",
                    "exception": "MemoryError",
                    "with": "resources:memory=32000",
                    "metaflow_tags": ["oom"],
                    "max_runtime_seconds": 3600,
                },
            ],
        }
    )
    decision = decide(OOM, rules)
    assert decision.action is Action.RESUME
    # The rule's spec replaces the flow's for the same decorator; the other stays; tags join.
    assert decision.changes == ResumeChanges(
        with_specs=("resources:memory=32000", "timeout:seconds=600"),
        metaflow_tags=("auto-resumed", "oom"),
        max_runtime_seconds=3600,
        because=("flow settings", "errors[1]"),
    )
    assert "with resources:memory=32000 timeout:seconds=600" in decision.reason
    # Another failure: the flow's own changes only; from_step comes with the rule that says it.
    other = decide(replace(OOM, exception_class="ValueError"), rules)
    assert other.changes.with_specs == ("resources:memory=8000", "timeout:seconds=600")
    assert other.changes.from_step == "start" and other.changes.because == ("flow settings", "errors[0]")
    # The resume run carries them: tags for Dagster's run monitoring and for people.
    run_tags = resume_tags(_deployment(), OOM, decision, rules)
    assert run_tags[tags.DAGSTER_MAX_RUNTIME] == "3600"
    assert json.loads(run_tags[tags.CHANGES])["because"] == ["flow settings", "errors[1]"]
    assert changes_for(EffectiveFlowSettings()) == ResumeChanges()
    assert tags.CHANGES not in resume_tags(_deployment(), OOM, decide(OOM, EffectiveFlowSettings()), rules)


def _deployment():  # type: ignore[no-untyped-def]
    from auto_resume.metaflow.deployment import Deployment

    return Deployment(Path("d.py"), "TrainFlow", Path("f.py"), "TrainFlow", (), {}, {})


BAD_POLICIES = {
    "empty attribute value": (
        'defaults:\n  with: ["resources:memory="]\n',
        "defaults.with[0]",
        ["'resources:memory=': attribute 'memory=' has no value", "fix: write `attribute=value`"],
    ),
    "decorator not allowed": (
        "defaults:\n  with: [catch]\n",
        "defaults.with[0]",
        ["decorator 'catch' is not in the policy's allowed_decorators", "add 'catch' to allowed_decorators"],
    ),
    "unknown attribute, refused by Metaflow": (
        "defaults:\n  errors:\n    - {action: resume, exception: MemoryError, with: [resources:mem=9]}\n",
        "defaults.errors[0].with[0]",
        ["Metaflow refuses it", "does not support the attribute 'mem'"],
    ),
    "unknown decorator allowed": (
        "allowed_decorators: [retry, nosuch]\n",
        "allowed_decorators[1]",
        ["'nosuch' is not a Metaflow step decorator"],
    ),
    "launcher decorator allowed": (
        "allowed_decorators: [kubernetes]\n",
        "allowed_decorators[0]",
        ["@kubernetes changes how a step is launched"],
    ),
    "tag over Metaflow's limit": (
        f"defaults:\n  metaflow_tags: [{'x' * 600}]\n",
        "defaults.metaflow_tags",
        ["Metaflow refuses these tags"],
    ),
    "changes on a never rule": (
        "defaults:\n  errors:\n    - {action: never, step: end, from_step: start}\n",
        "defaults.errors[0]",
        ["a `never` rule launches no resume, so its from_step would never apply"],
    ),
}


@pytest.mark.parametrize(("text", "field", "fragments"), list(BAD_POLICIES.values()), ids=list(BAD_POLICIES))
def test_malformed_changes_are_refused_at_load(
    tmp_path: Path, text: str, field: str, fragments: list[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\n" + text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    (problem,) = info.value.problems
    assert f": {field}: " in problem and "; fix: " in problem, problem
    for fragment in fragments:
        assert fragment in problem


def test_valid_changes_load_by_their_yaml_names(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\nallowed_decorators: [retry, environment]\n"
        "defaults:\n  with: retry:times=2\n  metaflow_tags: [nightly]\n  max_runtime_seconds: 60\n"
        "  errors:\n    - {action: resume, step: validate, from_step: start}\n"
    )
    policy = load_policy(path)
    assert policy.defaults.with_ == ("retry:times=2",)
    assert policy.defaults.errors[0] == ErrorRule(action="resume", step="validate", from_step="start")


def test_run_config_may_inject_only_what_the_policy_allows() -> None:
    allowed = DEFAULT_ALLOWED_DECORATORS
    assert config_problems({"with": [INJECT, "retry"], "tags": ["a"]}, allowed) == []
    (problem,) = config_problems({"with": ["catch"]}, allowed)
    assert "not in the policy's allowed_decorators" in problem
    (problem,) = config_problems({"parameters": {"alpha": 3}}, allowed)
    assert problem.startswith("parameters: alpha: a resume keeps the origin run's Metaflow parameters")
    assert spec_problem("resources:memory=", allowed) is not None


def test_a_steps_own_decorator_wins_over_an_injected_one() -> None:
    injection = injection_for([INJECT, "retry:times=2,minutes_between_retries=1"], "train", {"retry"})
    assert injection.specs == (INJECT,)
    assert injection.ignored == ("retry:times=2,minutes_between_retries=1",)
    assert injection.env == {"AUTO_RESUME_INJECTED": "yes"}
    assert injection.user_code_retries is None
    retry = injection_for(["retry:times=2,minutes_between_retries=1"], "train", set())
    assert (retry.user_code_retries, retry.retry_delay_seconds) == (2, 60.0)


PROBE = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
run = Flow('ParityFlow')[sys.argv[1]]
print(json.dumps({'successful': run.successful, 'tags': sorted(run.user_tags)}))
"""


def test_injected_decorators_reach_executed_tasks_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`process` fails twice: an injected @retry lets one resume finish it; @environment's variable
    is seen by every task the resume executes, and by no clone."""
    monkeypatch.setenv("METAFLOW_USER", os.environ.get("METAFLOW_USER", "tester"))
    parity = parity_deployment(tmp_path)
    deployment, flow = parity.deployment, parity.flow
    workdir = tmp_path / "side-effects"
    instance = DagsterInstance.ephemeral()
    parameters = {"width": 1, "fail_at": "process", "fail_times": 2, "workdir": str(workdir)}
    failed = build_flow_job(deployment, flow).execute_in_process(
        run_config=flow_run_config(deployment, parameters), instance=instance, raise_on_error=False
    )
    assert not failed.success
    origin = make_run_id(failed.run_id)
    job = build_resume_job(deployment, flow.shape)

    # Refused before anything runs: a decorator the policy does not allow, a parameter change.
    changes = ResumeChanges(with_specs=("catch",))
    refused = job.execute_in_process(
        run_config=resume_run_config(deployment, origin, changes=changes),
        instance=instance,
        raise_on_error=False,
    )
    assert not refused.success
    assert (workdir / "process.injected").read_text().splitlines() == ["-"]
    config = resume_run_config(deployment, origin)
    config["ops"][next(iter(config["ops"]))]["config"]["parameters"] = {"alpha": 2}
    assert not job.execute_in_process(run_config=config, instance=instance, raise_on_error=False).success

    changes = ResumeChanges(
        with_specs=("retry:times=1,minutes_between_retries=0", INJECT), metaflow_tags=("fixed",)
    )
    resumed = job.execute_in_process(
        run_config=resume_run_config(deployment, origin, changes=changes), instance=instance
    )
    assert resumed.success
    injected = {path.stem: path.read_text().split() for path in workdir.glob("*.injected")}
    # start is a clone: it ran once, in the origin. process: the origin, then attempts 0 and 1.
    assert injected == {
        "start": ["-"],
        "process": ["-", "yes", "yes"],
        "body-0": ["yes"],
        "join": ["yes"],
        "end": ["yes"],
    }
    seen = client_probe(PROBE, make_run_id(resumed.run_id), env={**os.environ, **deployment.step_env})
    assert seen == {"successful": True, "tags": ["fixed"]}
    run = instance.get_run_by_id(resumed.run_id)
    assert run is not None and json.loads(run.tags[tags.CHANGES])["because"] == ["run config"]
