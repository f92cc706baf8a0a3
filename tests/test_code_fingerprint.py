"""Tests for auto_resume.metaflow.code_fingerprint: which files make a flow's code fingerprint."""

from pathlib import Path

from auto_resume.metaflow.code_fingerprint import code_files, code_fingerprint

FLOW = """\
import json
import helpers
from lib import tools
from lib.deep import settings as cfg
from metaflow import FlowSpec
"""


def _tree(root: Path) -> Path:
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "lib" / "__init__.py").write_text("")
    (root / "lib" / "tools.py").write_text("from . import shared\n")
    (root / "lib" / "shared.py").write_text("X = 1\n")
    (root / "lib" / "deep" / "__init__.py").write_text("")
    (root / "lib" / "deep" / "settings.py").write_text("RATE = 2\n")
    (root / "helpers.py").write_text("Y = 2\n")
    (root / "unused.py").write_text("Z = 3\n")
    (root / "json.py").write_text("")  # shadows the stdlib for the flow, so it is its code too
    flow = root / "flow.py"
    flow.write_text(FLOW)
    return flow


def test_the_flow_file_and_what_it_imports_from_its_tree(tmp_path: Path) -> None:
    flow = _tree(tmp_path)
    names = [str(path.relative_to(tmp_path)) for path in code_files(flow)]
    assert names == [
        "flow.py",
        "helpers.py",
        "json.py",
        "lib/__init__.py",
        "lib/deep/__init__.py",
        "lib/deep/settings.py",
        "lib/shared.py",  # imported by lib/tools.py, relatively
        "lib/tools.py",
    ]


def test_an_edit_of_imported_code_changes_it_and_anything_else_does_not(tmp_path: Path) -> None:
    flow = _tree(tmp_path)
    before = code_fingerprint(flow)
    (tmp_path / "unused.py").write_text("Z = 4\n")
    (tmp_path / "README.md").write_text("notes\n")
    flow.write_text(FLOW)  # the same bytes again
    assert code_fingerprint(flow) == before
    (tmp_path / "lib" / "shared.py").write_text("X = 2\n")
    changed = code_fingerprint(flow)
    assert changed != before
    flow.write_text(FLOW + "# a comment is a change of the file\n")
    assert code_fingerprint(flow) not in (before, changed)


def test_a_flow_file_python_cannot_parse_still_has_a_fingerprint(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text("def broken(:\n")
    assert code_files(flow) == [flow.resolve()]
    assert len(code_fingerprint(flow)) == 16
