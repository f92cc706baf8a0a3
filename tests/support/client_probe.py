"""What Metaflow's client says of a run, asked from a fresh Python process.

Metaflow reads its configuration (datastore roots, metadata provider, service URL) when first
imported; a process of its own sees a run exactly as a user's notebook would.
"""

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def client_probe(script: str, *args: str, env: Mapping[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """Run ``script`` (which prints one JSON document last) with ``args`` in ``sys.argv[1:]``.

    Returns:
        The JSON document the script printed on its last line.
    """
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(env),
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return document
