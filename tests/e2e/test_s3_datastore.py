"""A flow on Metaflow's S3 datastore resumes correctly, and its origin run's objects stay as they were.

The S3 server is moto's, on loopback, in a process of its own. The flow is compiled by
metaflow-dagster with ``--datastore=s3 --metadata=local`` (the metadata stays in a local
directory, the artifacts go to the bucket). Its Dagster job and auto-resume's companion job are
executed in-process (``execute_in_process``), each in a fresh Python child of the test: Metaflow
reads its configuration (S3 endpoint, local sysroot) once, at import, so every child starts with
exactly the environment a Dagster code location would have. The resume child gets only the S3
endpoint and credentials, and a working directory with no ``.metaflow``: the rest must come from
the definitions file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from auto_resume.core.run_ids import make_run_id
from auto_resume.metaflow.commands import compile_definitions
from auto_resume.metaflow.deployment import read_deployment
from tests.support.client_probe import client_probe
from tests.support.in_child import run_in_child
from tests.support.processes import free_port, start_tied_to_this_thread
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLOW_FILE = ROOT / "examples" / "flows" / "foreach_flow.py"
BUCKET = "auto-resume-test"
PREFIX = "metaflow"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture()
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """URL of a moto S3 server on loopback holding an empty bucket ``BUCKET``; stopped after."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    server = start_tied_to_this_thread(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = _client(endpoint)

        def bucket_created() -> bool:
            try:
                client.create_bucket(Bucket=BUCKET)
                return True
            except Exception:
                if server.poll() is not None:
                    raise  # the server is gone: no point waiting
                return False

        wait_until(bucket_created, 60, f"moto server on {endpoint} did not create {BUCKET}", interval=0.2)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _client(endpoint: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=endpoint)


def _environment(endpoint: str, **extra: str) -> dict[str, str]:
    """The machine's environment without AWS or Metaflow settings, plus the S3 server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METAFLOW_"))}
    return {
        **env,
        **CREDENTIALS,
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "tester"),
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        # A broken server fails a step in seconds, not after minutes of retries.
        "METAFLOW_S3_RETRY_COUNT": "1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _objects(client: Any) -> dict[str, tuple[str, str, str]]:
    """Every object of the bucket: key -> (sha256 of its bytes, last modified, user metadata)."""
    found: dict[str, tuple[str, str, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for entry in page.get("Contents", []):
            got = client.get_object(Bucket=BUCKET, Key=entry["Key"])
            found[entry["Key"]] = (
                hashlib.sha256(got["Body"].read()).hexdigest(),
                got["LastModified"].isoformat(),
                json.dumps(got.get("Metadata", {}), sort_keys=True),
            )
    return found


def _referenced_blobs(client: Any, run_prefix: str) -> set[str]:
    """Keys of the content-addressed blobs the run's tasks list in their ``<attempt>.data.json``."""
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=run_prefix):
        for entry in page.get("Contents", []):
            if not entry["Key"].endswith(".data.json"):
                continue
            index = json.loads(client.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read())
            keys.update(f"{PREFIX}/ForeachFlow/data/{sha[:2]}/{sha}" for sha in index["objects"].values())
    return keys


def _counts(workdir: Path) -> dict[str, int]:
    return {path.stem: len(path.read_text().splitlines()) for path in workdir.glob("*.count")}


def test_resume_on_s3_datastore_leaves_origin_objects_untouched(s3_endpoint: str, tmp_path: Path) -> None:
    client = _client(s3_endpoint)
    sysroot = tmp_path / "local"
    sysroot.mkdir()
    definitions = tmp_path / "foreach_s3_dagster.py"
    compile_env = _environment(
        s3_endpoint,
        METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/{PREFIX}",
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(sysroot),
    )
    compile_definitions(FLOW_FILE, definitions, compile_env, ("--datastore=s3", "--metadata=local"))
    deployment = read_deployment(definitions)
    assert deployment.top_arg("datastore") == "s3"
    assert deployment.top_arg("datastore-root") == f"s3://{BUCKET}/{PREFIX}"

    # The code location's environment: the S3 server and credentials, nothing else; its working
    # directory has no .metaflow above it, so local metadata can only land where the file says.
    location_env = _environment(s3_endpoint)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workdir = tmp_path / "counters"
    params = {"alpha": 42, "width": 3, "workdir": str(workdir), "fail_at": "body:1"}
    origin = run_in_child("origin", location_env, elsewhere, str(definitions), json.dumps(params))
    assert origin["success"] is False
    origin_run = make_run_id(origin["run_id"])
    assert _counts(workdir) == {"start": 1, "body-0": 1, "body-1": 1, "body-2": 1}

    run_prefix = f"{PREFIX}/ForeachFlow/{origin_run}/"
    before = _objects(client)
    origin_keys = {key for key in before if key.startswith(run_prefix)}
    blobs = _referenced_blobs(client, run_prefix)
    assert any(key.startswith(f"{run_prefix}body/1-2/") for key in origin_keys)
    assert blobs and blobs <= before.keys()

    resumed = run_in_child("resume", location_env, elsewhere, str(definitions), origin_run)
    assert resumed["success"] is True, resumed
    new_run = make_run_id(resumed["run_id"])

    # Only the failed item, the join and end ran again; alpha kept the origin's value.
    assert _counts(workdir) == {"start": 1, "body-0": 1, "body-1": 2, "body-2": 1, "join": 1, "end": 1}
    assert (workdir / "alpha.txt").read_text() == "42 5\n"
    assert any(line.startswith("step body: 2 task(s) cloned") for line in resumed["summary"])

    # Every object that existed before the resume is byte-identical and was not rewritten;
    # nothing was added under the origin run's prefix.
    after = _objects(client)
    assert {key: after.get(key) for key in before} == before
    assert {key for key in after if key.startswith(run_prefix)} == origin_keys
    assert any(key.startswith(f"{PREFIX}/ForeachFlow/{new_run}/") for key in after)
    assert not (elsewhere / ".metaflow").exists()

    # Metaflow's client, reading the local metadata and the S3 datastore, sees the new run.
    probe = (
        "import json, sys\n"
        "from metaflow import Flow, namespace\n"
        "namespace(None)\n"
        "run = Flow('ForeachFlow')[sys.argv[1]]\n"
        "start = run['start'].task\n"
        "print(json.dumps({'successful': run.successful, 'steps': sorted(s.id for s in run),\n"
        "    'alpha': run['end'].task.data.alpha, 'total': run['join'].task.data.total,\n"
        "    'items': start.data.items, 'metadata': start.metadata_dict}))\n"
    )
    seen = client_probe(
        probe,
        new_run,
        env=_environment(s3_endpoint, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(sysroot)),
        cwd=elsewhere,
    )
    assert seen["successful"] is True
    assert seen["steps"] == ["body", "end", "join", "start"]
    assert seen["alpha"] == 42 and seen["total"] == 5 and seen["items"] == [0, 1, 2]
    assert seen["metadata"]["origin-run-id"] == origin_run
    assert seen["metadata"]["ds-type"] == "s3"
