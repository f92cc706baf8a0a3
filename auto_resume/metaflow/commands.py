"""Every Metaflow command line auto-resume runs, and running it.

``dagster create`` (metaflow-dagster's compiler), ``init`` (a run's parameters task) and ``step``
(one task), built as metaflow-dagster builds them, run as subprocesses with an environment given
explicitly: this process's environment plus the deployment's step variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.metaflow.datastore import DefaultConfiguration
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.task_logs import AttemptLog

# How much of a failed command's output a message quotes (its end, where the error is).
OUTPUT_TAIL = 3000


def output_tail(result: subprocess.CompletedProcess[str]) -> str:
    """The end of a finished command's stderr (its stdout when stderr is empty)."""
    return (result.stderr or result.stdout)[-OUTPUT_TAIL:]


def compile_definitions(
    flow_file: Path,
    output: Path,
    env: Mapping[str, str],
    backends: Sequence[str] = ("--datastore=local", "--metadata=local"),
) -> None:
    """Run ``python flow.py <backends> dagster create output`` (metaflow-dagster's compiler).

    ``backends`` are the top-level options naming the datastore and metadata provider the
    definitions file's steps use (local ones unless told otherwise).

    Raises:
        MetaflowAccessError: The compiler failed; the message carries its output.
    """
    command = [
        sys.executable,
        str(flow_file),
        "--no-pylint",
        *backends,
        "dagster",
        "create",
        str(output),
    ]
    result = subprocess.run(
        command, env=dict(env), cwd=str(flow_file.parent), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MetaflowAccessError(
            f"compiling {flow_file} with metaflow-dagster failed:\n{result.stderr[-OUTPUT_TAIL:]}"
        )


def default_top_args(configuration: DefaultConfiguration) -> tuple[str, ...]:
    """The top-level Metaflow arguments ``dagster create`` writes for ``configuration``."""
    root = configuration.datastore_root
    return (
        "--quiet",
        "--no-pylint",
        f"--metadata={configuration.metadata}",
        f"--environment={configuration.environment}",
        f"--datastore={configuration.datastore}",
        *((f"--datastore-root={root}",) if root else ()),
        "--event-logger=nullSidecarLogger",
        "--monitor=nullSidecarMonitor",
    )


def step_command(
    deployment: Deployment,
    step_name: str,
    run_id: str,
    task_id: str,
    input_paths: Sequence[str],
    split_index: int | None,
    retry_count: int,
    origin_run_id: str | None,
    injected: Sequence[str] = (),
    extra_tags: Sequence[str] = (),
    max_user_code_retries: int | None = None,
) -> list[str]:
    """The command line metaflow-dagster would use to run this task.

    ``origin_run_id`` (None in a first run) becomes ``--clone-run-id``, which Metaflow's runtime
    passes to every task of ``resume``: on ``step`` it only records the origin
    (``current.origin_run_id``, ``origin-run-id`` metadata); it clones nothing. ``injected``
    decorator specs and ``extra_tags`` are a resume's ``--with`` and ``--tag``;
    ``max_user_code_retries`` replaces the deployment's when an injected ``@retry`` sets it.
    """
    from metaflow.util import compress_list

    options = deployment.step_options(step_name)
    retries = options.max_user_code_retries if max_user_code_retries is None else max_user_code_retries
    command = [sys.executable, str(deployment.flow_file), *deployment.top_args]
    command += [f"--with={decorator}" for decorator in (*options.with_decorators, *injected)]
    command += [
        "step",
        step_name,
        f"--run-id={run_id}",
        f"--task-id={task_id}",
        f"--input-paths={compress_list(list(input_paths))}",
        f"--retry-count={retry_count}",
        f"--max-user-code-retries={retries}",
    ]
    command += [f"--tag={tag}" for tag in dict.fromkeys((*options.tags, *extra_tags))]
    namespace = deployment.top_arg("namespace")
    if namespace:
        command.append(f"--namespace={namespace}")
    if split_index is not None:
        command.append(f"--split-index={split_index}")
    if origin_run_id is not None:
        command.append(f"--clone-run-id={origin_run_id}")
    return command


def init_command(deployment: Deployment, run_id: str, task_id: str) -> list[str]:
    """The command that creates a new run's ``_parameters`` task, as metaflow-dagster runs it.

    Parameter values go in ``METAFLOW_INIT_<NAME>`` variables (see ``run_init``).
    """
    return [
        sys.executable,
        str(deployment.flow_file),
        *deployment.top_args,
        "init",
        f"--run-id={run_id}",
        f"--task-id={task_id}",
    ]


def step_environment(
    deployment: Deployment, step_name: str, extra_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a step subprocess, as metaflow-dagster builds it (plus ``extra_env``)."""
    return {
        **os.environ,
        **deployment.step_env,
        **deployment.step_options(step_name).extra_env,
        **(extra_env or {}),
    }


class RunningSteps:
    """The step subprocesses at work for one op, so that all of them stop when the run is stopped.

    Each runs in a session of its own: stopping it signals its whole process group (a task's
    own children, a card's renderer, go too). Nothing new starts once ``stop`` was called.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self.stopped = False

    def add(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.add(process)
            stopped = self.stopped
        if stopped:
            _signal_group(process, signal.SIGKILL)

    def discard(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.discard(process)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM every step's process group, SIGKILL what is left after ``grace_seconds``."""
        with self._lock:
            self.stopped = True
            live = list(self._live)
        for process in live:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
        os.killpg(process.pid, sig)


def run_step(
    deployment: Deployment,
    command: list[str],
    step_name: str,
    log: AttemptLog | None = None,
    extra_env: Mapping[str, str] | None = None,
    running: RunningSteps | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one step command to completion, capturing its output.

    Args:
        deployment: The deployment the step belongs to.
        command: A ``step_command``.
        step_name: The step, for its environment.
        log: Fed every line as the subprocess writes it (unbuffered, as Metaflow's runtime runs
            its steps), to be saved as the attempt's logs.
        extra_env: Variables injected decorators set (``@environment``), over the step's own.
        running: Where the subprocess is registered while it works (see `RunningSteps`).
    """
    env = step_environment(deployment, step_name, extra_env)
    if log is None:
        return _run(deployment, command, env)
    process = subprocess.Popen(
        command,
        env={**env, "PYTHONUNBUFFERED": "x"},
        cwd=str(deployment.flow_file.parent),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own: see RunningSteps
    )
    if running is not None:
        running.add(process)
    try:
        assert process.stdout is not None and process.stderr is not None
        stderr = threading.Thread(target=_feed, args=(process.stderr, "stderr", log), daemon=True)
        stderr.start()
        _feed(process.stdout, "stdout", log)
        stderr.join()
        returncode = process.wait()
    finally:
        if running is not None:
            running.discard(process)
    return subprocess.CompletedProcess(command, returncode, log.text("stdout"), log.text("stderr"))


def _feed(pipe: IO[bytes], stream: str, log: AttemptLog) -> None:
    with pipe:
        for line in iter(pipe.readline, b""):
            log.add(stream, line)


def run_init(
    deployment: Deployment, command: list[str], parameters: Mapping[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Run ``init_command`` with ``parameters`` (name -> value; missing ones take their default)."""
    values = {
        "METAFLOW_INIT_" + name.upper().replace("-", "_"): _parameter_text(value)
        for name, value in parameters.items()
    }
    return _run(deployment, command, {**os.environ, **deployment.step_env, **values})


def _run(deployment: Deployment, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=env,
        cwd=str(deployment.flow_file.parent),
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
