"""start -(branch)-> high | low -> merge -> end: a conditional (split-switch) step.

metaflow-dagster 0.3.7's own job fails in its switch op after ``start`` succeeded, so every run
of this flow's job fails there; the resume must clone ``start`` and follow the branch it took.
"""

from demo_support import record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step


class SwitchFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number; end writes it to alpha.txt")
    branch = Parameter("branch", default="high", help="Which branch start takes: high or low")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.choice = self.branch
        self.next({"high": self.high, "low": self.low}, condition="choice")

    @step
    def high(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "high")
        self.value = self.alpha * 100
        self.next(self.merge)

    @step
    def low(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "low")
        self.value = -self.alpha
        self.next(self.merge)

    @step
    def merge(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "merge")
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        record_result(self.workdir, self.alpha, self.value)


if __name__ == "__main__":
    SwitchFlow()
