"""Reference tables of the docs, generated from the code they describe so that they cannot drift.

Three sections, each written between a pair of marker comments in any Markdown file of the
repository (``README.md``, ``docs/*.md``)::

    <!-- BEGIN GENERATED: policy -->
    ...
    <!-- END GENERATED: policy -->

- ``policy``: every field of the policy file, from its JSON Schema (``policy_json_schema``);
- ``cli``: every ``auto-resume`` command and option, from the argparse parser (``build_parser``);
- ``tags``: every run tag, from ``auto_resume.dagster.tags.TAGS``;
- ``layout``: every module of the package, from the first paragraph of its docstring.

``python -m auto_resume.cli.reference`` rewrites the sections in place; with ``--check`` it
changes nothing and exits 1, naming the stale files, when one differs from the code.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import auto_resume
from auto_resume.cli.main import build_parser
from auto_resume.dagster.tags import TAGS
from auto_resume.policy.schema import policy_json_schema

REGENERATE = "python -m auto_resume.cli.reference"
_MARKER = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)
_NOTICE = f"<!-- generated from the code by `{REGENERATE}`; edit the code, not this table -->\n"
_HELP_WIDTH = 100  # fixed, so that the text does not depend on the terminal that generates it
_Schema = Mapping[str, Any]


class ReferenceError(Exception):
    """A doc's marker comments are broken, or name a section this module does not generate."""


# --- policy -----------------------------------------------------------------------------------


def policy_reference() -> str:
    """The policy file's fields as two Markdown tables: the file's top level, and a flow's settings.

    The settings are the fields of ``defaults``; ``overrides`` and ``flows`` entries take the same
    settings, so their rows list only the fields of their own.

    Returns:
        Markdown text.
    """
    schema = policy_json_schema()
    defs: _Schema = schema.get("$defs", {})
    settings = _resolve(schema["properties"]["defaults"], defs)
    setting_names = frozenset(settings.get("properties", {}))
    top = list(_field_rows(schema, defs, "", skip=setting_names, expand_except={"defaults"}))
    flow = list(_field_rows(settings, defs, ""))
    header = "| field | type | default | meaning |\n|---|---|---|---|\n"
    return (
        "Top level of the policy file:\n\n"
        + header
        + "".join(top)
        + "\nA flow's settings: under `defaults`, in an `overrides` entry or in a `flows` entry "
        "(there every setting defaults to `null`: inherit).\n\n" + header + "".join(flow)
    )


def _field_rows(
    node: _Schema,
    defs: _Schema,
    prefix: str,
    *,
    skip: frozenset[str] = frozenset(),
    expand_except: set[str] | None = None,
) -> Iterator[str]:
    """One table row per field of an object schema, then the rows of its nested objects."""
    required = set(node.get("required", ()))
    for name, raw in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        field = _resolve(raw, defs)
        if prefix and name in skip:
            continue
        default = "(required)" if name in required else _default(raw, field)
        yield f"| `{path}` | {_type(field, defs)} | {default} | {_meaning(raw, field)} |\n"
        if expand_except is not None and name in expand_except:
            continue
        items = _resolve(field.get("items", {}), defs) if field.get("type") == "array" else None
        if field.get("properties"):
            yield from _field_rows(field, defs, f"{path}.", skip=skip)
        elif items and items.get("properties"):
            if skip and skip & set(items["properties"]):
                yield (
                    f"| `{path}[].<setting>` | | inherit | any setting of a flow (table below), "
                    "for this entry |\n"
                )
            yield from _field_rows(items, defs, f"{path}[].", skip=skip)


def _resolve(node: _Schema, defs: _Schema) -> _Schema:
    """The schema a field holds: `$ref` followed, a `null` alternative dropped."""
    alternatives = [alt for alt in node.get("anyOf", ()) if alt.get("type") != "null"]
    if len(alternatives) == 1:
        node = {**node, **alternatives[0]}
        node.pop("anyOf")
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = defs[ref.rsplit("/", 1)[-1]]
        node = {
            **target,
            **{k: v for k, v in node.items() if k != "$ref"},
            "_docstring": target.get("description"),
        }
    return node


