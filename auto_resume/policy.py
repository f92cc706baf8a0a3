"""The auto-resume policy file: pydantic models, loader and JSON Schema.

The policy is a YAML file (``policy.yaml`` in the current directory unless the
``AUTO_RESUME_POLICY`` environment variable names another file) listing the
metaflow-dagster definitions files to watch and how often failed runs of each
may be resumed. All problems found while loading it are reported in a single
`PolicyError` naming the file, line, field path and a fix for each.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

POLICY_ENV_VAR = "AUTO_RESUME_POLICY"
_Loc = tuple[int | str, ...]
_Switch = Annotated[bool, Field(strict=True)]  # strict: reject "yes", 1, ...
_Attempts = Annotated[int, Field(ge=0, strict=True)]  # strict: reject "2", 2.5, true


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


class SensorSettings(BaseModel):
    """Settings of the Dagster sensor that watches for failed runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    minimum_interval_seconds: int = Field(
        default=30,
        ge=5,
        strict=True,
        description="Seconds between sensor ticks; the Dagster daemon needs >= 5.",
    )
    default_status: Literal["running", "stopped"] = Field(
        default="stopped", description="Initial sensor status; the Dagster UI toggle overrides it."
    )


class Defaults(BaseModel):
    """Settings of every flow that does not override them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: _Switch = Field(default=True, description="Auto-resume flows unless overridden.")
    max_attempts: _Attempts = Field(
        default=2, description="Resume runs allowed per original failure (lineage)."
    )


class FlowEntry(BaseModel):
    """One watched flow, identified by its metaflow-dagster definitions file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    definitions_file: Path = Field(
        description="File made by `python <flow>.py dagster create <file>`; "
        "relative to the policy file's directory."
    )
    enabled: _Switch | None = Field(default=None, description="Overrides defaults.enabled; null inherits it.")
    max_attempts: _Attempts | None = Field(
        default=None, description="Overrides defaults.max_attempts; null inherits it."
    )

    @field_validator("definitions_file")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        """Resolves against context["policy_dir"] (the cwd without a context)."""
        context = info.context if isinstance(info.context, dict) else {}
        return (Path(context.get("policy_dir", ".")) / value.expanduser()).resolve()


class EffectiveFlowSettings(BaseModel):
    """One flow's settings after merging kill switch, defaults and overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(description="Whether failed runs are auto-resumed.")
    max_attempts: int = Field(description="Resume runs allowed per original failure.")


class Policy(BaseModel):
    """Which Metaflow-on-Dagster flows to resume after failures, and how often."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = Field(description="Policy format version; must be 1.")
    enabled: _Switch = Field(default=True, description="Global kill switch.")
    sensor: SensorSettings = Field(default_factory=SensorSettings, description="Sensor settings.")
    defaults: Defaults = Field(default_factory=Defaults, description="Settings of flows without overrides.")
    flows: tuple[FlowEntry, ...] = Field(default=(), description="Watched flows; may be empty.")

    @field_validator("version", mode="before")
    @classmethod
    def _exact_version(cls, value: object) -> object:
        """Rejects `true` and `1.0`, which Literal[1] would accept."""
        if type(value) is not int:
            raise ValueError("Input should be 1")
        return value

    def settings_for(self, definitions_file: Path) -> EffectiveFlowSettings:
        """Returns the merged settings of a watched flow.

        Args:
            definitions_file: The flow's definitions file (relative to the cwd).

        Returns:
            Enabled only if the global switch and the flow (or default) allow it.

        Raises:
            KeyError: If no flow entry has this definitions file.
        """
        wanted = definitions_file.expanduser().resolve()
        for flow in self.flows:
            if flow.definitions_file == wanted:
                enabled = self.defaults.enabled if flow.enabled is None else flow.enabled
                attempts = flow.max_attempts
                if attempts is None:
                    attempts = self.defaults.max_attempts
                return EffectiveFlowSettings(enabled=self.enabled and enabled, max_attempts=attempts)
        raise KeyError(f"{wanted} is not listed under flows in the policy")


class _Problem(NamedTuple):
    what: str
    fix: str
    loc: _Loc | None = None  # None: not about one field (I/O or YAML syntax)
    line: int | None = None  # None: taken from loc via the YAML node tree
    column: int | None = None


