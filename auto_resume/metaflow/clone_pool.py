"""The processes that clone a wide step: a ``ProcessPoolExecutor`` fed by a fork server.

Why a fork server and not ``fork``: the process that runs a resume is multi-threaded before any
step starts. Measured in a Dagster run worker (``dagster job launch``, DefaultRunLauncher) from
inside an op, ``threading.enumerate()`` lists ``MainThread``, ``termination-handler`` (Dagster's
cancellation watcher) and ``QueueFeederThread`` (the multiprocessing queue that carries events
back to the code server); the step op adds its own task threads. Forking that process can
deadlock the child on a lock one of those threads held, and Python 3.12+ warns about it
("This process ... is multi-threaded, use of fork() may lead to deadlocks"). The fork server is
a fresh single-threaded interpreter, started with ``fork``+``exec`` (which is safe with threads),
that imports Metaflow and the cloning code once; each clone process is a fork of it.

``start`` launches the server early (the resume job's first op calls it) and returns at once:
the server imports its modules while the run reads the origin and runs its first steps.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver

# Processes cloning the tasks of a wide step: one per core, at most 4.
CLONE_PROCESSES = max(1, min(4, os.cpu_count() or 1))
# Imported by the fork server once, so that each clone process starts with them loaded (Metaflow
# takes about half a second to import). '__main__' too: otherwise every clone process would
# import the main script (if there is one) itself.
_PRELOAD = [
    "__main__",
    "auto_resume.metaflow.cloning",
    "metaflow.plugins",
    "metaflow.datastore.flow_datastore",
    "metaflow.metaflow_environment",
    "metaflow.metadata_provider.metadata",
]


def available() -> bool:
    """True where clone processes can be used (POSIX; not Windows)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def start() -> None:
    """Launch the fork server now if it is not running; returns without waiting for it."""
    if available():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        forkserver.ensure_running()


def pool(processes: int) -> ProcessPoolExecutor:
    """An executor of ``processes`` clone processes forked by the fork server (started if needed)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return ProcessPoolExecutor(max_workers=processes, mp_context=context)