def _type(field: _Schema, defs: _Schema) -> str:
    if "const" in field:
        return f"`{json.dumps(field['const'])}`"
    if "enum" in field:
        return "one of " + ", ".join(f"`{value}`" for value in field["enum"])
    kind = field.get("type")
    if kind == "array":
        items = _resolve(field.get("items", {}), defs)
        if items.get("properties"):
            inner = "objects"
        elif "enum" in items:
            inner = "values, each " + _type(items, defs)
        else:
            inner = _type(items, defs) + "s"
        at_least = f" (at least {field['minItems']})" if field.get("minItems") else ""
        return f"list of {inner}{at_least}"
    if kind == "object" or field.get("properties"):
        extra = field.get("additionalProperties")
        if isinstance(extra, Mapping) and extra.get("type"):
            return f"map of {extra['type']}s"
        return "object"
    text = {"number": "number", "integer": "integer", "boolean": "`true` or `false`"}.get(str(kind))
    if text is None:
        text = {"time": '`"HH:MM"`', "date-time": "date-time", "path": "path"}.get(
            field.get("format", ""), str(kind or "any")
        )
    if "minimum" in field:
        text += f" ≥ {field['minimum']}"
    if "exclusiveMinimum" in field:
        text += f" > {field['exclusiveMinimum']}"
    return text


def _default(raw: _Schema, field: _Schema) -> str:
    if "default" in raw:
        return f"`{_yaml(raw['default'])}`"
    if field.get("type") == "array":
        return "`[]`"
    if field.get("properties") or field.get("type") == "object":
        return "`{}`"  # a default factory: the object with its own defaults
    return ""


def _yaml(value: object) -> str:
    """A default as one writes it in the YAML file (flow style)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    return json.dumps(value)


def _meaning(raw: _Schema, field: _Schema) -> str:
    parts = [raw.get("description") or field.get("description") or ""]
    docstring = field.get("_docstring")
    if docstring and docstring not in parts:
        parts.append(docstring)
    return _cell(" ".join(part.replace("``", "`") for part in parts if part))


# --- cli ----------------------------------------------------------------------------------------


def cli_reference() -> str:
    """Every ``auto-resume`` command: a summary table, then each command's usage and options.

    Returns:
        Markdown text.
    """
    parser = build_parser()
    commands = _subcommands(parser)
    out = ["| command | does |\n|---|---|\n"]
    out += [
        f"| [`auto-resume {name}`](#auto-resume-{name}) | {_cell(summary)} |\n"
        for name, summary, _ in commands
    ]
    for name, _, sub in commands:
        out.append(f"\n### `auto-resume {name}`\n\n")
        out.append(f"```text\n{_usage(sub)}```\n\n")
        if sub.description:
            out.append(_one_line(sub.description) + "\n\n")
        out.append("| argument | default | meaning |\n|---|---|---|\n")
        for action in sub._actions:  # argparse has no public list of a parser's arguments
            if isinstance(action, argparse._HelpAction):
                continue
            out.append(f"| {_argument(action)} | {_action_default(action)} | {_cell(action.help or '')} |\n")
    if parser.epilog:
        out.append("\n### Exit status, environment, examples (every command)\n\n")
        out.append(f"```text\n{parser.epilog.rstrip()}\n```\n")
    return "".join(out)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order ``--help`` lists them."""
    found = []
    for action in parser._actions:  # argparse has no public API to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            choices: Mapping[str, argparse.ArgumentParser] = action.choices
            for choice in action._get_subactions():
                found.append((choice.dest, choice.help or "", choices[choice.dest]))
    return found


