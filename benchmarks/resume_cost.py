"""Recovering a failed run whose completed steps are expensive, five ways, side by side.

``benchmarks/flows/slow_flow.py`` (start -> prepare -> train -> evaluate -> end, every step
sleeping ``--sleep`` seconds) is compiled by metaflow-dagster into a temporary directory. Its
``evaluate`` step fails the first time; then the failed run is recovered by:

- a full re-run: a new run of the job, from the start;
- Dagster's re-execution from failure (``ReexecutionOptions.from_failure``, the UI's button);
- auto-resume's ``SlowFlow_resume`` job (executed in-process, as the daemon's run worker would);
- metaflow-dagster's own ``python slow_flow.py dagster resume --run-id ...`` as shipped
  (a subprocess: interpreter start included);
- the same resume with its one blocking bug removed: a copy of the definitions with
  ``ORIGIN_RUN_ID`` set (what ``dagster resume`` compiles) and without the ``--clone-run-id``
  that ``init`` rejects, executed in-process.

Prints each recovery's wall time, its ratio to auto-resume's, and how many completed tasks'
user code ran again (from the counter files the flow writes). Each recovery gets its own failed
run, except the patched metaflow-dagster resume, which reuses the one the shipped command left
(that command fails before any step's code runs). Runs on a temporary SQLite instance.

    METAFLOW_USER=bench .venv/bin/python benchmarks/resume_cost.py [--sleep 2.5]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _support import ROOT, machine

FLOW = ROOT / "benchmarks" / "flows" / "slow_flow.py"
JOB = "SlowFlow"
FAILING_STEP = "evaluate"
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _counts(workdir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text().splitlines()) for p in workdir.glob("*.count")}


def _reran(before: dict[str, int], after: dict[str, int]) -> int:
    """Tasks that had completed before the recovery and whose code ran again during it."""
    return sum(1 for name, runs in before.items() if name != FAILING_STEP and after.get(name, 0) > runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sleep", type=float, default=2.5, help="seconds each step sleeps (default 2.5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")
    scratch = Path(tempfile.mkdtemp(prefix="auto-resume-bench-"))
    try:
        _run(scratch, args.sleep)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(scratch: Path, sleep: float) -> None:
    from dagster import DagsterInstance, ReexecutionOptions, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableJob

    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(scratch)
    os.environ["SLOW_FLOW_SLEEP"] = str(sleep)
    os.environ["SLOW_FLOW_FAIL_AT"] = FAILING_STEP
    from auto_resume.dagster.code_location import build_definitions
    from auto_resume.dagster.resume_job import resume_run_config
    from auto_resume.dagster.run_facts import metaflow_run_id
    from auto_resume.metaflow.commands import compile_definitions
    from auto_resume.metaflow.deployment import read_deployment

    # The flow file is copied so that metaflow-dagster's resume writes its temporary
    # definitions file (beside the flow) into the scratch directory, not into the repo.
    flow_file = scratch / FLOW.name
    shutil.copy(FLOW, flow_file)
    definitions = scratch / "slow_flow_dagster.py"
    compile_definitions(flow_file, definitions, os.environ)
    policy = scratch / "policy.yaml"
    policy.write_text(f"version: 1\nflows:\n  - definitions_file: {definitions.name}\n")
    defs = build_definitions(policy)
    resume_job = defs.resolve_job_def(f"{JOB}_resume")
    deployment = read_deployment(definitions)
    job = ReconstructableJob.for_file(str(definitions), JOB)
    home = scratch / "dagster_home"
    home.mkdir()
    config = {"ops": {"op_start": {"config": {"alpha": 7}}}, **QUIET}
    rows: list[tuple[str, float, int, str]] = []
    originals: list[float] = []

    with DagsterInstance.local_temp(tempdir=str(home)) as instance:

        def fail_once(workdir: Path) -> tuple[str, str]:
            """A failed run of the job in ``workdir``: its Dagster and Metaflow run ids."""
            os.environ["SLOW_FLOW_WORKDIR"] = str(workdir)
            started = time.perf_counter()
            with execute_job(job, instance=instance, run_config=config) as result:
                assert not result.success, "the injected failure did not fail the run"
                run_id = result.run_id
            originals.append(time.perf_counter() - started)
            origin = metaflow_run_id(instance, run_id)
            assert origin is not None
            return run_id, origin

        def recover(label: str, workdir: Path, action: Callable[[], tuple[bool, str]]) -> None:
            before = _counts(workdir)
            started = time.perf_counter()
            ok, note = action()
            elapsed = time.perf_counter() - started
            rows.append((label, elapsed, _reran(before, _counts(workdir)), note if not ok else "ok"))

        def full_rerun() -> tuple[bool, str]:
            with execute_job(job, instance=instance, run_config=config) as result:
                return result.success, "failed"

        def reexecute(run_id: str) -> tuple[bool, str]:
            options = ReexecutionOptions.from_failure(run_id, instance)
            with execute_job(
                job, instance=instance, reexecution_options=options, run_config=config
            ) as result:
                return result.success, "failed"

        def auto_resume(origin: str) -> tuple[bool, str]:
            run_config = {**resume_run_config(deployment, origin), **QUIET}
            result = resume_job.execute_in_process(
                run_config=run_config, instance=instance, raise_on_error=False
            )
            return result.success, "failed"

        def metaflow_dagster_resume(origin: str) -> tuple[bool, str]:
            command = [
                sys.executable, str(flow_file), "--no-pylint", "--datastore=local", "--metadata=local",
                "dagster", "resume", "--run-id", origin, "--definitions-file", str(definitions),
            ]  # fmt: skip
            env = {**os.environ, "DAGSTER_HOME": str(home)}
            done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
            output = done.stdout + done.stderr
            reason = "fails: init says 'no such option: --clone-run-id'"
            if "no such option: --clone-run-id" not in output:
                reason = f"fails (exit {done.returncode})"
            return done.returncode == 0, reason

        def patched_metaflow_dagster_resume(origin: str) -> tuple[bool, str]:
            text = definitions.read_text()
            unset = "ORIGIN_RUN_ID: Optional[str] = None"
            text = text.replace(unset, f"ORIGIN_RUN_ID: Optional[str] = {origin!r}")
            blocking = '    if ORIGIN_RUN_ID:\n        cmd += ["--clone-run-id", ORIGIN_RUN_ID]\n'
            assert blocking in text, "metaflow-dagster's generated _run_init changed; update this benchmark"
            patched = scratch / "slow_flow_resume_patched_dagster.py"
            patched.write_text(text.replace(blocking, ""))
            patched_job = ReconstructableJob.for_file(str(patched), JOB)
            with execute_job(patched_job, instance=instance, run_config=QUIET) as result:
                return result.success, "failed"

        workdir = scratch / "full-rerun"
        fail_once(workdir)
        recover("full re-run", workdir, full_rerun)
        workdir = scratch / "dagster-reexecution"
        run_id, _ = fail_once(workdir)
        recover("dagster re-execution from failure", workdir, lambda: reexecute(run_id))
        workdir = scratch / "auto-resume"
        _, origin = fail_once(workdir)
        recover("auto-resume (SlowFlow_resume)", workdir, lambda: auto_resume(origin))
        workdir = scratch / "metaflow-dagster"
        _, origin = fail_once(workdir)
        recover("metaflow-dagster `dagster resume`", workdir, lambda: metaflow_dagster_resume(origin))
        recover("  same, init fixed (patched copy)", workdir, lambda: patched_metaflow_dagster_resume(origin))

    print(machine())
    mine = next(elapsed for label, elapsed, _, _ in rows if label.startswith("auto-resume"))
    print(f"SlowFlow: 5 steps sleeping {sleep}s each; '{FAILING_STEP}' fails once, after 3 completed tasks")
    print(f"original failing runs: {', '.join(f'{t:.1f}s' for t in originals)}")
    print(f"{'recovery':<36} {'wall':>7} {'/ auto-resume':>14} {'completed tasks re-run':>23}  outcome")
    for label, elapsed, reran, outcome in rows:
        ratio = f"{elapsed / mine:>13.2f}x" if outcome == "ok" else f"{'-':>14}"  # no recovery, no ratio
        print(f"{label:<36} {elapsed:>6.1f}s {ratio} {reran:>23}  {outcome}")


if __name__ == "__main__":
    main()
