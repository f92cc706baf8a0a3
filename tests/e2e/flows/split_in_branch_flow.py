"""A conditional whose branch ``a`` splits in two: metaflow-dagster 0.3.7 compiles it into a
definitions file that is not valid Python (``IndentationError: unexpected indent``, near line 563).
A policy listing that file must disable this flow alone (tests/test_code_location.py,
tests/e2e/test_policy_e2e.py)."""

from metaflow import FlowSpec, Parameter, step


class SplitInBranchFlow(FlowSpec):
    mode = Parameter("mode", default="a")

    @step
    def start(self):
        self.route = self.mode
        self.next({"a": self.a, "b": self.b}, condition="route")

    @step
    def a(self):
        self.next(self.x, self.y)

    @step
    def x(self):
        self.next(self.join_a)

    @step
    def y(self):
        self.next(self.join_a)

    @step
    def join_a(self, inputs):
        self.next(self.merge)

    @step
    def b(self):
        self.next(self.merge)

    @step
    def merge(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SplitInBranchFlow()
