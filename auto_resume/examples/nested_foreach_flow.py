"""A foreach nested three levels deep: start -> outer[i] -> middle[i][j] -> leaf[i][j][k], then
three joins and end. The innermost body is a single step: metaflow-dagster 0.3.7 runs this
shape in one compound op per outer item, and cannot load a foreach whose body has two steps."""

from demo_support import record_and_fail_twice, record_and_maybe_fail, record_result
from metaflow import FlowSpec, Parameter, step


class NestedForeachFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number; end writes it to alpha.txt")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter(
        "fail_at", default="", help="Steps (or leaf:<i>_<j>_<k>) that fail on their first run"
    )
    fail_twice_at = Parameter("fail_twice_at", default="", help="Steps that fail on their first two runs")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.outer_items = [0, 1]
        self.next(self.outer, foreach="outer_items")

    @step
    def outer(self):
        self.i = self.input
        record_and_maybe_fail(self.workdir, self.fail_at, "outer", self.i)
        self.middle_items = [0, 1]
        self.next(self.middle, foreach="middle_items")

    @step
    def middle(self):
        self.j = self.input
        record_and_maybe_fail(self.workdir, self.fail_at, "middle", f"{self.i}_{self.j}")
        self.leaf_items = [0, 1]
        self.next(self.leaf, foreach="leaf_items")

    @step
    def leaf(self):
        self.k = self.input
        record_and_maybe_fail(self.workdir, self.fail_at, "leaf", f"{self.i}_{self.j}_{self.k}")
        record_and_fail_twice(self.workdir, self.fail_twice_at, "leaf", f"{self.i}_{self.j}_{self.k}")
        self.value = 100 * self.i + 10 * self.j + self.k
        self.next(self.join_leaf)

    @step
    def join_leaf(self, inputs):
        self.i, self.j = inputs[0].i, inputs[0].j
        record_and_maybe_fail(self.workdir, self.fail_at, "join_leaf", f"{self.i}_{self.j}")
        self.values = [leaf.value for leaf in inputs]
        self.next(self.join_middle)

    @step
    def join_middle(self, inputs):
        self.i = inputs[0].i
        record_and_maybe_fail(self.workdir, self.fail_at, "join_middle", self.i)
        self.values = [v for middle in inputs for v in middle.values]
        self.next(self.join_outer)

    @step
    def join_outer(self, inputs):
        record_and_maybe_fail(self.workdir, self.fail_at, "join_outer")
        self.values = sorted(v for outer in inputs for v in outer.values)
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        record_result(self.workdir, self.alpha, sum(self.values))


if __name__ == "__main__":
    NestedForeachFlow()
