"""auto-resume's resume job against Dagster's own re-execution from failure, side by side.

For each example flow: two identical runs fail on the same injected failure; one is re-executed
by Dagster from failure (``ReexecutionOptions.from_failure``, the UI's "Re-execute from failure"),
the other is resumed by ``<job>_resume``. Prints wall time of the original run and of each
recovery, and how many tasks' user code ran again although it had completed (from the counter
files the flows write). Both recoveries are timed from the call to the end of the run, in this
process, on a temporary SQLite instance: the launch overhead a daemon adds is the same for both.

    METAFLOW_USER=bench .venv/bin/python benchmarks/resume_vs_reexecution.py [--width 12]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from dagster import DagsterInstance, ReexecutionOptions, execute_job
from dagster._core.definitions.reconstruct import ReconstructableJob

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ROOT / "examples" / "flows"


def _counts(workdir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text().splitlines()) for p in workdir.glob("*.count")}


def _reruns(workdir: Path, failed_task: str) -> int:
    """Tasks whose user code ran more than once, the injected failure excepted."""
    return sum(1 for name, runs in _counts(workdir).items() if runs > 1 and name != failed_task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=12, help="foreach items (default 12)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="auto-resume-bench-"))
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(scratch)
    from auto_resume.dagster.code_location import build_definitions
    from auto_resume.dagster.resume_job import resume_run_config
    from auto_resume.dagster.run_facts import metaflow_run_id
    from auto_resume.metaflow.commands import compile_definitions
    from auto_resume.metaflow.deployment import read_deployment

    cases = [
        ("linear_flow", "LinearFlow", {"fail_at": "process"}, "process"),
        ("branch_flow", "BranchFlow", {"fail_at": "right"}, "right"),
        ("foreach_flow", "ForeachFlow", {"width": args.width, "fail_at": "body:5"}, "body-5"),
    ]
    policy = scratch / "policy.yaml"
    flows_yaml = ""
    for module, _, _, _ in cases:
        compile_definitions(FLOWS / f"{module}.py", scratch / f"{module}_dagster.py", os.environ)
        flows_yaml += f"  - definitions_file: {module}_dagster.py\n"
    policy.write_text(f"version: 1\nflows:\n{flows_yaml}")
    defs = build_definitions(policy)
    home = scratch / "dagster_home"
    home.mkdir()
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; scratch {scratch}")
    header = f"{'flow':<12} {'original':>9} {'dagster re-exec':>16} {'auto-resume':>12} {'ratio':>6}"
    print(header + "   completed tasks re-run (dagster / auto-resume)")
    with DagsterInstance.local_temp(tempdir=str(home)) as instance:
        for module, job_name, params, failed_task in cases:
            job = ReconstructableJob.for_file(str(scratch / f"{module}_dagster.py"), job_name)
            timings = {}
            workdirs = {}
            for approach in ("dagster", "auto-resume"):
                workdir = scratch / f"{module}-{approach}"
                workdirs[approach] = workdir
                config = {"ops": {"op_start": {"config": {**params, "workdir": str(workdir)}}}, **quiet}
                started = time.perf_counter()
                with execute_job(job, instance=instance, run_config=config) as failed:
                    assert not failed.success, f"{job_name}: the injected failure did not fail"
                    failed_id = failed.run_id
                timings["original"] = time.perf_counter() - started
                started = time.perf_counter()
                if approach == "dagster":
                    options = ReexecutionOptions.from_failure(failed_id, instance)
                    with execute_job(
                        job, instance=instance, reexecution_options=options, run_config=config
                    ) as recovered:
                        ok = recovered.success
                else:
                    origin = metaflow_run_id(instance, failed_id)
                    assert origin is not None
                    resume_job = defs.resolve_job_def(f"{job_name}_resume")
                    deployment = read_deployment(scratch / f"{module}_dagster.py")
                    deployment_config = resume_run_config(deployment, origin)
                    ok = resume_job.execute_in_process(
                        run_config={**deployment_config, **quiet}, instance=instance, raise_on_error=False
                    ).success
                timings[approach] = time.perf_counter() - started
                assert ok, f"{job_name}: {approach} recovery failed"
            ratio = timings["auto-resume"] / timings["dagster"]
            print(
                f"{job_name:<12} {timings['original']:>8.1f}s {timings['dagster']:>15.1f}s "
                f"{timings['auto-resume']:>11.1f}s {ratio:>6.2f}   "
                f"{_reruns(workdirs['dagster'], failed_task)} / "
                f"{_reruns(workdirs['auto-resume'], failed_task)}"
            )


if __name__ == "__main__":
    main()
