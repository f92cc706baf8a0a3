"""A Metaflow metadata service on loopback: metaflow-local-service's HTTP API, in a process of its own.

metaflow-local-service (0.2.0) serves Metaflow's service API (v2.5.0) from a ``.metaflow``
directory, in the local provider's format. Its own ``start`` detaches the server (it would
outlive a killed test) and writes its state under ``~/.metaflow-local-service``; here the same
app runs in the foreground on a port the test chooses, under ``setpriv --pdeathsig`` like every
helper process of the tests (``tests.support.processes``).

One difference from Metaflow's own service is bridged, and only this one: Metaflow's service
creates a run or a task under the id the client names in the request body (``run_number``,
``task_id``) when that id is not a number (metaflow-service ``api/run.py`` ``create_run``,
``api/task.py`` ``create_task``); metaflow-local-service 0.2.0 ignores it and always mints a
number, so a run named ``dagster-<hash>`` (every metaflow-dagster run) is never created and its
first task fails with HTTP 500. Numeric ids chosen by the client are refused (400), as
Metaflow's service refuses them.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, start_tied_to_this_thread
from tests.support.waiting import wait_until

SERVER_VERSION = "metaflow-local-service 0.2.0"


@dataclass(frozen=True)
class MetadataService:
    """A running service: its URL and the directory that holds its ``.metaflow``."""

    url: str
    root: Path

    def get(self, path: str) -> Any:
        """``GET`` a path of the service API, parsed (None on 404)."""
        try:
            with urllib.request.urlopen(f"{self.url}/{path.lstrip('/')}", timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


@contextmanager
def metadata_service(root: Path, log_file: Path) -> Iterator[MetadataService]:
    """Run the service on a free loopback port, its records under ``root/.metaflow``; stop it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_file.open("ab") as log:
        server = start_tied_to_this_thread(
            [
                sys.executable,
                "-m",
                "tests.support.metadata_service",
                "--port",
                str(port),
                "--root",
                str(root),
            ],
            log=log,
        )
        try:

            def answers() -> bool:
                if server.poll() is not None:
                    raise AssertionError(f"the metadata service exited: {log_file.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=1):
                        return True
                except OSError:
                    return False

            wait_until(answers, 60, f"the metadata service on {url} did not answer", interval=0.2)
            yield MetadataService(url=url, root=root)
        finally:
            server.terminate()
            server.wait(timeout=10)


def _serve(port: int, root: str) -> None:
    import uvicorn
    from fastapi import HTTPException
    from metaflow_local_service import server, store

    minted_run, minted_task = store.create_run, store.create_task

    def named(kind: str, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if str(value).isnumeric():
            raise HTTPException(status_code=400, detail=f"provided {kind} may not be a numeric")
        return str(value)

    def create_run(flow_name: str, body: dict[str, Any]) -> dict[str, Any]:
        run_id = named("run_id", body.get("run_number"))
        if run_id is None:
            return minted_run(flow_name, body)
        store.get_or_create_flow(flow_name, body)
        provider = store._local()
        if provider.get_object("run", "self", {}, None, flow_name, run_id):
            raise HTTPException(status_code=409, detail="Run already exists")
        record = store._build_run_record(flow_name, run_id, body)
        provider._save_meta(provider._create_and_get_metadir(flow_name, run_id), {"_self": record})
        return record

    def create_task(flow_name: str, run_id: str, step_name: str, body: dict[str, Any]) -> dict[str, Any]:
        task_id = named("task_name", body.get("task_id"))
        if task_id is None:
            return minted_task(flow_name, run_id, step_name, body)
        provider = store._local()
        store.get_or_create_step(flow_name, run_id, step_name, body)
        if provider.get_object("task", "self", {}, None, flow_name, run_id, step_name, task_id):
            raise HTTPException(status_code=409, detail="Task already exists")
        record = store._build_task_record(flow_name, run_id, step_name, task_id, body)
        metadir = provider._create_and_get_metadir(flow_name, run_id, step_name, task_id)
        provider._save_meta(metadir, {"_self": record})
        return record

    store.create_run, store.create_task = create_run, create_task
    app = server.create_app(root)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__)
    _parser.add_argument("--port", type=int, required=True)
    _parser.add_argument("--root", required=True)
    _arguments = _parser.parse_args()
    _serve(_arguments.port, _arguments.root)
