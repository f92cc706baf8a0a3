"""The demo: a failure, the sensor's decision and a resume, on a throwaway embedded instance.

Everything runs in this process on a temporary SQLite Dagster instance and a temporary local
Metaflow datastore: the example foreach flow fails on one item, ``auto_resume_sensor`` is
evaluated exactly as the daemon would, and the resume run it requests is executed.
"""

import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import (
    DagsterInstance,
    Definitions,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorResult,
    build_sensor_context,
)

from auto_resume.cli.history import step_counts
from auto_resume.dagster.code_location import build_definitions
from auto_resume.dagster.run_facts import metaflow_run_id
from auto_resume.dagster.sensor import SENSOR_NAME
from auto_resume.metaflow.commands import compile_definitions
from auto_resume.metaflow.records import client_view

# The example flows ship in the package (package data), so the demo runs from an installed wheel.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOW_FILE = "foreach_flow.py"
JOB_NAME = "ForeachFlow"
# Dagster's console logger prints every event; the demo shows its own summary instead.
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def run_demo(echo: Callable[[str], None], width: int = 6, fail_index: int = 3) -> bool:
    """Run the demo, reporting each stage through ``echo``; True if the resume succeeded."""
    with tempfile.TemporaryDirectory(prefix="auto-resume-demo-") as scratch:
        root = Path(scratch)
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(root)
        workdir = root / "counters"
        definitions_file = root / "foreach_flow_dagster.py"
        echo(f"1. compiling {EXAMPLES / FLOW_FILE} with metaflow-dagster")
        compile_definitions(EXAMPLES / FLOW_FILE, definitions_file, os.environ)
        policy_file = root / "policy.yaml"
        policy_file.write_text(
            "version: 1\nsensor:\n  minimum_interval_seconds: 5\n  default_status: running\n"
            f"defaults:\n  max_attempts: 2\nflows:\n  - definitions_file: {definitions_file.name}\n"
        )
        defs = build_definitions(policy_file)
        sensor = defs.resolve_sensor_def(SENSOR_NAME)
        (root / "dagster_home").mkdir()
        with DagsterInstance.local_temp(tempdir=str(root / "dagster_home")) as instance:
            first = _tick(sensor, instance, defs, cursor=None)
            echo(f"2. sensor's first tick: {first.skip_reason.skip_message if first.skip_reason else ''}")
            config = {"alpha": 7, "width": width, "workdir": str(workdir), "fail_at": f"body:{fail_index}"}
            echo(f"3. running {JOB_NAME} with {config}")
            failed = _primary_job(definitions_file).execute_in_process(
                run_config={"ops": {"op_start": {"config": config}}, **_QUIET},
                instance=instance,
                raise_on_error=False,
            )
            echo(f"   run {failed.run_id}: {'succeeded' if failed.success else 'FAILED'}")
            tick = _tick(sensor, instance, defs, cursor=first.cursor)
            requests: list[RunRequest] = list(tick.run_requests or [])
            if not requests:
                echo(f"4. sensor: {tick.skip_reason.skip_message if tick.skip_reason else 'nothing'}")
                return False
            request = requests[0]
            echo(f"4. sensor requests {request.job_name} with run config {request.run_config}")
            for key, value in sorted((request.tags or {}).items()):
                echo(f"     tag {key} = {value}")
            assert request.job_name is not None
            resumed = defs.resolve_job_def(request.job_name).execute_in_process(
                run_config={**request.run_config, **_QUIET},
                tags=request.tags,
                instance=instance,
                raise_on_error=False,
            )
            echo(f"5. resume run {resumed.run_id}: {'succeeded' if resumed.success else 'FAILED'}")
            for counts in step_counts(instance, resumed.run_id):
                echo(f"     step {counts.step}: {counts.cloned} task(s) cloned, {counts.executed} executed")
            echo("6. how many times each task's user code ran, from the counter files:")
            for counter in sorted(workdir.glob("*.count")):
                runs = len(counter.read_text().splitlines())
                note = "   <- failed once, executed again" if runs > 1 else ""
                echo(f"     {counter.stem:<8} {runs}{note}")
            echo(f"   end step wrote alpha.txt: {(workdir / 'alpha.txt').read_text().strip()!r}")
            new_run_id = _logged_run_id(instance, resumed.run_id)
            successful, steps = client_view(JOB_NAME, new_run_id)
            echo(f"7. Metaflow client: Flow({JOB_NAME!r})[{new_run_id!r}]:")
            echo(f"     successful={successful}, steps={steps}")
            return resumed.success


def _logged_run_id(instance: DagsterInstance, dagster_run_id: str) -> str:
    run_id = metaflow_run_id(instance, dagster_run_id)
    assert run_id is not None
    return run_id


def _tick(
    sensor: SensorDefinition, instance: DagsterInstance, defs: Definitions, cursor: str | None
) -> SensorResult:
    """One evaluation of the sensor, as the daemon would run it."""
    result = sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    assert isinstance(result, SensorResult)
    return result


def _primary_job(definitions_file: Path) -> JobDefinition:
    spec = importlib.util.spec_from_file_location("auto_resume_demo_primary", definitions_file)
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    job: JobDefinition = getattr(module, JOB_NAME)
    return job
