"""Reading the auto-resume policy file, and saying precisely what is wrong with it.

The policy is a YAML file (``policy.yaml`` in the current directory unless the
``AUTO_RESUME_POLICY`` environment variable names another file) listing the
metaflow-dagster definitions files to watch and how often failed runs of each
may be resumed (the models are in `auto_resume.policy.model`). All problems found while
loading it are reported in a single `PolicyError` naming the file, line, field path and a
fix for each; the fix's example comes from the field's ``examples``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from auto_resume.metaflow.decorator_specs import allowed_problem, spec_problem, tags_problem
from auto_resume.policy.model import Policy

POLICY_ENV_VAR = "AUTO_RESUME_POLICY"
_Loc = tuple[int | str, ...]
# The safe loader, in C where PyYAML has libyaml: the sensor reads the policy on every tick, and the
# pure-Python parser cost 0.3 s of a 0.7 s tick with 50 flows (benchmarks/many_flows.py).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Characters that make a plain YAML scalar mean something else, or nothing: quote examples with them.
_YAML_SPECIAL = set("*&!|>%@`#{}[],?\"'")


class PolicyError(Exception):
    """The policy is missing or invalid; the message lists each problem and its fix.

    Attributes:
        path: The policy file concerned, if known.
        problems: One line per problem (`file:line: field: what; fix: how`).
    """

    def __init__(self, message: str, *, path: Path | None = None, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.problems = tuple(problems)


class _Problem(NamedTuple):
    what: str
    fix: str
    loc: _Loc | None = None  # None: not about one field (I/O or YAML syntax)
    line: int | None = None  # None: taken from loc via the YAML node tree
    column: int | None = None


_TYPE_WORDS = {
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "tuple_type": "expected a list",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "string_type": "expected text",
    "path_type": "expected a file path",
    "datetime_type": "expected a date-time",
    "datetime_parsing": "expected a date-time",
    "datetime_from_date_parsing": "expected a date-time",
}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``tuple[ErrorRule, ...] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    """The field a YAML key names: by its name, or its alias (``with``)."""
    found = model.model_fields.get(key)
    return found or next((f for f in model.model_fields.values() if f.alias == key), None)


def _model_at(loc: _Loc) -> type[BaseModel]:
    """The model that holds the field at ``loc`` (list indices skipped)."""
    model: type[BaseModel] = Policy
    for part in loc:
        found = None if isinstance(part, int) else _field(model, part)
        if found is None:
            continue
        inner = _model_of(found.annotation)
        if inner is None:
            break
        model = inner
    return model


def _field_path(loc: _Loc) -> str:
    """Formats ("flows", 1, "max_attempts") as flows[1].max_attempts."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return text.lstrip(".") or "(top level)"


def _line_of(root: yaml.Node, loc: _Loc) -> int:
    """Returns the 1-based line of the deepest part of `loc` present in the tree."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            keys = [(k, v) for k, v in node.value if k.value == str(part)]
            if not keys:
                break
            key, node = keys[-1]  # safe_load keeps the last of duplicate keys
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _as_yaml(value: object) -> str:
    """An example value as YAML flow text, quoted where YAML would misread it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_as_yaml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_as_yaml(item) for item in value) + "]"
    if not isinstance(value, str):  # a number, a date-time
        return str(value)
    text = value
    if "\\" in text:  # a regular expression: single quotes keep backslashes as they are
        return "'" + text.replace("'", "''") + "'"
    # A leading digit: a time of day such as `20:00` reads as a number (base 60) unquoted.
    if _YAML_SPECIAL & set(text) or ": " in text or text[:1].isdigit() or yaml.safe_load(text) != text:
        return json.dumps(text)
    return text


def _example(loc: _Loc) -> str | None:
    """The first of ``examples`` of the field at ``loc``, as YAML; None if it has none."""
    names = [i for i, part in enumerate(loc) if isinstance(part, str)]
    if not names:
        return None
    model = _model_at(loc[: names[-1]])
    field = _field(model, str(loc[names[-1]]))
    if field is None or not field.examples:
        return None
    return _as_yaml(field.examples[0])


