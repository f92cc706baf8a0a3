"""``auto-resume ui``'s throwaway home: an instance that needs no PostgreSQL, a valid policy."""

from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.runs import SqliteRunStorage

from auto_resume.cli.ui import AUTO_RESUME_LOCATION, FLOW_LOCATION, make_sandbox
from auto_resume.dagster.code_location import build_definitions
from auto_resume.dagster.sensor import SENSOR_NAME


def test_sandbox_is_a_sqlite_instance_with_a_running_sensor_and_two_locations(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    defs = build_definitions(sandbox.policy)
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.minimum_interval_seconds == 4  # the policy's 5 s, declared one second less
    assert sensor.default_status.value == "RUNNING"
    assert [job.name for job in defs.resolve_all_job_defs()] == ["ForeachFlow_resume"]
    locations = [
        next(iter(entry.values()))["location_name"]
        for entry in yaml.safe_load(sandbox.workspace.read_text())["load_from"]
    ]
    assert locations == [AUTO_RESUME_LOCATION, FLOW_LOCATION]
