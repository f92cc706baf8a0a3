"""The private Metaflow names auto_resume.metaflow.internals relies on, and what it builds on them.

A Metaflow upgrade that renames or changes one of them fails here, not in a resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from auto_resume.metaflow import internals
from auto_resume.metaflow.datastore import location_of, open_store, store_for
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.flows import load_flow_shape
from tests.support.linear_origin import linear_deployment

ROOT = Path(__file__).resolve().parents[1]


def test_private_names_still_exist() -> None:
    from metaflow.datastore.content_addressed_store import ContentAddressedStore
    from metaflow.flowspec import FlowSpec
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    assert LocalMetadataProvider._get_storage_class() is LocalStorage
    assert callable(LocalStorage._atomic_write)
    for name in (
        "_dump_json_to_file",
        "_save_meta",
        "_create_and_get_metadir",
        "_all_obj_elements",
        "_ensure_meta",
        "_new_task",
        "get_object",
    ):
        assert callable(getattr(LocalMetadataProvider, name)), name
    assert callable(FlowSpec._get_parameters)
    store = ContentAddressedStore("Flow/data", LocalStorage("/nowhere"))
    assert store._prefix == "Flow/data"
    assert isinstance(store._storage_impl, LocalStorage)
    from metaflow.datastore.flow_datastore import FlowDataStore

    flow_datastore = FlowDataStore("Flow", storage_impl=LocalStorage, ds_root="/nowhere")
    assert isinstance(internals.storage_of(flow_datastore), LocalStorage)
    # prefetch_artifacts: what TaskDataStoreSet's prefetch uses.
    from metaflow.datastore.datastore_set import ImmutableBlobCache
    from metaflow.datastore.task_datastore import TaskDataStore

    assert callable(flow_datastore.ca_store.set_blob_cache)
    assert callable(TaskDataStore.keys_for_artifacts)
    assert callable(ImmutableBlobCache)


def test_flow_parameters() -> None:
    from auto_resume.metaflow.flows import _flow_class

    flow_class = _flow_class(ROOT / "examples" / "flows" / "linear_flow.py", "LinearFlow")
    assert "alpha" in internals.flow_parameters(flow_class)


def test_fast_json_writes_what_metaflow_writes(tmp_path: Path) -> None:
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    data = {"field_name": "attempt", "value": "0", "tags": ["attempt_id:0"], "ü": 1.5}
    LocalMetadataProvider._dump_json_to_file(str(tmp_path / "slow.json"), data)
    internals._fast_dump_json_to_file(LocalMetadataProvider, str(tmp_path / "fast.json"), data)
    assert json.loads((tmp_path / "fast.json").read_text()) == json.loads(
        (tmp_path / "slow.json").read_text()
    )
    # Never overwritten unless asked, like the original.
    internals._fast_dump_json_to_file(LocalMetadataProvider, str(tmp_path / "fast.json"), {"other": 1})
    assert json.loads((tmp_path / "fast.json").read_text()) == json.loads(
        (tmp_path / "slow.json").read_text()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.json", "slow.json"]
    # The same permissions too: Metaflow's temporary files are private (0600) and keep that.
    assert (tmp_path / "fast.json").stat().st_mode == (tmp_path / "slow.json").stat().st_mode


def test_fast_local_storage_writes_what_metaflow_writes(tmp_path: Path) -> None:
    from io import BytesIO

    from metaflow.plugins.datastores.local_storage import LocalStorage

    fast_class = internals.fast_local_storage(LocalStorage)
    assert fast_class is not LocalStorage and issubclass(fast_class, LocalStorage)
    for storage, root in (
        (LocalStorage(str(tmp_path / "slow")), "slow"),
        (fast_class(str(tmp_path / "fast")), "fast"),
    ):
        storage.save_bytes([("F/r/s/1/0.data.json", BytesIO(b'{"x": 1}'))])
        storage.save_bytes([("F/r/s/1/0.data.json", BytesIO(b"not overwritten"))])
        storage.save_bytes([("F/r/s/1/log", (BytesIO("ü".encode()), {"m": 1}))], overwrite=True)
        assert sorted(p.name for p in (tmp_path / root / "F/r/s/1").iterdir()) == [
            "0.data.json",
            "log",
            "log_meta",
        ]
    for name in ("0.data.json", "log", "log_meta"):
        fast_file, slow_file = tmp_path / "fast/F/r/s/1" / name, tmp_path / "slow/F/r/s/1" / name
        assert fast_file.read_bytes() == slow_file.read_bytes()
        assert fast_file.stat().st_mode == slow_file.stat().st_mode  # mkstemp's 0600


def test_fast_provider_writes_what_metaflow_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's replaced record writes (_save_meta, _all_obj_elements, the metadata
    directory made once): the same files with the same JSON fields as Metaflow's own provider."""
    from metaflow.metadata_provider.metadata import MetaDatum
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    deployment = linear_deployment(tmp_path)
    store = store_for(deployment)
    fast = store.metadata
    assert type(fast)._save_meta.__func__ is internals._fast_save_meta
    assert fast._flow_name == "LinearFlow"
    plain = LocalMetadataProvider(fast._environment, type("F", (), {"name": "LinearFlow"}), None, None)
    plain.add_sticky_tags(sys_tags=list(fast.sticky_sys_tags))
    metadata_dir = tmp_path / ".metaflow" / "LinearFlow" / "{run}" / "start" / "1" / "_meta"

    written = {}
    for run_id, provider in (("fastrun", fast), ("plainrun", plain)):
        if provider is plain:  # Metaflow's own root, as the fast provider's class holds it
            monkeypatch.setattr(
                internals.local_storage_class(LocalMetadataProvider),
                "datastore_root",
                str(tmp_path / ".metaflow"),
            )
        provider._ensure_meta("task", run_id, "start", "1")
        provider.register_metadata(
            run_id, "start", "1", [MetaDatum("attempt", "0", "attempt", ["attempt_id:0"])]
        )
        directory = Path(str(metadata_dir).format(run=run_id))
        shutil.rmtree(directory.parent)  # made again: the fast provider remembers having made it
        provider.register_metadata(
            run_id, "start", "1", [MetaDatum("origin-run-id", "x", "origin-run-id", [])]
        )
        files = {p.name.rsplit("_", 1)[0]: json.loads(p.read_text()) for p in directory.iterdir()}
        modes = {p.stat().st_mode for p in directory.iterdir()}
        assert modes == {0o100600}, f"{provider}: {modes}"  # NamedTemporaryFile's, as Metaflow's
        written[provider is fast] = {
            name: {k: v for k, v in record.items() if k not in ("ts_epoch", "run_number")}
            for name, record in files.items()
        }
    assert written[True] == written[False]
    assert list(written[True]) == ["sysmeta_origin-run-id"]
    # The per-record fields of the artifact and task records, user included.
    assert fast._all_obj_elements(["t"], ["s"]).keys() == plain._all_obj_elements(["t"], ["s"]).keys()
    assert {k: v for k, v in fast._all_obj_elements(["t"], ["s"]).items() if k != "ts_epoch"} == {
        k: v for k, v in plain._all_obj_elements(["t"], ["s"]).items() if k != "ts_epoch"
    }


