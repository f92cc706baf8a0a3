"""Set-up shared by the benchmarks: a throw-away PostgreSQL-backed Dagster instance.

A new database on the test server (``AUTO_RESUME_TEST_PG_URL``, default
``postgresql+psycopg2://root@127.0.0.1:5432/postgres``, as tests/e2e/harness.py uses) and a
temporary ``DAGSTER_HOME`` holding this repo's ``dagster.yaml``; both are removed on exit.
"""

import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@contextmanager
def postgres_instance(dagster_yaml: str | None = None) -> Iterator[object]:
    """A ``DagsterInstance`` on a new PostgreSQL database, dropped afterwards.

    Args:
        dagster_yaml: Instance configuration to use instead of the repo's ``dagster.yaml``.
    """
    import psycopg2
    from dagster import DagsterInstance

    from tests.e2e.harness import _psycopg2_dsn, _server_url

    server = _server_url()
    name = f"auto_resume_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(_psycopg2_dsn(server))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    home = Path(tempfile.mkdtemp(prefix="auto-resume-bench-home-"))
    instance = None
    try:
        if dagster_yaml is None:
            shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        else:
            (home / "dagster.yaml").write_text(dagster_yaml)
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["DAGSTER_PG_URL"] = server.rsplit("/", 1)[0] + "/" + name
        instance = DagsterInstance.get()
        yield instance
    finally:
        if instance is not None:
            instance.dispose()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(home, ignore_errors=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def summary(values: Sequence[float]) -> str:
    """``median / p90 / max`` in seconds."""
    return f"{statistics.median(values):.2f}s / {percentile(values, 0.9):.2f}s / {max(values):.2f}s"


def machine() -> str:
    """One line about the machine: cores, CPU, RAM, Python, load average."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{kib / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        ram = "unknown RAM"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or os.cpu_count()
    return f"{nproc} cores ({cpu}), {ram}, Python {platform.python_version()}, load average {load}"
