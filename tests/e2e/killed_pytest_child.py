"""Run by ``test_killed_pytest.py`` in a pytest of its own, which that test then SIGKILLs.

Not collected by the suite (the name does not start with ``test_``): it holds a deployment of
its own until its process is killed, writing where it keeps things for the killer to check.
"""

import os
import time
from pathlib import Path

from tests.e2e.faults_support import FaultyDeployment


def test_hold_a_deployment_until_killed() -> None:
    base = Path(os.environ["AUTO_RESUME_KILLED_PYTEST_BASE"])
    with FaultyDeployment(base / "deployment", ("linear_flow",)) as separate:
        (base / "database").write_text(separate.database)  # the killer drops it: no teardown runs here
        (base / "ready").write_text(str(os.getpid()))
        time.sleep(600)  # killed long before this ends
