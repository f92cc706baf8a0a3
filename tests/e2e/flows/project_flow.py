"""start -> process -> end under ``@project``: metaflow-dagster names its job ``<project>_<Flow>``
and passes the project's branch to every step; a resume must keep both. Every task records
itself through ``demo_support`` (counter files), so a test sees what ran."""

import json
import os

from metaflow import FlowSpec, Parameter, current, project, step

from auto_resume.examples.demo_support import record_and_maybe_fail


@project(name="feature_demo")
class ProjectFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int, help="An int")
    workdir = Parameter("workdir", default="", help="Where counter files go (off when empty)")
    fail_at = Parameter("fail_at", default="", help="Steps that fail on their first run")

    @step
    def start(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "start")
        self.next(self.process)

    @step
    def process(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "process")
        self.branch = current.branch_name
        self.next(self.end)

    @step
    def end(self):
        record_and_maybe_fail(self.workdir, self.fail_at, "end")
        if self.workdir:
            with open(os.path.join(self.workdir, "result.json"), "w") as out:
                json.dump(
                    {
                        "alpha": self.alpha,
                        "branch": self.branch,
                        "project": current.project_name,
                        "project_flow_name": current.project_flow_name,
                    },
                    out,
                )


if __name__ == "__main__":
    ProjectFlow()
