"""Where a deployment's Metaflow data lives, and the datastore and metadata provider to reach it.

Everything is resolved from the deployment (its Metaflow arguments and step environment) into a
``StoreLocation`` of plain values, once, in the process that asks; ``open_store`` builds the
datastore objects from that location alone. Nothing here changes ``os.environ`` or a class
attribute Metaflow shares: two deployments in one process each get their own roots, and a clone
process opens exactly what its parent resolved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.metaflow import internals
from auto_resume.metaflow.deployment import Deployment

_SYSROOT_VARIABLE = "METAFLOW_DATASTORE_SYSROOT_LOCAL"
_SERVICE_URL_VARIABLE = "METAFLOW_SERVICE_URL"


@dataclass(frozen=True)
class StoreLocation:
    """A deployment's datastore and metadata provider, resolved to plain (picklable) values."""

    flow_name: str
    datastore_type: str
    datastore_root: str | None
    metadata_type: str
    # Where the local metadata provider keeps its records (None for other providers).
    metadata_root: str | None
    # The metadata service's URL (None for other providers).
    metadata_url: str | None = None
    # System tags of every record written through the provider (``@project``'s).
    system_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Store:
    """The opened datastore of one flow, with the metadata provider its tasks register through."""

    location: StoreLocation
    flow_datastore: Any
    metadata: Any


def location_of(deployment: Deployment) -> StoreLocation:
    """Resolve the datastore and metadata roots the deployment's steps use.

    Raises:
        MetaflowAccessError: The deployment names a datastore or provider Metaflow lacks.
    """
    storage_class, provider_class = _plugins(deployment)
    root = deployment.top_arg("datastore-root") or storage_class.get_datastore_root_from_config(
        lambda *args, **kwargs: None
    )
    metadata_root = None
    if provider_class.TYPE == "local":
        local_storage = internals.local_storage_class(provider_class)
        # On a local datastore the records sit beside the data; on a remote one (s3, ...), in
        # the local metadata directory the steps find from their working directory.
        metadata_root = (
            root if storage_class.TYPE == "local" else _local_metadata_root(deployment, local_storage)
        )
    return StoreLocation(
        flow_name=deployment.flow_name,
        datastore_type=storage_class.TYPE,
        datastore_root=root,
        metadata_type=provider_class.TYPE,
        metadata_root=metadata_root,
        metadata_url=_service_url(deployment) if provider_class.TYPE == "service" else None,
        system_tags=_system_tags(deployment),
    )


def _system_tags(deployment: Deployment) -> tuple[str, ...]:
    """The flow's ``@project`` tags, which its steps add to their own records (none without it)."""
    from auto_resume.metaflow.flows import project_system_tags

    if not deployment.flow_file.is_file():
        return ()  # nothing to run either: a resume fails on the missing flow file, and says so
    return project_system_tags(deployment.flow_file, deployment.flow_name, deployment.top_args)


def _service_url(deployment: Deployment) -> str:
    """The metadata service the steps talk to: METAFLOW_SERVICE_URL of the step environment.

    ``dagster create`` copies it there; the code location's own environment (or Metaflow
    configuration) need not have it.

    Raises:
        MetaflowAccessError: Neither the deployment nor this process names a service.
    """
    from metaflow import metaflow_config

    url = (
        deployment.step_env.get(_SERVICE_URL_VARIABLE)
        or os.environ.get(_SERVICE_URL_VARIABLE)
        or metaflow_config.SERVICE_URL
    )
    if not url:
        raise MetaflowAccessError(
            f"{deployment.definitions_file}: the flow records its metadata in a metadata service "
            f"(--metadata=service) but names none: compile it with {_SERVICE_URL_VARIABLE} set, "
            f"or set {_SERVICE_URL_VARIABLE} for the code location"
        )
    return str(url)


def _plugins(deployment: Deployment) -> tuple[Any, Any]:
    from metaflow.plugins import DATASTORES, METADATA_PROVIDERS

    datastore_type = deployment.top_arg("datastore") or "local"
    metadata_type = deployment.top_arg("metadata") or "local"
    storage_class = next((d for d in DATASTORES if datastore_type == d.TYPE), None)
    provider_class = next((m for m in METADATA_PROVIDERS if metadata_type == m.TYPE), None)
    if storage_class is None or provider_class is None:
        raise MetaflowAccessError(
            f"{deployment.definitions_file}: unsupported datastore {datastore_type!r} "
            f"or metadata provider {metadata_type!r}"
        )
    return storage_class, provider_class


