"""The docs' generated reference tables: up to date with the code, and covering all of it."""

import re
from pathlib import Path

import pytest

from auto_resume.cli import reference
from auto_resume.cli.main import build_parser
from auto_resume.dagster.tags import TAGS
from auto_resume.policy.schema import policy_json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_committed_docs_match_the_code() -> None:
    stale = reference.regenerate(ROOT, write=False)
    assert not stale, (
        f"the generated reference sections of {', '.join(str(p.relative_to(ROOT)) for p in stale)} "
        f"no longer match the code; run `{reference.REGENERATE}` and commit the result"
    )


def _schema_fields(node: dict, defs: dict) -> set[str]:
    """Every field name of the policy schema, by the last part of its path."""
    names = set()
    for name, raw in node.get("properties", {}).items():
        names.add(name)
        field = reference._resolve(raw, defs)
        items = reference._resolve(field.get("items", {}), defs) if field.get("type") == "array" else {}
        for child in (field, items):
            if child.get("properties"):
                names |= _schema_fields(dict(child), defs)
    return names


def test_policy_reference_names_every_field_with_its_description() -> None:
    schema = policy_json_schema()
    text = reference.policy_reference()
    for name in _schema_fields(schema, schema.get("$defs", {})):
        assert f"{name}` |" in text, f"policy field {name!r} is missing from the reference"


def test_cli_reference_names_every_command_and_option() -> None:
    text = reference.cli_reference()
    for name, _, sub in reference._subcommands(build_parser()):
        assert f"### `auto-resume {name}`" in text
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"auto-resume {name} {option} is missing"


def test_tag_reference_names_every_tag() -> None:
    text = reference.tag_reference()
    assert all(f"| `{tag.key}` | {tag.on} |" in text for tag in TAGS)


def test_render_replaces_only_between_markers() -> None:
    doc = "intro\n<!-- BEGIN GENERATED: tags -->\nold\n<!-- END GENERATED: tags -->\noutro\n"
    new, found = reference.render(doc, {"tags": "| new |\n"})
    assert found == {"tags"}
    assert new.startswith("intro\n<!-- BEGIN GENERATED: tags -->\n")
    assert "| new |\n" in new and "old" not in new
    assert new.endswith("<!-- END GENERATED: tags -->\noutro\n")
    assert reference.render(new, {"tags": "| new |\n"}) == (new, {"tags"})  # idempotent


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        # a section this module does not generate
        ("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->\n", "unknown generated section"),
        # an END marker missing
        ("<!-- BEGIN GENERATED: tags -->\nbody\n", "no matching"),
    ],
)
def test_render_rejects_broken_markers(doc: str, problem: str) -> None:
    with pytest.raises(reference.ReferenceError, match=problem):
        reference.render(doc, {"tags": ""})


def test_check_reports_a_stale_doc_and_names_the_command(tmp_path: Path, capsys) -> None:
    sections = "".join(
        f"<!-- BEGIN GENERATED: {n} -->\n<!-- END GENERATED: {n} -->\n" for n in reference.SECTIONS
    )
    (tmp_path / "README.md").write_text(sections, encoding="utf-8")
    assert reference.main(["--check", "--root", str(tmp_path)]) == 1
    assert reference.REGENERATE in capsys.readouterr().err
    assert reference.main(["--root", str(tmp_path)]) == 0
    assert reference.main(["--check", "--root", str(tmp_path)]) == 0


def test_a_missing_section_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no markers\n", encoding="utf-8")
    with pytest.raises(reference.ReferenceError, match="holds the generated section"):
        reference.regenerate(tmp_path, write=False)


_REPO_PATH = re.compile(r"\b(?:auto_resume|tests|benchmarks|scripts|examples)/[\w./-]*\w\.(?:py|sh)\b")


def test_every_file_the_docs_name_exists() -> None:
    missing = {
        f"{doc.relative_to(ROOT)}: {path}"
        for doc in reference.doc_files(ROOT)
        for path in _REPO_PATH.findall(doc.read_text(encoding="utf-8"))
        if not (ROOT / path).exists()
    }
    assert not missing, f"the docs name files that do not exist (moved or renamed?): {sorted(missing)}"
