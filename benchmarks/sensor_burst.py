"""How long one ``auto_resume_sensor`` tick takes to decide a burst of failures, on PostgreSQL.

Creates a temporary database, writes N failed runs of ``LinearFlow`` through the instance API
(run row, metaflow-dagster command line, RUN_FAILURE event: what the sensor reads), then
evaluates the sensor as the daemon would (first tick, then one tick over the burst) and prints
the tick's wall time, the decisions made and the time per failure.

    METAFLOW_USER=bench .venv/bin/python benchmarks/sensor_burst.py [--failures 100] [--mode act]
"""

import argparse
import os
import time
from pathlib import Path

from _support import ROOT, postgres_instance


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", type=int, default=100)
    parser.add_argument("--mode", choices=["act", "observe"], default="act")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    from dagster import build_sensor_context

    from auto_resume.dagster.resume_job import build_resume_job
    from auto_resume.dagster.sensor import evaluate
    from auto_resume.metaflow.deployment import read_deployment
    from auto_resume.metaflow.flows import load_flow_shape
    from tests.support.failed_runs import create_failed_run

    with postgres_instance() as instance:
        deployment = read_deployment(ROOT / "examples" / "generated" / "linear_flow_dagster.py")
        job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
        by_job = {deployment.job_name: deployment, deployment.resume_job_name: deployment}
        policy = Path(os.environ["DAGSTER_HOME"]) / "policy.yaml"
        policy.write_text(
            f"version: 1\ndefaults: {{mode: {args.mode}}}\nflows:\n"
            f"  - definitions_file: {deployment.definitions_file}\n"
        )
        first = evaluate(build_sensor_context(instance=instance), by_job, {job.name: job}, policy)
        started = time.perf_counter()
        for _ in range(args.failures):
            create_failed_run(instance, "LinearFlow")  # type: ignore[arg-type]
        created = time.perf_counter() - started
        context = build_sensor_context(instance=instance, cursor=first.cursor)
        started = time.perf_counter()
        result = evaluate(context, by_job, {job.name: job}, policy)
        tick = time.perf_counter() - started
        decided = len(result.run_requests or []) if args.mode == "act" else args.failures
        print(f"created {args.failures} failed runs in {created:.2f}s")
        print(
            f"one tick ({args.mode}): {tick:.2f}s, {decided} decisions, "
            f"{1000 * tick / max(1, args.failures):.1f} ms per failure"
        )


if __name__ == "__main__":
    main()
