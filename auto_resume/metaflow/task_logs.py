"""A task's stdout and stderr kept as Metaflow's runtime keeps them, so ``task.stdout`` reads them.

Metaflow's runtime (``metaflow/runtime.py``, ``Worker``) reads each line its step subprocess
writes, decorates it with ``mflog`` (source ``runtime``, the time the line was read), keeps at most
``--max-log-size`` (10 MB by default) a stream, appends ``Task failed.`` to the stderr of a
failed attempt, and saves both streams and the exit status in that attempt's task datastore. A
step subprocess started by anyone else leaves no logs: the task itself saves none. ``AttemptLog``
does the runtime's part for the step subprocesses auto-resume starts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from auto_resume.metaflow.datastore import Store

# Metaflow's `run`/`resume` default for --max-log-size (10 MB a stream).
MAX_LOG_SIZE = 10 * 1024 * 1024
_TRUNCATED = b"[TRUNCATED - MAXIMUM LOG FILE SIZE REACHED]\n"


class _Stream:
    """One stream of one attempt: the lines as read, and their mflog-decorated copy."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stored = BytesIO()
        self._size = 0
        self._full = False

    def store(self, decorated: bytes, system: bool = False) -> None:
        """``TruncatedBuffer.write`` of the runtime: a system line is always kept."""
        if system:
            self.stored.write(decorated)
        elif not self._full:
            if self._size + len(decorated) < MAX_LOG_SIZE:
                self.stored.write(decorated)
                self._size += len(decorated)
            else:
                self.stored.write(_decorate(_TRUNCATED))
                self._full = True


class AttemptLog:
    """The output of one attempt of one task, fed line by line as its subprocess writes it.

    ``add`` may be called from one thread per stream: the two streams share nothing.
    """

    def __init__(self) -> None:
        self._streams = {"stdout": _Stream(), "stderr": _Stream()}

    def add(self, stream: str, line: bytes) -> None:
        """One line (bytes, newline included) the subprocess wrote to ``stream``."""
        from metaflow.mflog import mflog

        target = self._streams[stream]
        if mflog.is_structured(line):
            parsed = mflog.parse(line)
            if parsed is None:  # a corrupted structured line: shown as it is
                target.lines.append(line.decode(errors="replace"))
                return
            # Structured lines were persisted by their source, unless marked should_persist.
            if parsed.should_persist:
                target.store(mflog.unset_should_persist(line))
            target.lines.append(parsed.msg.decode(errors="replace") + "\n")
            return
        target.store(_decorate(line))
        target.lines.append(line.decode(errors="replace"))

    def text(self, stream: str) -> str:
        """What the subprocess wrote to ``stream``, as it wrote it."""
        return "".join(self._streams[stream].lines)

    def save(self, store: Store, pathspec: str, attempt: int, returncode: int) -> None:
        """Save both streams and the exit status in the task datastore of ``attempt``.

        Args:
            store: The new run's store.
            pathspec: ``run_id/step/task_id`` of the task.
            attempt: The attempt (``--retry-count``) that wrote this output.
            returncode: The subprocess's exit status; non-zero appends ``Task failed.`` to stderr.
        """
        from metaflow.mflog import RUNTIME_LOG_SOURCE

        if returncode:
            self._streams["stderr"].store(_decorate(b"Task failed."), system=True)
        run_id, step_name, task_id = pathspec.split("/")
        datastore = store.flow_datastore.get_task_datastore(
            run_id, step_name, task_id, attempt=attempt, mode="w"
        )
        runtime: dict[str, Any] = {"return_code": returncode, "killed": False, "success": returncode == 0}
        datastore.save_metadata({"runtime": runtime})
        datastore.save_logs(
            RUNTIME_LOG_SOURCE,
            {name: BytesIO(stream.stored.getvalue()) for name, stream in self._streams.items()},
        )


def _decorate(line: bytes) -> bytes:
    from metaflow.mflog import RUNTIME_LOG_SOURCE, mflog

    now = datetime.now(UTC).replace(tzinfo=None)  # mflog formats naive UTC times
    decorated: bytes = mflog.decorate(RUNTIME_LOG_SOURCE, line, now=now)
    return decorated
