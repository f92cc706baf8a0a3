"""start -> (left, right) -> join -> end: a static split whose one branch can fail."""

from demo_support import record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step


class BranchFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number; end writes it to alpha.txt")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.next(self.left, self.right)

    @step
    def left(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "left")
        self.side = self.alpha + 1
        self.next(self.join)

    @step
    def right(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "right")
        self.side = self.alpha + 2
        self.next(self.join)

    @step
    def join(self, inputs):
        record_and_maybe_fail(self.workdir, self.fail_at, "join")
        self.total = sum(branch.side for branch in inputs)
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        record_result(self.workdir, self.alpha, self.total)


if __name__ == "__main__":
    BranchFlow()
