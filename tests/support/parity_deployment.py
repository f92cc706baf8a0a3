"""ParityFlow (tests/support/parity_flow.py) deployed as a ``flow_file:`` job in a temporary folder.

The flow sits beside its own datastore: steps run in the flow's folder and write their cards
under the first ``.metaflow`` found from there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from auto_resume.dagster.flow_job import flow_file_deployment
from auto_resume.metaflow.deployment import Deployment
from auto_resume.metaflow.flows import FlowFile, load_flow_file
from tests.support import ROOT


@dataclass(frozen=True)
class ParityDeployment:
    flow_file: Path
    flow: FlowFile
    deployment: Deployment
    top_args: tuple[str, ...]
    env: dict[str, str]  # what the step subprocesses and the client need to find the datastore


def parity_deployment(folder: Path) -> ParityDeployment:
    """ParityFlow copied into ``folder``, with its datastore at ``folder/.metaflow``."""
    flow_file = folder / "parity_flow.py"
    shutil.copyfile(ROOT / "tests" / "support" / "parity_flow.py", flow_file)
    (folder / ".metaflow").mkdir()
    flow = load_flow_file(flow_file)
    top_args = tuple(
        f"--datastore-root={folder / '.metaflow'}" if arg.startswith("--datastore-root=") else arg
        for arg in flow.top_args
    )
    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(folder)}
    flow = replace(flow, top_args=top_args, step_env=env)
    deployment = replace(flow_file_deployment(flow), top_args=top_args, step_env=env)
    return ParityDeployment(flow_file, flow, deployment, top_args, env)
