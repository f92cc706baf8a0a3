"""start -> process -> body (a foreach) -> join -> end: what the parity tests compare.

Each execution of a step's code appends ``<run id> <current.origin_run_id>`` to
``<workdir>/<step>[-<index>].origin`` and ``$AUTO_RESUME_INJECTED`` (``-`` when unset) to
``.injected``, and prints one line to stdout and one to stderr; ``start`` and ``body`` carry a
card. The step (or ``body:<index>``) named in ``fail_at`` fails its first ``fail_times``
executions.
"""

import os
import sys

from metaflow import FlowSpec, Parameter, card, current, step


class ParityFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number")
    width = Parameter("width", default=3, type=int, help="Number of foreach items")
    workdir = Parameter("workdir", default="", help="Where the flow's side effects go")
    fail_at = Parameter("fail_at", default="", help="The step (or body:<index>) that fails")
    fail_times = Parameter("fail_times", default=1, type=int, help="How many times it fails")

    def _execute(self, name, target=None):
        os.makedirs(self.workdir, exist_ok=True)
        with open(os.path.join(self.workdir, name + ".origin"), "a") as out:
            out.write(f"{current.run_id} {current.origin_run_id}\n")
        with open(os.path.join(self.workdir, name + ".injected"), "a") as out:
            out.write(os.environ.get("AUTO_RESUME_INJECTED", "-") + "\n")  # set by a resume's --with
        print(f"stdout of {name}")
        print(f"stderr of {name}", file=sys.stderr)
        failures = os.path.join(self.workdir, name + ".failures")
        failed = 0
        if os.path.exists(failures):
            with open(failures) as previous:
                failed = len(previous.read().splitlines())
        if (target or name) == self.fail_at and failed < self.fail_times:
            with open(failures, "a") as out:
                out.write("failed\n")
            raise RuntimeError(f"injected failure {failed + 1} of {self.fail_times} in {name}")

    @card
    @step
    def start(self):
        self._execute("start")
        self.value = self.alpha * 10
        self.items = list(range(self.width))
        self.next(self.process)

    @step
    def process(self):
        self._execute("process")
        self.value += 1
        self.next(self.body, foreach="items")

    @card
    @step
    def body(self):
        self._execute(f"body-{self.index}", f"body:{self.index}")
        self.squared = self.input * self.input + self.value
        self.next(self.join)

    @step
    def join(self, inputs):
        self._execute("join")
        self.total = sum(item.squared for item in inputs)
        self.next(self.end)

    @step
    def end(self):
        self._execute("end")
        self.result = self.total * 2


if __name__ == "__main__":
    ParityFlow()
