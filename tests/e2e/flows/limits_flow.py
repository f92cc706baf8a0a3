"""start -> slow -> end: ``@timeout`` and ``@resources`` on ``slow``, a run-time user decorator on end.

``slow`` sleeps past its timeout on its first ``hang_runs`` runs (counted in
``<workdir>/slow.count``), so ``@timeout`` makes it fail that many times: in the origin, and in
a resume if ``hang_runs`` is 2. Every task records itself (counter files) through
``demo_support``, so a test sees what ran.
"""

import os
import time

from metaflow import FlowSpec, Parameter, resources, step, timeout, user_step_decorator

from auto_resume.examples.demo_support import record_and_maybe_fail


@user_step_decorator
def timed(step_name, flow, inputs=None):
    """Records how long the step's code took (the artifact ``took``)."""
    started = time.time()
    yield
    flow.took = time.time() - started


class LimitsFlow(FlowSpec):
    hang_runs = Parameter("hang_runs", default=0, type=int, help="Runs of slow that hang")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.next(self.slow)

    @timeout(seconds=5)
    @resources(cpu=1, memory=512)
    @step
    def slow(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "slow")
        with open(os.path.join(self.workdir, "slow.count")) as counter:
            runs = len(counter.read().splitlines())
        if runs <= self.hang_runs:
            time.sleep(120)  # @timeout stops it after 5 s
        self.next(self.end)

    @timed
    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")


if __name__ == "__main__":
    LimitsFlow()
