"""Set-up shared by the benchmarks: a throw-away PostgreSQL-backed Dagster instance, and figures.

The database and the instance come from the tests' support package (``tests/support``): a new
database on the test server (``AUTO_RESUME_TEST_PG_URL``, default
``postgresql+psycopg2://root@127.0.0.1:5432/postgres``) and a temporary ``DAGSTER_HOME`` holding
this repo's ``dagster.yaml``; both are removed on exit.
"""

import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@contextmanager
def postgres_instance() -> Iterator[object]:
    """A ``DagsterInstance`` on a new PostgreSQL database, dropped afterwards.

    While it lasts, ``DAGSTER_HOME`` and ``DAGSTER_PG_URL`` name it in this process's
    environment too: a benchmark's child processes open it from there, as a deployment's do.
    """
    from tests.support.instance import open_instance
    from tests.support.postgres import throwaway_database

    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "DAGSTER_PG_URL")}
    with (
        throwaway_database(prefix="auto_resume_bench") as database,
        tempfile.TemporaryDirectory(prefix="auto-resume-bench-home-") as home_dir,
    ):
        home = Path(home_dir)
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        os.environ.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=database)
        try:
            with open_instance(home, database) as instance:
                yield instance
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


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
