"""Tests for auto_resume.dagster.notify: a hook runs once, safely, and never raises."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from auto_resume.dagster.notify import call_hook, give_up_values
from auto_resume.policy.settings import Hook

VALUES = give_up_values("run-1", "LinearFlow", "max_attempts (2) spent", "root-1", 3)


def test_command_gets_the_reason_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = f'echo "$AUTO_RESUME_JOB_NAME|$AUTO_RESUME_REASON|$AUTO_RESUME_ATTEMPT" > {out}'
    assert call_hook(Hook(command=("sh", "-c", script)), VALUES, "on_give_up") is None
    assert out.read_text() == "LinearFlow|max_attempts (2) spent|3\n"


def test_callable_gets_the_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_alerts.py").write_text("SEEN = []\ndef notify(event):\n    SEEN.append(event)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert call_hook(Hook(callable="my_alerts:notify"), VALUES, "on_give_up") is None
    assert sys.modules["my_alerts"].SEEN == [VALUES]


@pytest.mark.parametrize(
    ("hook", "fragment"),
    [
        (Hook(command=("sh", "-c", "echo nope >&2; exit 3")), "exit status 3: nope"),
        (Hook(command=("sleep", "5"), timeout_seconds=0.2), "timed out"),
        (Hook(command=("/no/such/program",)), "No such file"),
        (Hook(callable="json:loads"), "must be str"),  # raises TypeError on a dict
    ],
)
def test_failures_are_reported_not_raised(hook: Hook, fragment: str) -> None:
    problem = call_hook(hook, VALUES, "on_give_up")
    assert problem is not None
    assert problem.startswith("on_give_up hook failed for run run-1: ")
    assert fragment in problem
