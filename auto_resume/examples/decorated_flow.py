"""start -> flaky (@retry) -> guarded (@catch) -> end, with parameters of every Metaflow type
and an @environment variable: what a resume must keep and forward to every step it executes."""

import os

from demo_support import record_and_maybe_fail
from metaflow import FlowSpec, JSONType, Parameter, catch, environment, retry, step


class DecoratedFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="An int")
    ratio = Parameter("ratio", default=0.5, type=float, help="A float")
    label = Parameter("label", default="plain", help="A str")
    loud = Parameter("loud", default=False, type=bool, help="A bool")
    config = Parameter("config", default='{"k": 1}', type=JSONType, help="JSON")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @step
    def flaky(self):
        # Fails on its first attempt whatever fail_at says: @retry must absorb it.
        record_and_maybe_fail(self.workdir, "flaky", "flaky")
        self.next(self.guarded)

    @catch(var="caught")
    @step
    def guarded(self):
        record_and_maybe_fail(self.workdir, "", "guarded")
        if self.alpha:
            raise ValueError("always fails; @catch turns it into the artifact `caught`")
        self.next(self.end)

    @environment(vars={"AUTO_RESUME_EXAMPLE_VAR": "from-environment-decorator"})
    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        self.env_var = os.environ.get("AUTO_RESUME_EXAMPLE_VAR", "")
        if self.workdir:
            with open(f"{self.workdir}/alpha.txt", "w") as out:
                out.write(f"{self.alpha} {self.ratio} {self.label} {self.loud} {self.config}\n")
            with open(f"{self.workdir}/env.txt", "w") as out:
                out.write(f"{self.env_var} caught={self.caught is not None}\n")


if __name__ == "__main__":
    DecoratedFlow()
