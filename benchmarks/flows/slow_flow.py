"""start -> prepare -> train -> evaluate -> end, each step sleeping: completed work is expensive.

Counter files and the injected failure are driven by environment variables rather than
parameters, so that every way of recovering the run sees them, including one that loses the
failed run's parameters (metaflow-dagster's own ``dagster resume`` builds its job with the
defaults):

- ``SLOW_FLOW_WORKDIR``: each execution of a step's code appends a line to
  ``<workdir>/<step>.count`` (off when unset);
- ``SLOW_FLOW_FAIL_AT``: steps that fail the first time they run in that workdir;
- ``SLOW_FLOW_SLEEP``: seconds each step sleeps (default 2.5).
"""

import os
import time

from metaflow import FlowSpec, Parameter, step


def work(step_name):
    """Sleep like a step that computes something, count the execution, fail once if asked."""
    time.sleep(float(os.environ.get("SLOW_FLOW_SLEEP", "2.5")))
    workdir = os.environ.get("SLOW_FLOW_WORKDIR", "")
    if not workdir:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, step_name + ".count"), "a") as counter:
        counter.write("ran\n")
    marker = os.path.join(workdir, step_name + ".failed-once")
    if step_name in os.environ.get("SLOW_FLOW_FAIL_AT", "").split(",") and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"injected failure in {step_name} (it will succeed when run again)")


class SlowFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="Any number, carried to the end")

    @step
    def start(self):
        work("start")
        self.value = self.alpha
        self.next(self.prepare)

    @step
    def prepare(self):
        work("prepare")
        self.value += 1
        self.next(self.train)

    @step
    def train(self):
        work("train")
        self.value *= 10
        self.next(self.evaluate)

    @step
    def evaluate(self):
        work("evaluate")
        self.score = self.value + 1
        self.next(self.end)

    @step
    def end(self):
        work("end")


if __name__ == "__main__":
    SlowFlow()
