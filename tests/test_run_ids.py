"""Tests for auto_resume.core.run_ids: run id checks, parsing and derivation."""

from __future__ import annotations

import hashlib

import pytest

from auto_resume.core.errors import MetaflowAccessError
from auto_resume.core.run_ids import check_run_id, make_run_id, run_id_from_command_line

# --- check_run_id --------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["dagster-1a2b3c4d5e6f", "1700000000000000", "a" * 64, "run_1"])
def test_check_run_id_accepts(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param("--help", id="option"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("../x", id="parent-dir"),
        pytest.param("a/b", id="slash"),
        pytest.param("$(touch /tmp/pwned)", id="shell"),
        pytest.param("a b", id="space"),
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("x" * 10_000, id="10k-chars"),
        pytest.param("dagster-abc\n", id="trailing-newline"),
    ],
)
def test_check_run_id_rejects(run_id: str) -> None:
    with pytest.raises(MetaflowAccessError) as info:
        check_run_id(run_id)
    message = str(info.value)
    assert len(message) < 400
    assert "is not a Metaflow run id" in message
    assert "dagster-1a2b3c4d5e6f" in message  # an example of what is expected


def test_check_run_id_shortens_huge_values() -> None:
    with pytest.raises(MetaflowAccessError) as info:
        check_run_id("x" * 10_000)
    assert "x" * 80 + "..." in str(info.value)
    assert "x" * 81 not in str(info.value)


# --- run_id_from_command_line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "run_id"),
    [
        # What a metaflow-dagster op logs for a step.
        (
            "$ /usr/bin/python flow.py --quiet step start --run-id dagster-abc123 --task-id 1 "
            "--input-paths dagster-abc123/_parameters/params",
            "dagster-abc123",
        ),
        # The init command of a metaflow-dagster resume: --clone-run-id is not the run's id.
        (
            "$ python flow.py init --run-id dagster-new --task-id params --clone-run-id dagster-old",
            "dagster-new",
        ),
        # The --name=value form, as auto-resume's own step commands are logged.
        ("$ python flow.py step end --run-id=dagster-x --task-id=1", "dagster-x"),
        # No --run-id at all.
        ("$ python flow.py --quiet show", None),
        # Only --clone-run-id.
        ("$ python flow.py step start --clone-run-id dagster-old", None),
        # Not a command line.
        ("run-id dagster-abc123 failed", None),
        ("", None),
    ],
)
def test_run_id_from_command_line(line: str, run_id: str | None) -> None:
    assert run_id_from_command_line(line) == run_id


# --- make_run_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dagster_run_id", ["0b5f1c3e-1111-4222-8333-944445555666", "x"])
def test_make_run_id(dagster_run_id: str) -> None:
    expected = "dagster-" + hashlib.sha1(dagster_run_id.encode()).hexdigest()[:12]
    assert make_run_id(dagster_run_id) == expected
    assert check_run_id(expected) == expected