def _explain(err: ErrorDetails) -> _Problem:
    """Turns one pydantic error into a problem with a fix."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx", {})
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    names = [p for p in loc if isinstance(p, str)]
    name = names[-1] if names else ""
    sample = f"`{name}: {_example(loc) or '...'}`"
    if loc and loc[-1] == 0 and name == "flows":
        sample = "`- definitions_file: flows/my_flow_dagster.py`"
    if kind == "extra_forbidden":
        fields = {f.alias or name: f for name, f in _model_at(loc[:-1]).model_fields.items()}
        # Required ones first, then the file an entry names, then the rest in model order.
        allowed = sorted(
            fields, key=lambda f: (not fields[f].is_required(), f not in ("definitions_file", "flow_file"))
        )
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        what = f"unknown field; allowed fields are: {', '.join(allowed)}"
        fix = f"rename it to `{close[0]}`" if close else "remove it"
    elif loc == ("version",) and kind != "missing":
        what, fix = f"unsupported version {got}; only 1 exists", "set `version: 1`"
    elif kind == "value_error":
        # Our validators phrase their message as "<what>; fix: <how>".
        text = str(ctx.get("error", err["msg"]))
        what, _, fix = text.partition("; fix: ")
        fix = fix or f"write it like {sample}"
    elif kind == "missing":
        what, fix = "required field is missing", f"add it, e.g. {sample}"
    elif kind in ("greater_than_equal", "greater_than"):
        sign, bound = (">=", ctx["ge"]) if kind == "greater_than_equal" else (">", ctx["gt"])
        bound = int(bound) if float(bound).is_integer() else bound  # 1, not 1.0
        what = f"must be {sign} {bound} (got {got})"
        fix = f"set it to {bound} or more, e.g. {sample}"
    elif kind == "literal_error":
        what = f"must be {ctx['expected']} (got {got})"
        fix = f"set it to {ctx['expected']}, e.g. {sample}"
    elif kind == "too_short":
        what, fix = f"must not be empty (got {got})", f"write it like {sample}"
    else:
        what = f"{_TYPE_WORDS.get(kind, err['msg'])} (got {got})"
        fix = f"write it like {sample}"
    return _Problem(what, fix, loc)


def _check_flows(policy: Policy) -> list[_Problem]:
    """Checks that entries name each file once.

    A file that is missing is not a policy problem: the code location disables that flow alone
    (`auto_resume.dagster.code_location`), so one lost file does not stop the others.
    """
    problems: list[_Problem] = []
    seen: dict[Path, int] = {}
    for i, entry in enumerate(policy.flows):
        loc: _Loc = ("flows", i, entry.source_field)
        path = entry.source
        if path in seen:
            what = f"{path} is already listed as flows[{seen[path]}]"
            fix = "remove one of the two entries, or merge their settings"
            problems.append(_Problem(what, fix, loc))
        seen.setdefault(path, i)
    return problems


def _check_changes(policy: Policy) -> list[_Problem]:
    """Checks what resumes may change: each ``with`` spec against ``allowed_decorators`` and
    Metaflow, each ``metaflow_tags`` list against Metaflow's limits, each allowed decorator."""
    found: list[tuple[str, _Loc]] = []
    for i, name in enumerate(policy.allowed_decorators):
        found.append((allowed_problem(name) or "", ("allowed_decorators", i)))
    layers: list[tuple[_Loc, Any]] = [(("defaults",), policy.defaults)]
    layers += [(("overrides", i), layer) for i, layer in enumerate(policy.overrides)]
    layers += [(("flows", i), layer) for i, layer in enumerate(policy.flows)]
    for loc, layer in list(layers):
        layers += [((*loc, "errors", i), rule) for i, rule in enumerate(layer.errors or ())]
    for loc, layer in layers:
        for i, spec in enumerate(layer.with_ or ()):
            found.append((spec_problem(spec, policy.allowed_decorators) or "", (*loc, "with", i)))
        if layer.metaflow_tags:
            found.append((tags_problem(layer.metaflow_tags) or "", (*loc, "metaflow_tags")))
    problems = []
    for text, loc in found:
        if text:
            what, _, fix = text.partition("; fix: ")
            problems.append(_Problem(what, fix, loc))
    return problems


def _fail(path: Path, problems: list[_Problem], root: yaml.Node | None = None) -> PolicyError:
    """Builds the PolicyError: a headline, then one problem per line."""
    lines = []
    for p in problems:
        line = p.line or (_line_of(root, p.loc) if root is not None and p.loc is not None else None)
        where = f"{path}:{line}" if line else str(path)
        where += f":{p.column}" if p.column else ""
        field = f" {_field_path(p.loc)}:" if p.loc is not None else ""
        lines.append(f"{where}:{field} {p.what}; fix: {p.fix}")
    count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
    body = "".join(f"\n  - {line}" for line in lines)
    return PolicyError(f"invalid auto-resume policy {path}: {count}{body}", path=path, problems=lines)