def _local_metadata_root(deployment: Deployment, local_storage: Any) -> str:
    """Where the steps' local metadata provider writes: ``<sysroot>/.metaflow``.

    The sysroot is METAFLOW_DATASTORE_SYSROOT_LOCAL of the step environment; without it a step
    (working directory: the flow's) uses the nearest ``.metaflow`` above, else its own.
    """
    datastore_dir = local_storage.DATASTORE_DIR
    sysroot = deployment.step_env.get(_SYSROOT_VARIABLE) or os.environ.get(_SYSROOT_VARIABLE)
    if sysroot:
        return os.path.join(sysroot, datastore_dir)
    flow_dir = Path(os.path.realpath(deployment.flow_file.parent))
    for directory in (flow_dir, *flow_dir.parents):
        if (directory / datastore_dir).is_dir():
            return str(directory / datastore_dir)
    return str(flow_dir / datastore_dir)


def store_for(deployment: Deployment) -> Store:
    """The store of ``deployment``, opened once per process and location."""
    return open_store(location_of(deployment))


@lru_cache(maxsize=32)
def open_store(location: StoreLocation) -> Store:
    """Open the datastore and the metadata provider at ``location`` (cached per process)."""
    from metaflow.datastore.flow_datastore import FlowDataStore
    from metaflow.metaflow_environment import MetaflowEnvironment
    from metaflow.plugins import DATASTORES, METADATA_PROVIDERS

    storage_class = internals.fast_local_storage(
        next(d for d in DATASTORES if location.datastore_type == d.TYPE)
    )
    provider_class = next(m for m in METADATA_PROVIDERS if location.metadata_type == m.TYPE)
    if location.metadata_root is not None:
        # A subclass per location, with the root as its own class attribute: the provider
        # reads its root from there, and LocalStorage itself stays as Metaflow configured it.
        base = internals.local_storage_class(provider_class)
        records = type(f"{base.__name__}At", (base,), {"datastore_root": location.metadata_root})
        provider_class = internals.provider_at(provider_class, records)
    elif location.metadata_url is not None:
        provider_class = internals.service_provider_at(provider_class, location.metadata_url)

    class _Flow:
        name = location.flow_name

    flow_datastore = FlowDataStore(
        location.flow_name, storage_impl=storage_class, ds_root=location.datastore_root
    )
    metadata = provider_class(MetaflowEnvironment(_Flow), _Flow, None, None)
    # As @project's flow_init does in a Metaflow process: every record carries these.
    metadata.add_sticky_tags(sys_tags=list(location.system_tags))
    # With the provider attached, a cloned task's datastore registers its artifacts and its
    # finished attempt when done, as a task run by Metaflow does: the client reads them.
    flow_datastore.metadata = metadata
    return Store(location=location, flow_datastore=flow_datastore, metadata=metadata)


@dataclass(frozen=True)
class DefaultConfiguration:
    """This process's Metaflow configuration, as ``dagster create`` would compile it."""

    datastore: str
    datastore_root: str | None
    metadata: str
    environment: str


def default_configuration() -> DefaultConfiguration:
    """Metaflow's default datastore (root resolved now), metadata provider and environment.

    Raises:
        MetaflowAccessError: The default datastore is not available.
    """
    from metaflow import metaflow_config
    from metaflow.plugins import DATASTORES

    datastore = metaflow_config.DEFAULT_DATASTORE
    storage = next((d for d in DATASTORES if datastore == d.TYPE), None)
    if storage is None:
        raise MetaflowAccessError(f"Metaflow's default datastore {datastore!r} is not available")
    return DefaultConfiguration(
        datastore=datastore,
        datastore_root=storage.get_datastore_root_from_config(lambda *args, **kwargs: None),
        metadata=metaflow_config.DEFAULT_METADATA,
        environment=metaflow_config.DEFAULT_ENVIRONMENT,
    )


def step_env_for(configuration: DefaultConfiguration) -> dict[str, str]:
    """The variables every step subprocess needs to find the datastore (local: its sysroot)."""
    if configuration.datastore == "local" and configuration.datastore_root:
        return {_SYSROOT_VARIABLE: str(Path(configuration.datastore_root).parent)}
    return {}