def _usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage line, built from its arguments.

    Not ``format_usage()``: argparse's wrapping and option layout differ between Python versions,
    and the committed docs must read the same whatever Python generates them.
    """
    options, positionals = [], []
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            positionals.append(f"[{name}]" if action.nargs in ("?", "*") else name)
            continue
        option = action.option_strings[0]
        if action.nargs != 0:
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            option = f"{option} {metavar}"
        options.append(option if action.required else f"[{option}]")
    words = ["usage:", parser.prog, "[-h]", *options, *positionals]
    return textwrap.fill(" ".join(words), width=_HELP_WIDTH, subsequent_indent="    ") + "\n"


def _argument(action: argparse.Action) -> str:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if not action.option_strings:
        return f"`{metavar or action.dest}`"
    takes_value = action.nargs != 0
    value = f" {metavar or action.dest.upper()}" if takes_value else ""
    return ", ".join(f"`{option}{value}`" for option in action.option_strings)


def _action_default(action: argparse.Action) -> str:
    if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _one_line(text: str) -> str:
    """Wrapped plain text as one line of Markdown.

    A word that textwrap broke at a hyphen is made whole again, and ``<`` outside code spans is
    escaped (Markdown would read ``<job>`` as an HTML tag and drop it).
    """
    joined = " ".join(re.sub(r"-\n\s*", "-", text).split())
    parts = joined.split("`")
    parts[::2] = [part.replace("<", "&lt;") for part in parts[::2]]
    return "`".join(parts)


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


# --- tags ---------------------------------------------------------------------------------------


def tag_reference() -> str:
    """Every run tag auto-resume reads or writes, from ``TAGS``.

    Returns:
        Markdown text.
    """
    rows = [f"| `{tag.key}` | {_cell(tag.on)} | {_cell(tag.value)} |\n" for tag in TAGS]
    return "| tag | set on | value |\n|---|---|---|\n" + "".join(rows)


# --- layout -------------------------------------------------------------------------------------


def layout_reference() -> str:
    """Every module of the ``auto_resume`` package with the first paragraph of its docstring.

    Returns:
        Markdown text.
    """
    package = Path(auto_resume.__file__).parent
    rows = []
    for path in sorted(package.rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if path.name == "__init__.py" and not docstring:
            continue
        summary = _cell(docstring.split("\n\n")[0]).replace("``", "`") if docstring else "(no docstring)"
        rows.append(f"| `{path.relative_to(package.parent).as_posix()}` | {summary} |\n")
    return "| module | what it does |\n|---|---|\n" + "".join(rows)


# --- the docs -----------------------------------------------------------------------------------

SECTIONS: Mapping[str, Callable[[], str]] = {
    "policy": policy_reference,
    "cli": cli_reference,
    "tags": tag_reference,
    "layout": layout_reference,
}


def doc_files(root: Path) -> list[Path]:
    """The Markdown files that may hold generated sections: ``README.md`` and ``docs/**/*.md``."""
    return sorted([*root.glob("*.md"), *root.glob("docs/**/*.md")])


def render(text: str, sections: Mapping[str, str]) -> tuple[str, set[str]]:
    """Replaces the body of every generated section of one document.

    Args:
        text: The document.
        sections: Section name to its generated Markdown.

    Returns:
        The new text and the names of the sections it holds.

    Raises:
        ReferenceError: If a section is unknown, or a BEGIN marker has no matching END.
    """
    found: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in sections:
            raise ReferenceError(f"unknown generated section {name!r}; known: {', '.join(sorted(sections))}")
        found.add(name)
        return f"{match['begin']}{_NOTICE}\n{sections[name]}\n{match['end']}"

    new = _MARKER.sub(replace, text)
    begins = len(re.findall(r"<!-- BEGIN GENERATED: ", text))
    if begins != len(_MARKER.findall(text)):
        raise ReferenceError(
            "a `<!-- BEGIN GENERATED: name -->` has no matching `<!-- END GENERATED: name -->`"
        )
    return new, found


def regenerate(root: Path, *, write: bool) -> list[Path]:
    """Brings every generated section under ``root`` up to date with the code.

    Args:
        root: The repository's root directory.
        write: Rewrite the stale files; otherwise only report them.

    Returns:
        The files whose generated sections differed from the code.

    Raises:
        ReferenceError: If markers are broken, or a section appears in no file.
    """
    sections = {name: make() for name, make in SECTIONS.items()}
    updates: dict[Path, str] = {}
    seen: set[str] = set()
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        try:
            new, found = render(text, sections)
        except ReferenceError as exc:
            raise ReferenceError(f"{path}: {exc}") from exc
        seen |= found
        if new != text:
            updates[path] = new
    if missing := set(SECTIONS) - seen:
        raise ReferenceError(
            f"no file under {root} holds the generated section(s) {', '.join(sorted(missing))}; "
            "fix: put `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` in a doc"
        )
    if write:
        for path, new in updates.items():
            path.write_text(new, encoding="utf-8")
    return list(updates)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m auto_resume.cli.reference``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=REGENERATE, description="Rewrite the generated reference sections of the docs from the code."
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is stale")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    args = parser.parse_args(argv)
    try:
        stale = regenerate(args.root, write=not args.check)
    except (ReferenceError, OSError) as exc:
        sys.stderr.write(f"{REGENERATE}: {exc}\n")
        return 1
    names = ", ".join(str(path) for path in stale)
    if args.check and stale:
        sys.stderr.write(f"stale generated sections in {names}; fix: run `{REGENERATE}` and commit\n")
        return 1
    sys.stdout.write(f"rewrote {names}\n" if stale else "generated sections are up to date\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
