"""How long one ``auto_resume_sensor`` tick takes to decide a burst of failures, on PostgreSQL.

Creates a temporary database, writes N failed runs of ``LinearFlow`` through the instance API
(run row, metaflow-dagster command line, RUN_FAILURE event: what the sensor reads), then
evaluates the sensor as the daemon would (first tick, then one tick over the burst) and prints
the tick's wall time, the decisions made and the time per failure.

    METAFLOW_USER=bench .venv/bin/python benchmarks/sensor_burst.py [--failures 100] [--mode act]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", type=int, default=100)
    parser.add_argument("--mode", choices=["act", "observe"], default="act")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")

    import psycopg2
    from dagster import DagsterInstance, build_sensor_context

    from auto_resume.dagster.resume_job import build_resume_job
    from auto_resume.dagster.sensor import evaluate
    from auto_resume.metaflow.access import load_flow_shape
    from auto_resume.metaflow.deployment import read_deployment
    from tests.e2e.harness import _psycopg2_dsn, _server_url, create_failed_run

    server = _server_url()
    name = f"auto_resume_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(_psycopg2_dsn(server))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    home = Path(tempfile.mkdtemp())
    try:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["DAGSTER_PG_URL"] = server.rsplit("/", 1)[0] + "/" + name
        instance = DagsterInstance.get()
        deployment = read_deployment(ROOT / "examples" / "generated" / "linear_flow_dagster.py")
        job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
        by_job = {deployment.job_name: deployment, deployment.resume_job_name: deployment}
        policy = home / "policy.yaml"
        policy.write_text(
            f"version: 1\ndefaults: {{mode: {args.mode}}}\nflows:\n"
            f"  - definitions_file: {deployment.definitions_file}\n"
        )
        first = evaluate(build_sensor_context(instance=instance), by_job, {job.name: job}, policy)
        started = time.perf_counter()
        for _ in range(args.failures):
            create_failed_run(instance, "LinearFlow")
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
        instance.dispose()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
