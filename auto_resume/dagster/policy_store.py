"""The last valid policy, kept in the Dagster instance, so that a bad edit stops nothing.

Every sensor tick reads the policy file. When it is valid, its text is recorded here (once per
change) with the time it first came into force; when an edit makes it invalid, the tick decides
with the recorded text instead and says so, and a load of the code location (a workspace reload,
a daemon restart) builds from it too. The record lives in the instance's key-value store, shared
by the daemon, its code servers and the CLI on the same ``DAGSTER_HOME``, so it survives
reloads and restarts; it is keyed by the policy file's absolute path.

Dagster has no public key-value API: :func:`_read_value` and :func:`_write_value` call
``DagsterInstance.daemon_cursor_storage`` (``get_cursor_values`` / ``set_cursor_values``, the
run storage's ``kvs`` table, which Dagster's own daemons use for their cursors). They are the
only private calls here; ``tests/test_policy_store.py`` fails if Dagster changes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from dagster import DagsterInstance

from auto_resume.policy.loading import PolicyError, load_policy_source, parse_policy
from auto_resume.policy.model import Policy

KEY_PREFIX = "auto_resume/last_good_policy:"


@dataclass(frozen=True)
class GoodPolicy:
    """A policy text that was valid, and since when it has been the one in force."""

    path: str  # the policy file, absolute
    text: str
    sha256: str
    since: float  # POSIX time of the first tick (or load) that found this text valid

    @property
    def since_text(self) -> str:
        """``since`` as UTC, to the second."""
        return datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class PolicyInForce:
    """The policy a tick or a load decides with, and why it is not the file, if it is not."""

    policy: Policy
    error: PolicyError | None = None  # the file's problems, when the last good policy is used
    last_good: GoodPolicy | None = None

    def notes(self) -> list[str]:
        """What a tick must say: nothing when the file is in force; else the error and the fallback."""
        if self.error is None or self.last_good is None:
            return []
        problems = "; ".join(self.error.problems) or str(self.error)
        return [
            f"policy file invalid, deciding with the last good policy (in force since "
            f"{self.last_good.since_text}) until it is fixed: {problems}"
        ]


def _key(path: Path) -> str:
    return KEY_PREFIX + str(path.absolute())


def _read_value(instance: DagsterInstance, key: str) -> str | None:
    # Private: DagsterInstance.daemon_cursor_storage, the kvs table shared by every process.
    return instance.daemon_cursor_storage.get_cursor_values({key}).get(key)


def _write_value(instance: DagsterInstance, key: str, value: str) -> None:
    # Private: DagsterInstance.daemon_cursor_storage (an upsert into the kvs table).
    instance.daemon_cursor_storage.set_cursor_values({key: value})


def read_last_good(instance: DagsterInstance, path: Path) -> GoodPolicy | None:
    """The last valid text of the policy file ``path`` recorded in ``instance``, if any."""
    value = _read_value(instance, _key(path))
    if not value:
        return None
    try:
        return GoodPolicy(**json.loads(value))
    except (TypeError, ValueError):  # a record by another version: as if none
        return None


def record_good(instance: DagsterInstance, path: Path, text: str, now: float | None = None) -> GoodPolicy:
    """Record ``text`` as the valid policy of ``path``; a text already recorded keeps its time.

    Returns:
        The record now in the instance.
    """
    digest = hashlib.sha256(text.encode()).hexdigest()
    current = read_last_good(instance, path)
    if current is not None and current.sha256 == digest:
        return current
    good = GoodPolicy(str(path.absolute()), text, digest, time.time() if now is None else now)
    _write_value(instance, _key(path), json.dumps(asdict(good)))
    return good


def policy_in_force(instance: DagsterInstance, path: Path) -> PolicyInForce:
    """The policy to decide with now: the file if valid (recorded as the last good one), else
    the last good one recorded, with the file's error.

    Raises:
        PolicyError: The file is invalid and no valid text of it was ever recorded (or the
            recorded one is no longer valid either): the file's own error.
    """
    try:
        policy, text = load_policy_source(path)
    except PolicyError as error:
        return fall_back(instance, path, error)
    record_good(instance, path, text)
    return PolicyInForce(policy)


def fall_back(instance: DagsterInstance, path: Path, error: PolicyError) -> PolicyInForce:
    """The last good policy of ``path`` with ``error``; re-raises ``error`` when there is none."""
    good = read_last_good(instance, path)
    if good is None:
        raise error
    try:
        policy = parse_policy(good.text, path)
    except PolicyError:
        raise error from None  # the recorded text no longer validates (auto-resume was upgraded)
    return PolicyInForce(policy, error, good)


def last_good_from_home(path: Path, error: PolicyError) -> PolicyInForce:
    """:func:`fall_back` on the instance of ``$DAGSTER_HOME``: what a code location load uses.

    Raises:
        PolicyError: ``error``, with why there is no fallback, when ``DAGSTER_HOME`` is unset,
            its instance cannot be opened, or it holds no last good policy.
    """
    if not os.environ.get("DAGSTER_HOME"):
        raise error
    try:
        instance = DagsterInstance.get()
    except Exception as exc:
        raise PolicyError(
            f"{error}\n(no last good policy to fall back on: cannot open the instance of "
            f"DAGSTER_HOME: {exc})",
            path=error.path,
            problems=error.problems,
        ) from error
    with instance:
        return fall_back(instance, path, error)


FallBack = Callable[[Path, PolicyError], PolicyInForce]
