"""A ``DagsterInstance`` on a deployment's ``DAGSTER_HOME`` and database, without ``os.environ``.

The repo's ``dagster.yaml`` reads the database URL from ``DAGSTER_PG_URL``, and
``DagsterInstance.get()`` reads ``DAGSTER_HOME``: opening an instance that way means setting
both in this process's environment, which then leaks into every later test and subprocess.
Instead the home's ``dagster.yaml`` is copied beside it, with the URL written in, and opened
with the public ``DagsterInstance.from_config(config_dir, config_filename)``: same home (local
artifacts, compute logs), same run coordinator, same storage, and nothing global changes.
"""

from pathlib import Path

import yaml
from dagster import DagsterInstance

CLIENT_CONFIG = "dagster-test-client.yaml"
"""The copy of ``dagster.yaml`` the tests open their instance with (in ``DAGSTER_HOME``)."""


def open_instance(home: Path, database_url: str) -> DagsterInstance:
    """Open the instance of ``home/dagster.yaml`` on ``database_url``; the caller disposes it.

    Args:
        home: A ``DAGSTER_HOME`` holding a ``dagster.yaml`` with PostgreSQL storage.
        database_url: What the daemon reads from ``DAGSTER_PG_URL``.

    Raises:
        ValueError: ``dagster.yaml`` has no ``storage.postgres`` section to write the URL into.
    """
    config = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
    postgres = config.get("storage", {}).get("postgres")
    if not isinstance(postgres, dict):
        raise ValueError(f"{home / 'dagster.yaml'}: storage must have a postgres section")
    postgres["postgres_url"] = database_url
    (home / CLIENT_CONFIG).write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home), config_filename=CLIENT_CONFIG)
