"""start -> body1 -> body2 (both inside one foreach) -> join -> end. A step can fail once
(``fail_at``) or twice (``fail_twice_at``, for a chain of two resumes)."""

from demo_support import record_and_fail_twice, record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step


class MultiBodyFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number; end writes it to alpha.txt")
    width = Parameter("width", default=4, type=int, help="Number of foreach items")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps (or body2:<index>) that fail on their first run")
    fail_twice_at = Parameter("fail_twice_at", default="", help="Steps that fail on their first two runs")

    def _enter(self, name, index=None):
        record_and_maybe_fail(self.workdir, self.fail_at, name, index)
        record_and_fail_twice(self.workdir, self.fail_twice_at, name, index)

    @step
    def start(self):
        self._enter("start")
        self.items = list(range(self.width))
        self.next(self.body1, foreach="items")

    @step
    def body1(self):
        self._enter("body1", self.index)
        self.first = self.input + 1
        self.next(self.body2)

    @step
    def body2(self):
        self._enter("body2", self.index)
        self.second = self.first * 10
        self.next(self.join)

    @step
    def join(self, inputs):
        self._enter("join")
        self.total = sum(item.second for item in inputs)
        self.next(self.end)

    @step
    def end(self):
        self._enter("end")
        record_result(self.workdir, self.alpha, self.total)


if __name__ == "__main__":
    MultiBodyFlow()
