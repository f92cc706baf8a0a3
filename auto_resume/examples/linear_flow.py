"""start -> process -> end, with a parameter that a resume must keep."""

from demo_support import record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step


class LinearFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number; end writes it to alpha.txt")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.value = self.alpha * 10
        self.next(self.process)

    @step
    def process(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "process")
        self.value += 1
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        record_result(self.workdir, self.alpha, self.value)


if __name__ == "__main__":
    LinearFlow()
