"""start -> process -> end, shaped at run time by a ``Config``, a ``FlowMutator``, a ``StepMutator``
and a user-defined step decorator; parameters of several types, one of them JSON, one added by
the mutator and one whose default comes from the config.

The flow mutator is applied bare (``@from_settings``), so the module-level name
``ConfigMutatorFlow`` is a ``FlowMutator`` instance, not the flow class; the class Metaflow runs
has steps and a parameter the class statement does not show. Every task records itself through
``demo_support`` (counter files), so a test sees what ran.
"""

import json
import os

from metaflow import (
    Config,
    FlowMutator,
    FlowSpec,
    JSONType,
    Parameter,
    StepMutator,
    config_expr,
    current,
    step,
    user_step_decorator,
)

from auto_resume.examples.demo_support import record_and_maybe_fail


class from_settings(FlowMutator):
    """Every step gets ``@environment(vars=settings.env)``; the flow gets the parameter ``scale``."""

    def pre_mutate(self, mutable_flow):
        settings = dict(mutable_flow.configs)["settings"]
        mutable_flow.add_parameter("scale", Parameter("scale", default=settings.scale, type=int))
        for _, mutable_step in mutable_flow.steps:
            mutable_step.add_decorator("environment", deco_kwargs={"vars": dict(settings.env)})


class retried(StepMutator):
    """Adds ``@retry`` (one retry, no delay) to the step it decorates."""

    def pre_mutate(self, mutable_step):
        mutable_step.add_decorator("retry", deco_kwargs={"times": 1, "minutes_between_retries": 0})


@user_step_decorator
def stamped(step_name, flow, inputs=None, attributes=None):
    """Sets the artifact ``stamp`` after the step's code ran."""
    yield
    flow.stamp = f"{step_name}:{attributes.get('label', '') if attributes else ''}"


@from_settings
class ConfigMutatorFlow(FlowSpec):
    settings = Config("settings", default="config_mutator_flow.json")
    greeting = Parameter("greeting", default=config_expr("settings.greeting"), help="From the config")
    weights = Parameter("weights", default='{"a": 1, "b": 2}', type=JSONType, help="A JSON parameter")
    ratio = Parameter("ratio", default=0.5, type=float, help="A float")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @stamped(label="first")
    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.total = self.scale * sum(self.weights.values())
        self.next(self.process)

    @retried
    @step
    def process(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "process")
        self.mode = os.environ.get("FEATURE_MODE", "")
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        if self.workdir:
            with open(os.path.join(self.workdir, "result.json"), "w") as out:
                json.dump(
                    {
                        "greeting": self.greeting,
                        "total": self.total,
                        "ratio": self.ratio,
                        "mode": self.mode,
                        "stamp": self.stamp,
                        "settings": dict(self.settings),
                        "origin_run_id": current.origin_run_id,
                    },
                    out,
                )


if __name__ == "__main__":
    ConfigMutatorFlow()
