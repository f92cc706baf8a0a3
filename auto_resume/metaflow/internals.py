"""Every private Metaflow name auto-resume relies on, each with why no public API does the job.

Nothing else in the package touches an underscore attribute of Metaflow. tests/
test_metaflow_internals.py checks that each of these still exists on the installed Metaflow, so
an upgrade that renames one fails a unit test instead of a resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

# Metadata directories a provider class remembers having made (a few hundred bytes each).
_MADE_DIRS_MAX = 100_000
_UNKNOWN = object()
# The mode of the files Metaflow writes through tempfile (mkstemp, NamedTemporaryFile): private.
_PRIVATE = 0o600


def flow_parameters(flow_class: Any) -> tuple[str, ...]:
    """The names of a flow class's parameters.

    ``FlowSpec._get_parameters`` is how Metaflow's own CLI lists them; there is no public
    classmethod (instances expose parameters only once a run has started).
    """
    return tuple(name for name, _ in flow_class._get_parameters())


def mutated_flow_class(value: Any) -> Any:
    """The flow class under a flow mutator applied bare (``@my_mutator``), else ``value`` itself.

    A ``FlowMutator`` used without parentheses replaces the class at module level by the
    mutator instance (Metaflow calls it to run the flow); the class is its ``_flow_cls``, which
    Metaflow itself reads, and no public attribute names it. Stacked mutators share the class.
    """
    from metaflow.user_decorators.user_flow_decorator import FlowMutator

    if isinstance(value, FlowMutator):
        return value._flow_cls
    return value


def run_time_features(flow_class: Any, step_names: Sequence[str]) -> list[str]:
    """What of a flow class Metaflow builds only once its configs are read: [] if nothing.

    Its ``Config`` parameters, ``FlowMutator``s and ``StepMutator``s: Metaflow's CLI evaluates
    the configs and runs the mutators (``_process_config_decorators``), which may add
    parameters and decorators; the class as imported does not show them. The flow mutators are
    in the private flow state; the step mutators in each step's ``config_decorators``.
    """
    from metaflow.flowspec import FlowStateItems

    parameters = flow_class._get_parameters()
    found = [f"a Config ({param.name})" for _, param in parameters if param.IS_CONFIG_PARAMETER]
    found += [
        f"a FlowMutator ({type(mutator).__name__})"
        for mutator in flow_class._flow_state[FlowStateItems.FLOW_MUTATORS]
    ]
    for name in step_names:
        for mutator in getattr(getattr(flow_class, name), "config_decorators", None) or ():
            found.append(f"a StepMutator on {name} ({type(mutator).__name__})")
    return found


def provider_at(provider_class: Any, storage_class: Any) -> Any:
    """A subclass of a metadata provider that keeps its records under ``storage_class``'s root.

    The local provider (and its subclasses) find their root through the classmethod
    ``_get_storage_class`` (Metaflow's own comment: "meant to be overridden") and the class
    attribute ``datastore_root`` of what it returns. Overriding it per deployment, instead of
    setting ``LocalStorage.datastore_root``, keeps two deployments in one process apart.

    The local provider's JSON writes are also replaced (see ``_fast_dump_json_to_file`` and
    ``_fast_save_meta``), and each metadata directory is created once per process
    (``_create_and_get_metadir``: the provider calls ``os.makedirs`` before every write, four
    times per cloned task).
    """
    if provider_class.TYPE != "local":
        return provider_class

    class DeploymentLocalMetadataProvider(provider_class):  # type: ignore[misc]
        _made_dirs: dict[tuple[Any, ...], str] = {}

        @classmethod
        def _get_storage_class(cls) -> Any:
            return storage_class

        @classmethod
        def _create_and_get_metadir(
            cls,
            flow_name: str | None = None,
            run_id: str | None = None,
            step_name: str | None = None,
            task_id: str | None = None,
        ) -> str:
            key = (flow_name, run_id, step_name, task_id)
            made = cls._made_dirs.get(key)
            if made is None:  # a directory removed since is made again by _fast_save_meta
                made = super()._create_and_get_metadir(flow_name, run_id, step_name, task_id)
                if len(cls._made_dirs) >= _MADE_DIRS_MAX:
                    cls._made_dirs.clear()
                cls._made_dirs[key] = made
            return made

        def _all_obj_elements(self, tags: Any = None, sys_tags: Any = None) -> dict[str, Any]:
            # MetadataProvider._all_obj_elements_static, with the user looked up once per
            # provider instead of once per record (a cloned task's 19 artifact records each
            # asked for it): the same fields and values.
            user = self.__dict__.get("_auto_resume_user", _UNKNOWN)
            if user is _UNKNOWN:
                from metaflow.util import get_username

                user = self.__dict__["_auto_resume_user"] = get_username()
            return {
                "flow_id": self._flow_name,
                "user_name": user,
                "tags": list(tags) if tags else [],
                "system_tags": list(sys_tags) if sys_tags else [],
                "ts_epoch": round(time.time() * 1000),
            }

        _dump_json_to_file = classmethod(_fast_dump_json_to_file)
        _save_meta = classmethod(_fast_save_meta)

    return DeploymentLocalMetadataProvider


def service_provider_at(provider_class: Any, url: str) -> Any:
    """A subclass of the metadata service provider that talks to the service at ``url``.

    The provider sends every request to its class's ``INFO``, which defaults to
    METAFLOW_SERVICE_URL as this process's Metaflow configuration read it at import; the
    deployment's steps may name another service (their environment comes from the definitions
    file). ``INFO`` is a property of the provider's metaclass over ``_INFO``, one per class:
    setting it publicly (``INFO = url``) would ping the service first, so ``_INFO`` is set.
    The provider's ``__init__`` builds its heartbeat URLs from that configured URL too (and
    fails when there is none): it is replaced by one that builds them from ``url``.
    """

    class DeploymentServiceMetadataProvider(provider_class):  # type: ignore[misc]
        def __init__(self, environment: Any, flow: Any, event_logger: Any, monitor: Any) -> None:
            super(provider_class, self).__init__(environment, flow, event_logger, monitor)
            task = "flows/{flow_id}/runs/{run_number}/steps/{step_name}/tasks/{task_id}/heartbeat"
            self.url_task_template = f"{url.rstrip('/')}/{task}"
            self.url_run_template = f"{url.rstrip('/')}/flows/{{flow_id}}/runs/{{run_number}}/heartbeat"
            self.sidecar = None

    DeploymentServiceMetadataProvider._INFO = url
    return DeploymentServiceMetadataProvider


def fast_local_storage(storage_class: Any) -> Any:
    """The local datastore storage with ``LocalStorage._atomic_write`` replaced; others as they are.

    A cloned task's datastore files (its attempt, artifact index and DONE marker) go through
    ``save_bytes``, which writes each one by ``tempfile.mkstemp`` (a random name, tried until
    free) and a buffered file object before the rename: more than the write itself. The
    replacement writes the same bytes to a dot file named by process and thread, then renames
    it, so readers still never see a file half written. No public hook chooses how a storage
    writes.
    """
    if storage_class.TYPE != "local":
        return storage_class

    class FastLocalStorage(storage_class):  # type: ignore[misc]
        _atomic_write = staticmethod(_fast_atomic_write)

    return FastLocalStorage


def _fast_atomic_write(full_path: str, data: bytes | str, mode: str = "wb") -> None:
    """``LocalStorage._atomic_write``: ``data`` into ``full_path``, through a rename."""
    directory, name = os.path.split(full_path)
    _write_then_rename(name, data.encode() if isinstance(data, str) else data, directory)


def _write_then_rename(name: str, data: bytes, directory: str | int) -> None:
    """``data`` into the file ``name`` of ``directory`` (a path, or a descriptor open on it).

    Written to a dot file named by process and thread, then renamed: no reader sees it half
    written, and the client's globs (``sysmeta_attempt-done_*``...) never match the temporary.
    Plain system calls (an ``open()`` file object costs more than the write), and mode 0600,
    as Metaflow's ``mkstemp`` and ``NamedTemporaryFile`` make its files.
    """
    temporary = f".{name}.{os.getpid()}-{threading.get_ident()}"
    if isinstance(directory, int):
        dir_fd: int | None = directory
        paths = {"src_dir_fd": directory, "dst_dir_fd": directory}
    else:
        dir_fd, paths = None, {}
        temporary, name = os.path.join(directory, temporary), os.path.join(directory, name)
    content = memoryview(data)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE, dir_fd=dir_fd)
        try:
            while content:
                content = content[os.write(descriptor, content) :]
        finally:
            os.close(descriptor)
        os.replace(temporary, name, **paths)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def local_storage_class(provider_class: Any) -> Any:
    """The storage class Metaflow's local metadata provider writes through (``LocalStorage``).

    No public accessor: ``_get_storage_class`` is the provider's own extension point.
    """
    return provider_class._get_storage_class()


def _fast_dump_json_to_file(cls: Any, filepath: str, data: Any, allow_overwrite: bool = False) -> None:
    """``LocalMetadataProvider._dump_json_to_file``, several times faster: same file, same content.

    A clone writes about 25 small metadata files; the provider streams each through
    ``json.dump`` into a ``NamedTemporaryFile``, which costs more than the rest of the clone.
    There is no public hook for how the provider writes its files.
    """
    if not allow_overwrite and os.path.isfile(filepath):
        return
    directory, name = os.path.split(filepath)
    _write_then_rename(name, json.dumps(data).encode(), directory)


def _fast_save_meta(cls: Any, root_dir: str, metadict: dict[str, Any], allow_overwrite: bool = False) -> None:
    """``LocalMetadataProvider._save_meta``: one ``<name>.json`` file per entry, same content.

    The original writes each file through ``_dump_json_to_file`` by its full path, after an
    ``isfile`` check; here one listing of the directory replaces the checks and every file is
    opened and renamed relative to the directory (a cloned task's 19 artifact files: 1 listing
    instead of 19 ``stat`` calls, and no lookup of the long path per call). Each file is still
    written to a dot file and renamed, so no reader sees it half written.
    """
    try:
        directory = os.open(root_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # removed since the provider made it (see _create_and_get_metadir)
        os.makedirs(root_dir, exist_ok=True)
        directory = os.open(root_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        present = frozenset() if allow_overwrite else frozenset(os.listdir(directory))
        for name, datum in metadict.items():
            if f"{name}.json" not in present:
                _write_then_rename(f"{name}.json", json.dumps(datum).encode(), directory)
    finally:
        os.close(directory)


def keeps_own_records(provider: Any) -> bool:
    """True for a provider that keeps its records itself (the metadata service), not the local one.

    Only the local provider has ``_ensure_meta``; it skips integer task ids (metaflow-dagster's
    ``1``) in ``register_task_id``, and nothing public creates their records. Other providers
    (the metadata service) keep their records themselves: a task gets one through
    ``register_task_id``, and on Metaflow's service never for an integer id (see ``new_task``).
    """
    return getattr(provider, "_ensure_meta", None) is None


def ensure_record(provider: Any, kind: str, run_id: str, step_name: str, task_id: str | None) -> None:
    """Create the step or task record the client lists, if missing (local provider only).

    ``register_task_id`` would create it only for non-integer ids, and also write the system
    metadata again; ``_ensure_meta`` writes just the record.
    """
    provider._ensure_meta(kind, run_id, step_name, task_id)


def new_task(provider: Any, run_id: str, step_name: str, task_id: str, tags: Sequence[str]) -> None:
    """Register a task that is about to run, with its step record, whatever its id.

    The public ``register_task_id`` skips integer ids on the local provider; Metaflow's runtime
    calls ``_new_task`` for the tasks it starts. With the record there, the step subprocess
    does not add its ``--tag`` values again.

    A metadata service is asked through ``register_task_id``, as the step subprocess asks it.
    Metaflow's service refuses a task that the client names with an integer ("provided
    task_name may not be a numeric", HTTP 400): such a task gets no record there, only the
    metadata its step subprocess registers.
    """
    if keeps_own_records(provider):
        if not task_id.isdigit():
            provider.register_task_id(run_id, step_name, task_id, tags=list(tags))
    else:
        provider._new_task(run_id, step_name, task_id, tags=list(tags))


def task_record(provider: Any, flow_name: str, run_id: str, step_name: str, task_id: str) -> Any:
    """The task's own record, or a falsy value when the provider has none.

    ``get_object`` is the classmethod the client reads through; the client itself cannot be
    asked, as it hides tasks that have no record.
    """
    return type(provider).get_object("task", "self", {}, None, flow_name, run_id, step_name, task_id)


def task_metadata(provider: Any, flow_name: str, run_id: str, step_name: str, task_id: str) -> list[Any]:
    """Every metadatum of a task, as the provider stores it (dicts with ``field_name``, ...).

    Through ``get_object`` for the same reason as ``task_record``: the task may have no record.
    """
    found = type(provider).get_object("task", "metadata", None, None, flow_name, run_id, step_name, task_id)
    return list(found or [])


def storage_of(flow_datastore: Any) -> Any:
    """The storage (local, S3, ...) a ``FlowDataStore`` reads and writes through.

    ``FlowDataStore._storage_impl`` is what Metaflow's own ``get_task_datastores`` lists steps
    and tasks with; no public attribute exposes it.
    """
    return flow_datastore._storage_impl


def prefetch_artifacts(flow_datastore: Any, datastores: Sequence[Any], names: Sequence[str]) -> None:
    """Load the artifacts ``names`` of every task in ``datastores`` in one batch.

    What ``TaskDataStoreSet(prefetch_data_artifacts=...)`` does for the tasks it finds: the blobs
    are loaded together and kept in the content-addressed store's cache (an
    ``ImmutableBlobCache``), so that reading them task by task costs no further round trips. No
    public API prefetches for datastores obtained otherwise.
    """
    from metaflow.datastore.datastore_set import ImmutableBlobCache

    keys = {key for datastore in datastores for key in datastore.keys_for_artifacts(list(names))}
    keys.discard(None)
    if keys:
        store = flow_datastore.ca_store
        store.set_blob_cache(ImmutableBlobCache(dict(store.load_blobs(keys))))


def blob_locations(flow_datastore: Any, keys: Sequence[str]) -> tuple[Any, list[str]]:
    """The storage of the content-addressed store and the path of each blob ``key``.

    Metaflow has no public "does this blob exist" call; the store's storage and prefix are
    ``ca_store._storage_impl`` and ``ca_store._prefix`` (the layout is ``<prefix>/<key[:2]>/<key>``).
    """
    ca_store = flow_datastore.ca_store
    storage = ca_store._storage_impl
    return storage, [storage.path_join(ca_store._prefix, key[:2], key) for key in keys]
