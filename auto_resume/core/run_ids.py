"""Run ids: what auto-resume accepts, and how metaflow-dagster derives Metaflow's from Dagster's.

Pure string rules, owned here and imported everywhere else.
"""

import hashlib
import re

from auto_resume.core.errors import MetaflowAccessError

# Run ids auto-resume accepts, Metaflow's or Dagster's: what Metaflow generates (integers), what
# metaflow-dagster generates (dagster-<hex>), Dagster's UUIDs. Anything else, in particular values
# starting with "-" or containing "/" or shell syntax, never reaches a command line or a query.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_RUN_ID_IN_COMMAND = re.compile(r"\s--run-id[ =]([^\s]+)")


def make_run_id(dagster_run_id: str) -> str:
    """The Metaflow run id metaflow-dagster derives from a Dagster run id."""
    return "dagster-" + hashlib.sha1(dagster_run_id.encode()).hexdigest()[:12]


def is_run_id(value: object) -> bool:
    """True if ``value`` is a run id that is safe to put on a command line or in a path."""
    return isinstance(value, str) and RUN_ID_PATTERN.fullmatch(value) is not None


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a well-formed Metaflow run id, else raise.

    Raises:
        MetaflowAccessError: The value could be an option, a path or shell syntax.
    """
    if not is_run_id(run_id):
        shown = run_id if len(str(run_id)) <= 80 else str(run_id)[:80] + "..."
        raise MetaflowAccessError(
            f"origin_run_id {shown!r} is not a Metaflow run id: expected letters, digits, '_' "
            "or '-', not starting with '-', at most 64 characters (for example dagster-1a2b3c4d5e6f)"
        )
    return run_id


def run_id_from_command_line(line: str) -> str | None:
    """The ``--run-id`` value of a logged Metaflow command line, if any."""
    match = _RUN_ID_IN_COMMAND.search(line)
    return match.group(1) if match else None
