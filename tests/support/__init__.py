"""What the unit tests, the end-to-end tests and the benchmarks share, each in the module named for it.

- ``postgres``: throwaway databases on the test server (``AUTO_RESUME_TEST_PG_URL``).
- ``instance``: a ``DagsterInstance`` on a deployment's home and database, opened without
  touching ``os.environ``.
- ``processes``: long-running helper processes (``dagster-daemon``, the webserver, local servers)
  that die with the test process, and free local ports for them.
- ``waiting``: ``wait_until``, the one polling loop with a deadline.
- ``failed_runs``: a failed metaflow-dagster run made through the instance API.
- ``linear_origin``: a failed LinearFlow origin made by Metaflow subprocesses, on a datastore of its own.
- ``metadata_service``: a Metaflow metadata service (metaflow-local-service's app) on loopback.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: ``workspace.yaml``, ``dagster.yaml``, ``.venv`` and ``examples`` are here."""

BIN = Path(sys.executable).parent
"""The scripts of the virtualenv running the tests (``dagster-daemon``, ``auto-resume``): CI runs
the suite in one virtualenv per Python and lock (``.venv``, ``.venv-py313``, ``.venv-oldest``)."""