def _two_deployments(tmp_path: Path) -> tuple[Deployment, Deployment]:
    first = linear_deployment(tmp_path / "a")
    second = dataclasses.replace(linear_deployment(tmp_path / "b"), step_env={})
    return first, second


def test_two_deployments_keep_their_own_roots(tmp_path: Path) -> None:
    """Opening stores changes neither os.environ nor Metaflow's shared LocalStorage root."""
    from metaflow.plugins.datastores.local_storage import LocalStorage

    environment = dict(os.environ)
    shared_root = LocalStorage.datastore_root
    first, second = _two_deployments(tmp_path)
    stores = [store_for(first), store_for(second)]
    for store, name in zip(stores, ("a", "b"), strict=True):
        store.metadata.register_run_id("dagster-000000000001")
        assert (tmp_path / name / ".metaflow" / "LinearFlow" / "dagster-000000000001" / "_meta").is_dir()
        assert store.flow_datastore.datastore_root == str(tmp_path / name / ".metaflow")
    assert dict(os.environ) == environment
    assert LocalStorage.datastore_root == shared_root
    assert open_store(location_of(first)) is stores[0]


def test_each_service_deployment_talks_to_its_own_service(tmp_path: Path) -> None:
    """The service URL comes from the deployment, not from this process; no request is made."""
    from metaflow.plugins.metadata_providers.service import ServiceMetadataProvider

    first, second = _two_deployments(tmp_path)
    top_args = tuple(a.replace("--metadata=local", "--metadata=service") for a in first.top_args)
    urls = ("http://127.0.0.1:1/", "http://127.0.0.1:2")
    stores = [
        store_for(dataclasses.replace(d, top_args=top_args, step_env={"METAFLOW_SERVICE_URL": url}))
        for d, url in zip((first, second), urls, strict=True)
    ]
    for store, url in zip(stores, urls, strict=True):
        assert store.location.metadata_url == url
        assert isinstance(store.metadata, ServiceMetadataProvider)
        assert url == type(store.metadata).INFO
        assert (
            store.metadata.url_run_template
            == url.rstrip("/") + "/flows/{flow_id}/runs/{run_number}/heartbeat"
        )
        assert internals.keeps_own_records(store.metadata)
    assert ServiceMetadataProvider._INFO in (None, os.environ.get("METAFLOW_SERVICE_URL"))


def test_no_fork_in_this_process_when_cloning_a_wide_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clone processes come from the fork server: the process that resumes never forks.

    It clones beside them (what they have not taken yet), not all of it.
    """
    from auto_resume.metaflow import cloning
    from auto_resume.metaflow.origin import read_origin_step
    from tests.support.linear_origin import failed_linear_origin

    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    deployment = linear_deployment(tmp_path)
    failed_linear_origin(deployment, "dagster-0a0a0a0a0a0a", tmp_path / "counters")
    assert load_flow_shape(deployment.flow_file, deployment.flow_name).step("start")
    store = store_for(deployment)
    origin = read_origin_step(store, "dagster-0a0a0a0a0a0a", "start")
    (start,) = origin.tasks.values()

    def no_fork() -> int:
        raise AssertionError("os.fork() called in the resuming process")

    here: list[str] = []
    clone_here = cloning._clone

    def counted(store: object, clone: tuple[str, str, object], *args: object) -> None:
        here.append(clone[1])
        clone_here(store, clone, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(cloning, "_clone", counted)
    clones = [(start.pathspec, f"1-{i}") for i in range(192)]
    errors = cloning.clone_tasks(store, origin, clones, "dagster-0b0b0b0b0b0b", processes=2)
    assert errors == {}
    step_dir = tmp_path / ".metaflow" / "LinearFlow" / "dagster-0b0b0b0b0b0b" / "start"
    done = [task for task in step_dir.iterdir() if (task / "0.data.json").is_file()]
    assert len(done) == 192
    # This process clones only what the clone processes had not taken (from the back).
    assert len(here) < 192