_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): Policy,
    ("sensor",): SensorSettings,
    ("defaults",): Defaults,
    ("flows", "*"): FlowEntry,
}
_EXAMPLES = {
    "version": "1",
    "enabled": "true",
    "sensor": "{minimum_interval_seconds: 30}",
    "minimum_interval_seconds": "30",
    "default_status": "stopped",
    "defaults": "{max_attempts: 2}",
    "max_attempts": "2",
    "flows": "[{definitions_file: flows/my_flow_dagster.py}]",
    "definitions_file": "flows/my_flow_dagster.py",
}
_TYPE_WORDS = {
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "tuple_type": "expected a list",
    "model_type": "expected a mapping",
    "path_type": "expected a file path",
}


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


def _explain(err: ErrorDetails) -> _Problem:
    """Turns one pydantic error into a problem with a fix."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx", {})
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    name = loc[-1] if loc else ""
    sample = f"`{name}: {_EXAMPLES.get(str(name), '...')}`"
    if isinstance(name, int):
        sample = "`- definitions_file: flows/my_flow_dagster.py`"
    if kind == "extra_forbidden":
        parent = tuple("*" if isinstance(p, int) else p for p in loc[:-1])
        allowed = list(_MODEL_AT.get(parent, Policy).model_fields)
        close = difflib.get_close_matches(str(name), allowed, n=1)
        what = f"unknown field; allowed fields are: {', '.join(allowed)}"
        fix = f"rename it to `{close[0]}`" if close else "remove it"
    elif loc == ("version",) and kind != "missing":
        what, fix = f"unsupported version {got}; only 1 exists", "set `version: 1`"
    elif kind == "missing":
        what, fix = "required field is missing", f"add it, e.g. {sample}"
    elif kind == "greater_than_equal":
        what = f"must be >= {ctx['ge']} (got {got})"
        fix = f"set it to {ctx['ge']} or more, e.g. {sample}"
    elif kind == "literal_error":
        what = f"must be {ctx['expected']} (got {got})"
        fix = f"set it to {ctx['expected']}, e.g. {sample}"
    else:
        what = f"{_TYPE_WORDS.get(kind, err['msg'])} (got {got})"
        fix = f"write it like {sample}"
    return _Problem(what, fix, loc)


def _check_flows(policy: Policy, policy_dir: Path) -> list[_Problem]:
    """Checks that definitions files exist and are listed once each."""
    problems: list[_Problem] = []
    seen: dict[Path, int] = {}
    for i, entry in enumerate(policy.flows):
        loc: _Loc = ("flows", i, "definitions_file")
        path = entry.definitions_file
        if path in seen:
            what = f"{path} is already listed as flows[{seen[path]}]"
            fix = "remove one of the two entries, or merge their settings"
            problems.append(_Problem(what, fix, loc))
        elif not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            what = f"definitions file {path} {state} (resolved against {policy_dir})"
            fix = f"generate it with `python <flow>.py dagster create {path}`"
            problems.append(_Problem(what, fix + ", or fix the path", loc))
        seen.setdefault(path, i)
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


def load_policy(path: Path | None = None) -> Policy:
    """Reads and validates a policy file.

    Args:
        path: The policy file; None means `default_policy_path()`.

    Returns:
        The validated policy, with every `definitions_file` absolute and resolved.

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
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        fix = "make it a readable UTF-8 text file"
        raise _fail(path, [_Problem(f"cannot read the file: {exc}", fix)]) from exc
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
    if problems := _check_flows(policy, policy_dir):
        raise _fail(path, problems, root)
    return policy


def policy_json_schema() -> dict[str, Any]:
    """Returns the JSON Schema of the policy file, for editors and validation tools.

    Returns:
        `Policy.model_json_schema()` with `$schema` and `title` set.
    """
    schema = Policy.model_json_schema()
    schema["title"] = "auto-resume policy"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# Regenerate the committed schema with: python -m auto_resume.policy > policy.schema.json
if __name__ == "__main__":
    sys.stdout.write(json.dumps(policy_json_schema(), indent=2) + "\n")
