"""Tests for auto_resume.dagster.policy_store: the last good policy, kept in the instance."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from auto_resume.dagster.policy_store import (
    last_good_from_home,
    policy_in_force,
    read_last_good,
    record_good,
)
from auto_resume.policy.loading import PolicyError

GOOD = "version: 1\ndefaults:\n  max_attempts: 4\n"
BAD = "version: 1\ndefaults:\n  max_atempts: 3\n"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def test_the_private_key_value_calls_still_exist(instance: DagsterInstance) -> None:
    """The one private Dagster API used: fails when Dagster renames or reshapes it."""
    storage = instance.daemon_cursor_storage
    assert list(inspect.signature(storage.get_cursor_values).parameters) == ["keys"]
    assert list(inspect.signature(storage.set_cursor_values).parameters) == ["pairs"]
    storage.set_cursor_values({"auto_resume/test": "1"})
    storage.set_cursor_values({"auto_resume/test": "2"})  # an upsert
    assert storage.get_cursor_values({"auto_resume/test", "absent"}) == {"auto_resume/test": "2"}


def test_a_valid_file_is_recorded_once_per_change(instance: DagsterInstance, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    assert read_last_good(instance, path) is None
    first = policy_in_force(instance, path)
    assert first.error is None and first.notes() == []
    assert first.policy.defaults.max_attempts == 4
    recorded = read_last_good(instance, path)
    assert recorded is not None and recorded.text == GOOD
    policy_in_force(instance, path)
    assert read_last_good(instance, path) == recorded  # same text: its time is kept
    path.write_text(GOOD.replace("4", "5"))
    newer = policy_in_force(instance, path)
    assert newer.policy.defaults.max_attempts == 5
    later = read_last_good(instance, path)
    assert later is not None and later.since >= recorded.since and later.sha256 != recorded.sha256


def test_an_invalid_file_falls_back_with_its_error(instance: DagsterInstance, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    record_good(instance, path, GOOD, now=1_780_000_000)
    path.write_text(BAD)
    in_force = policy_in_force(instance, path)
    assert in_force.policy.defaults.max_attempts == 4
    assert in_force.error is not None and in_force.last_good is not None
    (note,) = in_force.notes()
    assert note.startswith(
        "policy file invalid, deciding with the last good policy (in force since 2026-05-28 20:26:40 UTC)"
    )
    assert f"{path}:3: defaults.max_atempts: unknown field; allowed fields are: " in note
    assert note.endswith("; fix: rename it to `max_attempts`")
    assert read_last_good(instance, path) == in_force.last_good  # an invalid text is never recorded


def test_no_last_good_policy_raises_the_files_error(instance: DagsterInstance, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BAD)
    with pytest.raises(PolicyError, match="max_atempts"):
        policy_in_force(instance, path)
    # Another file's record is not this one's.
    record_good(instance, tmp_path / "other.yaml", GOOD)
    with pytest.raises(PolicyError, match="max_atempts"):
        policy_in_force(instance, path)


def test_a_recorded_text_no_longer_valid_is_not_used(instance: DagsterInstance, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    record_good(instance, path, "version: 1\nno_such_field_any_more: 1\n")
    path.write_text(BAD)
    with pytest.raises(PolicyError, match="max_atempts"):
        policy_in_force(instance, path)


def test_a_load_without_dagster_home_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    error = PolicyError("invalid")
    with pytest.raises(PolicyError) as info:
        last_good_from_home(tmp_path / "policy.yaml", error)
    assert info.value is error


def test_a_load_reads_the_instance_of_dagster_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    path = tmp_path / "policy.yaml"
    with DagsterInstance.get() as instance:
        record_good(instance, path, GOOD)
    path.write_text(BAD)
    error = PolicyError("invalid")
    assert last_good_from_home(path, error).policy.defaults.max_attempts == 4
