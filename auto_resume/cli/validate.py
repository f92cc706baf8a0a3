"""``auto-resume validate``: the policy as the code location loads it, and which policy is in force.

Exit status: 0 valid, every flow loads (flows auto-resume refuses are listed, as before);
1 invalid: the file's problems, and the policy in force instead (the last good one kept in the
instance of ``$DAGSTER_HOME``, and since when), if any; 3 valid, but a flow's file cannot be
read: that flow is disabled alone, the others load.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_BROKEN_FLOWS = 3


def validate(path: Path, as_json: bool) -> int:
    """Check the policy at ``path``; print the result (text, or JSON on stdout); the exit status."""
    from auto_resume.dagster.code_location import build_definitions
    from auto_resume.dagster.disabled_flows import DisabledFlow
    from auto_resume.policy.loading import PolicyError

    disabled: list[DisabledFlow] = []
    try:
        defs = build_definitions(path, disabled=disabled)
    except PolicyError as exc:
        in_force, note = _in_force(path)
        if as_json:
            problems = list(exc.problems) or [str(exc)]
            document = {"policy": str(path), "valid": False, "problems": problems, "in_force": in_force}
            print(json.dumps({**document, "in_force_note": note}, indent=2))
        else:
            print(f"{exc}\n{note}", file=sys.stderr)
        return EXIT_INVALID
    jobs = sorted(job.name for job in defs.resolve_all_job_defs())
    refused = [flow.line() for flow in disabled if flow.refused]
    broken = [flow.line() for flow in disabled if not flow.refused]
    if as_json:
        document = {
            "policy": str(path),
            "valid": True,
            "resume_jobs": jobs,
            "refused": refused,
            "broken": broken,
        }
        print(json.dumps(document, indent=2))
    else:
        lines = [f"{path}: valid; resume jobs: {', '.join(jobs) or 'none'}"]
        lines += [f"refused: {line}" for line in refused]
        lines += [f"broken: {line}" for line in broken]
        if broken:
            lines.append(
                f"{len(broken)} flow(s) broken: each is disabled alone (no resume job, named on every "
                "sensor tick) until its file is fixed and the location reloaded; the other flows load"
            )
        print("\n".join(lines))
    return EXIT_BROKEN_FLOWS if broken else EXIT_OK


def _in_force(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The last good policy of ``path`` in the instance of ``$DAGSTER_HOME``, and a sentence."""
    from dagster import DagsterInstance

    from auto_resume.dagster.policy_store import read_last_good

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return None, (
            "policy in force: unknown (DAGSTER_HOME is not set; set it to the daemon's to see the "
            "last good policy the sensor decides with)"
        )
    try:
        with DagsterInstance.get() as instance:
            good = read_last_good(instance, path)
    except Exception as exc:
        return None, f"policy in force: unknown (cannot open the instance of DAGSTER_HOME={home}: {exc})"
    if good is None:
        return None, (
            f"policy in force: none (the instance of DAGSTER_HOME={home} holds no valid version of "
            f"{path.absolute()}): the auto_resume location fails to load and the sensor's ticks fail "
            "until the file is fixed; no failure is lost"
        )
    return {"last_good_since": good.since_text, "sha256": good.sha256}, (
        f"policy in force: the last good one, in force since {good.since_text} (kept in the instance "
        f"of DAGSTER_HOME={home}): the sensor decides with it and shows these problems on every tick, "
        "and a reload of the location builds from it, until the file is fixed"
    )