def _path_and_origin() -> tuple[Path, str]:
    value = os.environ.get(POLICY_ENV_VAR)
    if value:
        return Path(value), f"taken from the {POLICY_ENV_VAR} environment variable"
    return Path.cwd() / "policy.yaml", f"the default, as {POLICY_ENV_VAR} is not set"


def default_policy_path() -> Path:
    """Returns the policy path: $AUTO_RESUME_POLICY if set and non-empty, else ./policy.yaml.

    Returns:
        The path to load; the environment is read at call time.
    """
    return _path_and_origin()[0]


def _read_yaml(path: Path, text: str) -> tuple[yaml.Node | None, Any]:
    """The text's node tree (for line numbers) and its data; a PolicyError if not YAML."""
    try:
        return yaml.compose(text, Loader=_LOADER), yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        what, line, col = f"YAML syntax error: {exc}", None, None
        if isinstance(exc, yaml.MarkedYAMLError):
            what = f"YAML syntax error: {exc.problem or exc.context}"
            if exc.context and exc.context_mark and exc.problem:
                what += f" ({exc.context} on line {exc.context_mark.line + 1})"
            if mark := exc.problem_mark or exc.context_mark:
                line, col = mark.line + 1, mark.column + 1
        fix = "correct the YAML there (check indentation, colons and quotes)"
        raise _fail(path, [_Problem(what, fix, None, line, col)]) from exc


def load_policy(path: Path | None = None) -> Policy:
    """Reads and validates a policy file.

    Args:
        path: The policy file; None means `default_policy_path()`.

    Returns:
        The validated policy, with every `definitions_file` absolute and resolved.

    Raises:
        PolicyError: If the file is missing, unreadable, not YAML or not a valid policy.
    """
    return load_policy_source(path)[0]


def load_policy_source(path: Path | None = None) -> tuple[Policy, str]:
    """Reads and validates a policy file; also returns the text it validated.

    Args:
        path: The policy file; None means `default_policy_path()`.

    Returns:
        The validated policy, and the file's text as read (what a copy of it must keep).

    Raises:
        PolicyError: If the file is missing, unreadable, not YAML or not a valid policy.
    """
    origin = "passed explicitly"
    if path is None:
        path, origin = _path_and_origin()
    path = path.absolute()
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        what = f"policy file {state} (path {origin})"
        fix = f"create it with `version: 1`, or set {POLICY_ENV_VAR} to a policy file"
        raise _fail(path, [_Problem(what, fix)])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fix = "make it a readable UTF-8 text file"
        raise _fail(path, [_Problem(f"cannot read the file: {exc}", fix)]) from exc
    return parse_policy(text, path), text


def parse_policy(text: str, path: Path) -> Policy:
    """Validates a policy's text as if it were the content of the file ``path``.

    Relative paths in it are resolved against ``path``'s directory, and problems name ``path``.

    Args:
        text: The YAML text.
        path: The file it is (or was) the content of.

    Returns:
        The validated policy.

    Raises:
        PolicyError: If the text is not YAML or not a valid policy.
    """
    return _parse_policy(text, path.absolute())


# The sensor reads the policy on every tick, and it rarely changes: the same text of the same file
# validates to the same (frozen) Policy. A text with problems raises each time, uncached.
@lru_cache(maxsize=16)
def _parse_policy(text: str, path: Path) -> Policy:
    root, data = _read_yaml(path, text)
    if root is None:
        raise _fail(path, [_Problem("the file is empty (or only comments)", "add `version: 1`", ())])
    if not isinstance(data, dict):
        what = f"the top level must be a mapping, not a {type(data).__name__}"
        fix = "write `key: value` lines, starting with `version: 1`"
        raise _fail(path, [_Problem(what, fix, (), root.start_mark.line + 1)])
    policy_dir = path.parent.resolve()
    try:
        policy = Policy.model_validate(data, context={"policy_dir": policy_dir})
    except ValidationError as exc:
        raise _fail(path, [_explain(e) for e in exc.errors()], root) from exc
    if problems := _check_flows(policy) + _check_changes(policy):
        raise _fail(path, problems, root)
    return policy
