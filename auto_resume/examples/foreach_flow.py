"""start -> body (one task per item) -> join -> end: a foreach whose one item can fail."""

from demo_support import record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step


class ForeachFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number; end writes it to alpha.txt")
    width = Parameter("width", default=6, type=int, help="Number of foreach items")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps (or body:<index>) that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.items = list(range(self.width))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "body", self.index)
        self.squared = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        record_and_maybe_fail(self.workdir, self.fail_at, "join")
        self.total = sum(item.squared for item in inputs)
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        record_result(self.workdir, self.alpha, self.total)


if __name__ == "__main__":
    ForeachFlow()
