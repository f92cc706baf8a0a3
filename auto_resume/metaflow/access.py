"""Every call auto-resume makes into Metaflow: flow graph, datastore reads, clones, step commands.

Nothing else in the package imports Metaflow or builds a Metaflow command line.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.flow_shape import FlowShape, OriginTask, StepShape, TaskOutcome, topological
from auto_resume.metaflow.deployment import UNSUPPORTED_STEP_DECORATORS, Deployment

_TAIL = 3000

# Local metadata writes are serialised: Metaflow's local provider is not thread safe.
_METADATA_LOCK = threading.Lock()
# Origin steps whose datastores are kept for cloning (a resume clones one step at a time).
_ORIGIN_SETS_KEPT = 2
# Fewest clones worth a process of their own (a fork costs a few milliseconds).
_CLONES_PER_PROCESS_MIN = 32
# Metadata a clone writes for itself, never copied from its origin task.
_OWN_FIELDS = frozenset({"attempt", "attempt_ok", "attempt-done", "origin-run-id", "origin-task-id"})


def compile_definitions(flow_file: Path, output: Path, env: Mapping[str, str]) -> None:
    """Run ``python flow.py dagster create output`` (metaflow-dagster's compiler).

    Raises:
        MetaflowAccessError: The compiler failed; the message carries its output.
    """
    command = [
        sys.executable,
        str(flow_file),
        "--no-pylint",
        "--datastore=local",
        "--metadata=local",
        "dagster",
        "create",
        str(output),
    ]
    result = subprocess.run(
        command, env=dict(env), cwd=str(flow_file.parent), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MetaflowAccessError(
            f"compiling {flow_file} with metaflow-dagster failed:\n{result.stderr[-_TAIL:]}"
        )


def client_view(flow_name: str, run_id: str) -> tuple[bool, list[str]]:
    """What Metaflow's client says of a run: whether it succeeded, and its steps."""
    from metaflow.client.core import Flow, namespace

    namespace(None)
    run = Flow(flow_name)[run_id]
    return bool(run.successful), sorted(step.id for step in run)


@lru_cache(maxsize=64)
def _import_flow_module(flow_file: Path) -> Any:
    module_name = "auto_resume_flow_" + hashlib.sha1(str(flow_file).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(module_name, flow_file)
    if spec is None or spec.loader is None:
        raise MetaflowAccessError(f"cannot import flow file {flow_file}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(flow_file.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise MetaflowAccessError(
            f"importing flow file {flow_file} failed: {exc!r}; it must be importable "
            "(keep `MyFlow()` under `if __name__ == '__main__':`)"
        ) from exc
    finally:
        sys.path.remove(str(flow_file.parent))
    return module


def _flow_class(flow_file: Path, flow_name: str | None) -> Any:
    """The flow class ``flow_name`` of ``flow_file``; the only one defined there when None."""
    from metaflow.flowspec import FlowSpec

    module = _import_flow_module(flow_file)
    if flow_name is not None:
        flow_class = getattr(module, flow_name, None)
        if flow_class is None:
            raise MetaflowAccessError(f"flow file {flow_file} has no flow class {flow_name}")
        return flow_class
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, FlowSpec)
        and value is not FlowSpec
        and value.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise MetaflowAccessError(
            f"flow file {flow_file} defines {len(found)} flow classes ({names}); name the one to "
            "run with `flow_class:` in its policy entry"
        )
    return found[0]


def load_flow_shape(flow_file: Path, flow_name: str) -> FlowShape:
    """Import a flow file and return its graph.

    Raises:
        MetaflowAccessError: The file cannot be imported or has no such flow class.
    """
    return _flow_shape(_flow_class(flow_file, flow_name), flow_file)


def _flow_shape(flow_class: Any, flow_file: Path) -> FlowShape:
    from metaflow.graph import FlowGraph

    flow_name = flow_class.__name__
    graph = FlowGraph(flow_class)
    steps = []
    for node in graph.sorted_nodes:
        shape = graph[node] if isinstance(node, str) else node
        if shape.parallel_step or shape.parallel_foreach or shape.type == "split-parallel":
            raise MetaflowAccessError(
                f"flow {flow_name} in {flow_file}: step {shape.name!r} is a @parallel step (or "
                "starts one), which metaflow-dagster and auto-resume do not support; remove the "
                "flow from the policy"
            )
        steps.append(
            StepShape(
                name=shape.name,
                type=shape.type,
                in_funcs=tuple(sorted(shape.in_funcs)),
                out_funcs=tuple(shape.out_funcs),
                is_foreach_join=shape.type == "join"
                and bool(shape.split_parents)
                and graph[shape.split_parents[-1]].type == "foreach",
            )
        )
    return FlowShape(name=flow_name, steps=topological(steps))


@dataclass(frozen=True)
class FlowFile:
    """A flow file that auto-resume runs itself: its graph, parameters and step decorators."""

    flow_file: Path
    shape: FlowShape
    parameters: tuple[str, ...]
    # Per step: user-code retries and the delay between them (@retry), @environment variables.
    retries: dict[str, tuple[int, float]]
    environment: dict[str, dict[str, str]]
    top_args: tuple[str, ...]
    step_env: dict[str, str]


def load_flow_file(flow_file: Path, flow_name: str | None = None) -> FlowFile:
    """Import a flow file and read what running it takes, as metaflow-dagster would compile it.

    The Metaflow arguments are those of this process's Metaflow configuration (datastore,
    metadata provider, environment), with the datastore root resolved now, as
    ``dagster create`` resolves it when it writes a definitions file.

    Raises:
        MetaflowAccessError: The file cannot be imported, names no single flow, or uses a step
            decorator that changes how a step is launched.
    """
    from metaflow import metaflow_config
    from metaflow.plugins import DATASTORES

    flow_class = _flow_class(flow_file, flow_name)
    shape = _flow_shape(flow_class, flow_file)
    parameters = tuple(name for name, _ in flow_class._get_parameters())
    retries: dict[str, tuple[int, float]] = {}
    environment: dict[str, dict[str, str]] = {}
    for step in shape.steps:
        function = getattr(flow_class, step.name)
        for decorator in getattr(function, "decorators", []):
            name = getattr(decorator, "name", "")
            if name in UNSUPPORTED_STEP_DECORATORS:
                raise MetaflowAccessError(
                    f"flow {shape.name} in {flow_file}: step {step.name!r} uses @{name}, which "
                    "changes how the step is launched; auto-resume runs steps as local "
                    "subprocesses only: remove the flow from the policy"
                )
            attributes = getattr(decorator, "attributes", {}) or {}
            if name == "retry":
                delay = float(attributes.get("minutes_between_retries") or 0) * 60
                retries[step.name] = (int(attributes.get("times") or 0), delay)
            elif name == "environment":
                environment[step.name] = {str(k): str(v) for k, v in (attributes.get("vars") or {}).items()}
    datastore = metaflow_config.DEFAULT_DATASTORE
    storage = next((d for d in DATASTORES if datastore == d.TYPE), None)
    if storage is None:
        raise MetaflowAccessError(f"Metaflow's default datastore {datastore!r} is not available")
    root = storage.get_datastore_root_from_config(lambda *args, **kwargs: None)
    top_args = (
        "--quiet",
        "--no-pylint",
        f"--metadata={metaflow_config.DEFAULT_METADATA}",
        f"--environment={metaflow_config.DEFAULT_ENVIRONMENT}",
        f"--datastore={datastore}",
        *((f"--datastore-root={root}",) if root else ()),
        "--event-logger=nullSidecarLogger",
        "--monitor=nullSidecarMonitor",
    )
    step_env = {}
    if datastore == "local" and root:
        step_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(Path(root).parent)
    return FlowFile(
        flow_file=flow_file.resolve(),
        shape=shape,
        parameters=parameters,
        retries=retries,
        environment=environment,
        top_args=top_args,
        step_env=step_env,
    )


def _fast_local_provider(provider_class: Any) -> Any:
    """Metaflow's local metadata provider, writing its JSON files several times faster.

    A clone writes about 25 small metadata files (one per artifact and metadatum); the local
    provider streams each through ``json.dump`` into a ``NamedTemporaryFile``, which costs more
    than the rest of the clone. Same files, same content, same write-then-rename.
    """

    class FastLocalMetadataProvider(provider_class):  # type: ignore[misc]
        @classmethod
        def _dump_json_to_file(cls, filepath: str, data: Any, allow_overwrite: bool = False) -> None:
            if not allow_overwrite and os.path.isfile(filepath):
                return
            # A dot file: the client's globs (sysmeta_attempt-done_*, ...) never see it.
            directory, name = os.path.split(filepath)
            temporary = os.path.join(directory, f".{name}.{os.getpid()}-{threading.get_ident()}")
            content = memoryview(json.dumps(data).encode())
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:  # plain system calls: an open() file object costs more than the write
                while content:
                    content = content[os.write(descriptor, content) :]
            finally:
                os.close(descriptor)
            os.replace(temporary, filepath)

    return FastLocalMetadataProvider


class MetaflowRun:
    """Datastore and metadata access for one flow deployment."""

    def __init__(self, deployment: Deployment) -> None:
        from metaflow.datastore.flow_datastore import FlowDataStore
        from metaflow.metaflow_environment import MetaflowEnvironment
        from metaflow.plugins import DATASTORES, METADATA_PROVIDERS

        self.deployment = deployment
        datastore_type = deployment.top_arg("datastore") or "local"
        metadata_type = deployment.top_arg("metadata") or "local"
        storage_impl = next((d for d in DATASTORES if datastore_type == d.TYPE), None)
        provider_class = next((m for m in METADATA_PROVIDERS if metadata_type == m.TYPE), None)
        if provider_class is not None and provider_class.TYPE == "local":
            provider_class = _fast_local_provider(provider_class)
        if storage_impl is None or provider_class is None:
            raise MetaflowAccessError(
                f"{deployment.definitions_file}: unsupported datastore {datastore_type!r} "
                f"or metadata provider {metadata_type!r}"
            )
        self._apply_step_env()
        root = deployment.top_arg("datastore-root") or storage_impl.get_datastore_root_from_config(
            lambda *args, **kwargs: None
        )
        if storage_impl.TYPE == "local":
            storage_impl.datastore_root = root
        elif provider_class.TYPE == "local":
            # A remote datastore (s3, ...) with local metadata: Metaflow read the local sysroot
            # when first imported, maybe before _apply_step_env or for another deployment.
            local_storage = provider_class._get_storage_class()
            local_storage.datastore_root = self._local_metadata_root(local_storage.DATASTORE_DIR)

        class _Flow:
            name = deployment.flow_name

        self.flow_datastore = FlowDataStore(deployment.flow_name, storage_impl=storage_impl, ds_root=root)
        self.metadata = provider_class(MetaflowEnvironment(_Flow), _Flow, None, None)
        # With the provider attached, a cloned task's datastore registers its artifacts and its
        # finished attempt when done, as a task run by Metaflow does: the client reads them.
        self.flow_datastore.metadata = self.metadata
        # The origin datastores read by origin_tasks, reused by clone_task instead of opening
        # every origin task a second time; and the steps whose record already exists.
        self._origin_sets: dict[tuple[str, str], Any] = {}
        self._steps_registered: set[tuple[str, str]] = set()
        # System metadata copied into clones of tasks without a record, per origin step.
        self._origin_metadata: dict[tuple[str, str], list[Any]] = {}

    def _local_metadata_root(self, datastore_dir: str) -> str:
        """Where the steps' local metadata provider writes: ``<sysroot>/.metaflow``.

        The sysroot is METAFLOW_DATASTORE_SYSROOT_LOCAL of the step environment; without it a
        step (working directory: the flow's) uses the nearest ``.metaflow`` above, else its own.
        """
        sysroot = self.deployment.step_env.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or os.environ.get(
            "METAFLOW_DATASTORE_SYSROOT_LOCAL"
        )
        if sysroot:
            return os.path.join(sysroot, datastore_dir)
        flow_dir = Path(os.path.realpath(self.deployment.flow_file.parent))
        for directory in (flow_dir, *flow_dir.parents):
            if (directory / datastore_dir).is_dir():
                return str(directory / datastore_dir)
        return str(flow_dir / datastore_dir)

    def _apply_step_env(self) -> None:
        # The definitions file's METAFLOW_STEP_ENV (e.g. the local datastore sysroot) must hold
        # in this process too, or the metadata provider writes somewhere the steps do not read.
        for key, value in self.deployment.step_env.items():
            os.environ.setdefault(key, value)

    def origin_tasks(self, run_id: str, step_name: str) -> dict[tuple[int, ...], OriginTask]:
        """Tasks of ``step_name`` in ``run_id`` whose latest attempt finished, by foreach index."""
        from metaflow.datastore.datastore_set import TaskDataStoreSet

        try:
            task_set = TaskDataStoreSet(
                self.flow_datastore,
                run_id,
                steps=[step_name],
                prefetch_data_artifacts=["_task_ok", "_foreach_stack"],
            )
        except Exception as exc:
            raise MetaflowAccessError(
                f"cannot read step {step_name} of {self.deployment.flow_name}/{run_id} "
                f"from the datastore: {exc}"
            ) from exc
        tasks: dict[tuple[int, ...], OriginTask] = {}
        for datastore in task_set:
            indices = tuple(frame.index for frame in datastore["_foreach_stack"])
            ok = bool(datastore["_task_ok"]) if "_task_ok" in datastore else False
            tasks[indices] = OriginTask(datastore.pathspec, datastore.pathspec.split("/")[2], ok)
        self._origin_sets[(run_id, step_name)] = task_set
        while len(self._origin_sets) > _ORIGIN_SETS_KEPT:
            self._origin_sets.pop(next(iter(self._origin_sets)))
        return tasks

    def run_exists(self, run_id: str) -> bool:
        """True if ``run_id`` has a finished ``_parameters`` task in the datastore."""
        return bool(self.origin_tasks(run_id, "_parameters"))

    def register_run(self, run_id: str) -> None:
        """Make ``run_id`` known to the metadata provider (and so to the client).

        The run carries the ``--tag`` values the definitions file passes to its steps: the
        client shows tags per run, as for ``python flow.py run --tag ...``.
        """
        tags = sorted({tag for options in self.deployment.steps.values() for tag in options.tags})
        with _METADATA_LOCK:
            self.metadata.register_run_id(run_id, tags=tags)

    def register_task(self, run_id: str, step_name: str, task_id: str) -> None:
        """Create the step and task records the Metaflow client lists.

        The local provider skips integer task ids (metaflow-dagster's ``1``); its ``_new_task``
        creates them whatever the id.
        """
        with _METADATA_LOCK:
            new_task = getattr(self.metadata, "_new_task", None)
            if new_task is not None:
                # The step subprocess finds the record there and does not add its --tag values.
                new_task(run_id, step_name, task_id, tags=list(self.deployment.step_options(step_name).tags))
            else:
                self.metadata.register_task_id(run_id, step_name, task_id)

    def clone_task(self, origin_pathspec: str, run_id: str, step_name: str, task_id: str) -> None:
        """Copy a finished task into ``run_id`` without running its code; the origin is only read.

        What ``metaflow.clone_util.clone_task_helper`` does (artifact index, ``origin-run-id`` /
        ``origin-task-id`` / ``attempt`` / ``attempt_ok`` metadata, DONE marker) minus the
        system metadata it registers again for every task (user, runtime, versions: the client
        reads them through ``origin-task-id`` from the origin task), which is half of the files
        a clone writes on the local provider.

        metaflow-dagster's runs have no task records in the local metadata (its task id ``1`` is
        an integer, which the local provider does not record), and the client cannot follow
        ``origin-task-id`` to a task without a record. Such a clone gets a copy of the origin
        task's system metadata instead, and names its origin in ``auto-resume-origin-pathspec``;
        nothing is written into the origin run.
        """
        from metaflow.metadata_provider.metadata import MetaDatum

        origin_run_id, _, origin_task_id = origin_pathspec.split("/")
        origin_set = self._origin_sets.get((origin_run_id, step_name))
        origin = origin_set.get_with_pathspec(origin_pathspec) if origin_set is not None else None
        if origin is None:
            origin = self.flow_datastore.get_task_datastore(origin_run_id, step_name, origin_task_id)
        output = self.flow_datastore.get_task_datastore(run_id, step_name, task_id, attempt=0, mode="w")
        output.init_task()
        output.clone(origin)
        tags = ["attempt_id:0"]
        # The files a clone writes are its own (one directory per task): only the step record
        # shared by all tasks and the cache of origin metadata are guarded, so that clones run
        # side by side in threads.
        with _METADATA_LOCK:
            copied = self._origin_system_metadata(origin_run_id, step_name, origin_task_id)
            self._ensure_step_record(run_id, step_name)
        if copied is None:
            link = [MetaDatum(field="origin-task-id", value=origin_task_id, type="origin-task-id", tags=tags)]
        else:
            link = [
                *copied,
                MetaDatum(
                    field="auto-resume-origin-pathspec",
                    value=f"{self.deployment.flow_name}/{origin_pathspec}",
                    type="auto-resume-origin-pathspec",
                    tags=tags,
                ),
            ]
        self._ensure_task_record(run_id, step_name, task_id)
        self.metadata.register_metadata(
            run_id,
            step_name,
            task_id,
            [
                *link,
                MetaDatum(field="origin-run-id", value=origin_run_id, type="origin-run-id", tags=tags),
                MetaDatum(field="attempt", value="0", type="attempt", tags=tags),
                MetaDatum(field="attempt_ok", value="True", type="internal_attempt_status", tags=tags),
            ],
        )
        output.done()

    def clone_tasks(
        self, clones: Sequence[tuple[str, str]], run_id: str, step_name: str, processes: int
    ) -> dict[str, str]:
        """Clone many tasks of one step: ``(origin pathspec, new task id)`` pairs.

        A clone is a few milliseconds of small file writes and Python around them, bound by the
        GIL: on a wide step, ``processes`` forked children (Linux) clone a share each, which
        scales with the cores. A child only writes the files of its own tasks and leaves with
        ``os._exit``; it touches nothing else of this process (no Dagster, no database).

        Returns:
            An error message for each task id that could not be cloned (empty when all were).
        """
        errors: dict[str, str] = self._missing_artifacts(clones, step_name)
        clones = tuple(clone for clone in clones if clone[1] not in errors)
        if not clones:
            return errors
        with _METADATA_LOCK:  # shared by every task: made once, before the children start
            self._ensure_step_record(run_id, step_name)
            for origin_pathspec, _ in clones[:1]:
                origin_run_id, _, origin_task_id = origin_pathspec.split("/")
                self._origin_system_metadata(origin_run_id, step_name, origin_task_id)
        processes = max(1, min(processes, len(clones) // _CLONES_PER_PROCESS_MIN))
        if processes == 1 or not hasattr(os, "fork"):
            for origin_pathspec, task_id in clones:
                try:
                    self.clone_task(origin_pathspec, run_id, step_name, task_id)
                except Exception as exc:
                    errors[task_id] = f"cloning {origin_pathspec} failed: {exc!r}"
            return errors
        shares = [clones[i::processes] for i in range(processes)]
        children: dict[int, tuple[int, Sequence[tuple[str, str]]]] = {}
        for share in shares:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child
                os.close(read_end)
                self._clone_share_and_exit(share, run_id, step_name, write_end)
            os.close(write_end)
            children[pid] = (read_end, share)
        for pid, (read_end, cloned_share) in children.items():
            with os.fdopen(read_end, "rb") as reports:
                report = reports.read()
            _, status = os.waitpid(pid, 0)
            done = json.loads(report) if report else {}
            code = os.waitstatus_to_exitcode(status)
            for origin_pathspec, task_id in cloned_share:
                if task_id in done.get("errors", {}):
                    errors[task_id] = done["errors"][task_id]
                elif task_id not in done.get("cloned", ()):
                    errors[task_id] = (
                        f"cloning {origin_pathspec} failed: the cloning process exited with {code}"
                    )
        return errors

    def _missing_artifacts(self, clones: Sequence[tuple[str, str]], step_name: str) -> dict[str, str]:
        """The clones whose origin task names an artifact the datastore no longer holds.

        A clone copies the origin's artifact index, not the artifacts: a lost blob would only
        surface later as an obscure error in whatever task reads it. One existence check per
        distinct blob of the step, before anything is written.
        """
        ca_store = self.flow_datastore.ca_store
        storage = ca_store._storage_impl
        wanted: dict[str, list[tuple[str, str, str]]] = {}  # blob key -> (task id, origin, artifact)
        for origin_pathspec, task_id in clones:
            origin_run_id = origin_pathspec.split("/")[0]
            task_set = self._origin_sets.get((origin_run_id, step_name))
            origin = task_set.get_with_pathspec(origin_pathspec) if task_set is not None else None
            if origin is None:
                continue  # clone_task opens it and reports what it cannot read
            for name, key in getattr(origin, "_objects", {}).items():
                wanted.setdefault(key, []).append((task_id, origin_pathspec, name))
        if not wanted:
            return {}
        keys = sorted(wanted)
        paths = [storage.path_join(ca_store._prefix, key[:2], key) for key in keys]
        errors: dict[str, str] = {}
        for key, path, present in zip(keys, paths, storage.is_file(paths), strict=True):
            if present:
                continue
            for task_id, origin_pathspec, name in wanted[key]:
                errors.setdefault(
                    task_id,
                    f"artifact {name!r} of {self.deployment.flow_name}/{origin_pathspec} is missing from the "
                    f"datastore ({storage.full_uri(path)}): the task cannot be cloned; resuming this run "
                    f"executes {step_name} again",
                )
        return errors

    def _clone_share_and_exit(
        self, share: Sequence[tuple[str, str]], run_id: str, step_name: str, report_fd: int
    ) -> None:
        global _METADATA_LOCK
        code = 1
        try:
            gc.disable()  # never finalize the parent's objects (database connections) here
            _METADATA_LOCK = threading.Lock()  # another thread may have held it at the fork
            cloned: list[str] = []
            errors: dict[str, str] = {}
            for origin_pathspec, task_id in share:
                try:
                    self.clone_task(origin_pathspec, run_id, step_name, task_id)
                    cloned.append(task_id)
                except Exception as exc:
                    errors[task_id] = f"cloning {origin_pathspec} failed: {exc!r}"
            with os.fdopen(report_fd, "wb") as out:
                out.write(json.dumps({"cloned": cloned, "errors": errors}).encode())
            code = 0
        finally:
            os._exit(code)

    def _origin_system_metadata(self, run_id: str, step_name: str, task_id: str) -> list[Any] | None:
        """None if the origin task has a record the client can follow; else what to copy from it.

        The copy (user, versions, ``ds-type``, ``ds-root``...: the same for every task of a
        step) is read once per step; attempt fields and origin links are the clone's own.
        """
        from metaflow.metadata_provider.metadata import MetaDatum

        provider = type(self.metadata)
        flow_name = self.deployment.flow_name
        if getattr(self.metadata, "_ensure_meta", None) is None:
            return None  # a provider that records every task id (the metadata service)
        if not task_id.isdigit():
            return None  # the local provider records every task id that is not an integer
        if provider.get_object("task", "self", {}, None, flow_name, run_id, step_name, task_id):
            return None
        key = (run_id, step_name)
        cached = self._origin_metadata.get(key)
        if cached is None:
            found = provider.get_object("task", "metadata", None, None, flow_name, run_id, step_name, task_id)
            cached = [
                MetaDatum(field=m["field_name"], value=m["value"], type=m["type"], tags=["attempt_id:0"])
                for m in found or []
                if m.get("field_name") not in _OWN_FIELDS
            ]
            self._origin_metadata[key] = cached
        return cached

    def _ensure_step_record(self, run_id: str, step_name: str) -> None:
        # The step record the client lists, once per step (the local provider's
        # register_task_id skips it for integer task ids).
        ensure_meta = getattr(self.metadata, "_ensure_meta", None)
        if ensure_meta is not None and (run_id, step_name) not in self._steps_registered:
            ensure_meta("step", run_id, step_name, None)
            self._steps_registered.add((run_id, step_name))

    def _ensure_task_record(self, run_id: str, step_name: str, task_id: str) -> None:
        # The task record; register_task_id itself would also write the system metadata again.
        ensure_meta = getattr(self.metadata, "_ensure_meta", None)
        if ensure_meta is None:  # e.g. the service provider: it registers any task id
            with _METADATA_LOCK:
                self.metadata.register_task_id(run_id, step_name, task_id)
            return
        ensure_meta("task", run_id, step_name, task_id)

    def task_outcome(self, pathspec: str, step_type: str) -> TaskOutcome:
        """Foreach split count and chosen branches of a finished task of the new run."""
        if step_type not in ("foreach", "split-switch"):
            return TaskOutcome(None, None)
        run_id, step_name, task_id = pathspec.split("/")
        datastore = self.flow_datastore.get_task_datastore(run_id, step_name, task_id, mode="r")
        if step_type == "foreach":
            return TaskOutcome(int(datastore["_foreach_num_splits"]), None)
        transition = datastore["_transition"]
        next_steps = transition[0] if isinstance(transition, (list, tuple)) else transition
        if isinstance(next_steps, str):
            next_steps = [next_steps]
        return TaskOutcome(None, tuple(str(s) for s in next_steps))

    def step_command(
        self,
        step_name: str,
        run_id: str,
        task_id: str,
        input_paths: Sequence[str],
        split_index: int | None,
        retry_count: int,
    ) -> list[str]:
        """The command line metaflow-dagster would use to run this task."""
        from metaflow.util import compress_list

        options = self.deployment.step_options(step_name)
        command = [sys.executable, str(self.deployment.flow_file), *self.deployment.top_args]
        command += [f"--with={decorator}" for decorator in options.with_decorators]
        command += [
            "step",
            step_name,
            f"--run-id={run_id}",
            f"--task-id={task_id}",
            f"--input-paths={compress_list(list(input_paths))}",
            f"--retry-count={retry_count}",
            f"--max-user-code-retries={options.max_user_code_retries}",
        ]
        command += [f"--tag={tag}" for tag in options.tags]
        namespace = self.deployment.top_arg("namespace")
        if namespace:
            command.append(f"--namespace={namespace}")
        if split_index is not None:
            command.append(f"--split-index={split_index}")
        return command

    def init_command(self, run_id: str, task_id: str) -> list[str]:
        """The command that creates a new run's ``_parameters`` task, as metaflow-dagster runs it.

        Parameter values go in ``METAFLOW_INIT_<NAME>`` variables (see ``init_environment``).
        """
        return [
            sys.executable,
            str(self.deployment.flow_file),
            *self.deployment.top_args,
            "init",
            f"--run-id={run_id}",
            f"--task-id={task_id}",
        ]

    def run_init(self, command: list[str], parameters: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
        """Run ``init_command`` with ``parameters`` (name -> value; missing ones take their default)."""
        values = {
            "METAFLOW_INIT_" + name.upper().replace("-", "_"): _parameter_text(value)
            for name, value in parameters.items()
        }
        return subprocess.run(
            command,
            env={**os.environ, **self.deployment.step_env, **values},
            cwd=str(self.deployment.flow_file.parent),
            capture_output=True,
            text=True,
            check=False,
        )

    def step_environment(self, step_name: str) -> dict[str, str]:
        """Environment for a step subprocess, as metaflow-dagster builds it."""
        return {
            **os.environ,
            **self.deployment.step_env,
            **self.deployment.step_options(step_name).extra_env,
        }

    def run_step(self, command: list[str], step_name: str) -> subprocess.CompletedProcess[str]:
        """Run one step command to completion, capturing its output."""
        return subprocess.run(
            command,
            env=self.step_environment(step_name),
            cwd=str(self.deployment.flow_file.parent),
            capture_output=True,
            text=True,
            check=False,
        )


def _parameter_text(value: Any) -> str:
    """A parameter value as Metaflow parses it from the command line (JSON for lists and maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
