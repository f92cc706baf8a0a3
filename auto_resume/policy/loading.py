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
import re
import sys
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from auto_resume.policy.settings import (
    OVERRIDABLE,
    Defaults,
    GiveUpHook,
    Overrides,
    Switch,
    check_glob,
)

POLICY_ENV_VAR = "AUTO_RESUME_POLICY"
_Loc = tuple[int | str, ...]


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


class FlowEntry(Overrides):
    """One watched flow and its overrides.

    Either a metaflow-dagster definitions file (the flow's job lives in that file's code
    location), or a flow file whose job auto-resume builds in its own code location.
    """

    definitions_file: Path | None = Field(
        default=None,
        description="File made by `python <flow>.py dagster create <file>`; "
        "relative to the policy file's directory.",
    )
    flow_file: Path | None = Field(
        default=None,
        description="Instead of definitions_file: a Metaflow flow file; auto-resume builds its job "
        "(named after the flow) in the auto_resume code location. Relative to the policy file's "
        "directory.",
    )
    flow_class: str | None = Field(
        default=None,
        description="With flow_file: the flow class to run, when the file defines several.",
    )
    job_name: str | None = Field(
        default=None,
        description="With flow_file: the Dagster job's name (default: the flow's name).",
    )

    @field_validator("definitions_file", "flow_file")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Resolves against context["policy_dir"] (the cwd without a context)."""
        if value is None:
            return None
        context = info.context if isinstance(info.context, dict) else {}
        return (Path(context.get("policy_dir", ".")) / value.expanduser()).resolve()

    @field_validator("job_name")
    @classmethod
    def _job_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                f"{value!r} is not a Dagster job name; fix: use letters, digits and '_' only, "
                "not starting with a digit"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FlowEntry:
        if (self.definitions_file is None) == (self.flow_file is None):
            both = "both" if self.definitions_file is not None else "neither"
            raise ValueError(
                f"the entry has {both} `definitions_file` and `flow_file`; fix: give exactly one: "
                "`definitions_file: flows/my_flow_dagster.py` or `flow_file: flows/my_flow.py`"
            )
        if self.definitions_file is not None and (self.flow_class or self.job_name):
            raise ValueError(
                "`flow_class` and `job_name` go with `flow_file` only; fix: remove them (a "
                "definitions file names its flow and job), or use `flow_file`"
            )
        return self

    @property
    def source(self) -> Path:
        """The file the entry names (definitions file or flow file), absolute."""
        source = self.definitions_file or self.flow_file
        assert source is not None  # _one_source
        return source

    @property
    def source_field(self) -> str:
        """``definitions_file`` or ``flow_file``: the field that names the entry's file."""
        return "definitions_file" if self.definitions_file is not None else "flow_file"


class JobOverride(Overrides):
    """Overrides for every watched flow whose Dagster job name matches ``job``."""

    job: str = Field(description="Dagster job name of the flow, exact or glob (`Train*`).")

    @field_validator("job")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_glob(value)


class EffectiveFlowSettings(Defaults):
    """One flow's settings after merging kill switch, defaults, job overrides and its entry."""


class Policy(BaseModel):
    """Which Metaflow-on-Dagster flows to resume after failures, when, and how often."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = Field(description="Policy format version; must be 1.")
    enabled: Switch = Field(default=True, description="Global kill switch: false resumes nothing.")
    sensor: SensorSettings = Field(default_factory=SensorSettings, description="Sensor settings.")
    max_resumes_in_flight: int | None = Field(
        default=None, ge=1, strict=True, description="Resume runs of all flows queued or running at once."
    )
    on_give_up: GiveUpHook | None = Field(
        default=None, description="Notification hook called once per failed run given up."
    )
    defaults: Defaults = Field(default_factory=Defaults, description="Settings of flows without overrides.")
    overrides: tuple[JobOverride, ...] = Field(
        default=(), description="Overrides by job name, applied in order after the defaults."
    )
    flows: tuple[FlowEntry, ...] = Field(default=(), description="Watched flows; may be empty.")

    @field_validator("version", mode="before")
    @classmethod
    def _exact_version(cls, value: object) -> object:
        """Rejects `true` and `1.0`, which Literal[1] would accept."""
        if type(value) is not int:
            raise ValueError("Input should be 1")
        return value

    def settings_for(self, definitions_file: Path, job_name: str | None = None) -> EffectiveFlowSettings:
        """Returns the merged settings of a watched flow.

        Each layer replaces only the fields it sets: ``defaults``, then every ``overrides``
        entry whose ``job`` matches ``job_name`` (in file order), then the flow's own entry;
        ``tags`` are merged key by key instead. The global ``enabled: false`` wins over all.

        Args:
            definitions_file: The file of the flow's entry: its definitions file, or its flow
                file for a ``flow_file`` entry (relative to the cwd).
            job_name: The flow's Dagster job name, for ``overrides``; None applies none.

        Returns:
            The effective settings of the flow.

        Raises:
            KeyError: If no flow entry names this file.
        """
        wanted = definitions_file.expanduser().resolve()
        for flow in self.flows:
            if flow.source == wanted:
                layers: list[Overrides] = [
                    o for o in self.overrides if job_name is not None and fnmatchcase(job_name, o.job)
                ]
                merged = {name: getattr(self.defaults, name) for name in Defaults.model_fields}
                for layer in [*layers, flow]:
                    for name in OVERRIDABLE:
                        value = getattr(layer, name)
                        if value is None:
                            continue
                        merged[name] = {**merged["tags"], **value} if name == "tags" else value
                merged["enabled"] = self.enabled and merged["enabled"]
                return EffectiveFlowSettings.model_validate(merged)
        raise KeyError(f"{wanted} is not listed under flows in the policy")


class _Problem(NamedTuple):
    what: str
    fix: str
    loc: _Loc | None = None  # None: not about one field (I/O or YAML syntax)
    line: int | None = None  # None: taken from loc via the YAML node tree
    column: int | None = None


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
    "flow_file": "flows/my_flow.py",
    "flow_class": "MyFlow",
    "job_name": "MyFlow",
    "overrides": '[{job: "Train*", max_attempts: 5}]',
    "job": '"Train*"',
    "mode": "observe",
    "backoff": "{initial_seconds: 60, multiplier: 2, max_seconds: 3600}",
    "initial_seconds": "60",
    "multiplier": "2",
    "max_seconds": "3600",
    "jitter_seconds": "30",
    "errors": "[{action: never, exception: MemoryError}]",
    "action": "never",
    "reason": "[step_failure, unexpected_termination]",
    "step": '"train*"',
    "exception": "MemoryError",
    "message": "'timed out after \\d+ s'",
    "stop_on_same_failure": "true",
    "max_failure_age_seconds": "86400",
    "max_resumes_in_flight": "10",
    "windows": '{timezone: Europe/Paris, allowed: [{start: "08:00", end: "20:00"}]}',
    "timezone": "Europe/Paris",
    "allowed": '[{days: [mon, tue, wed, thu, fri], start: "08:00", end: "20:00"}]',
    "days": "[mon, tue, wed, thu, fri]",
    "blackouts": "[{start: 2026-12-24 00:00:00, end: 2026-12-27 00:00:00}]",
    "start": '"08:00"',
    "end": '"20:00"',
    "tags": "{team/owner: ml-platform}",
    "on_give_up": "{command: [/usr/local/bin/notify-oncall]}",
    "command": "[/usr/local/bin/notify-oncall]",
    "callable": "my_alerts:notify",
    "timeout_seconds": "30",
}
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


def _model_at(loc: _Loc) -> type[BaseModel]:
    """The model that holds the field at ``loc`` (list indices skipped)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue
        inner = _model_of(model.model_fields[part].annotation)
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


def _explain(err: ErrorDetails) -> _Problem:
    """Turns one pydantic error into a problem with a fix."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx", {})
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    names = [p for p in loc if isinstance(p, str)]
    name = names[-1] if names else ""
    sample = f"`{name}: {_EXAMPLES.get(name, '...')}`"
    if loc and loc[-1] == 0 and name == "flows":
        sample = "`- definitions_file: flows/my_flow_dagster.py`"
    if kind == "extra_forbidden":
        fields = _model_at(loc[:-1]).model_fields
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


def _check_flows(policy: Policy, policy_dir: Path) -> list[_Problem]:
    """Checks that the files entries name exist and are listed once each."""
    problems: list[_Problem] = []
    seen: dict[Path, int] = {}
    for i, entry in enumerate(policy.flows):
        loc: _Loc = ("flows", i, entry.source_field)
        path = entry.source
        if path in seen:
            what = f"{path} is already listed as flows[{seen[path]}]"
            fix = "remove one of the two entries, or merge their settings"
            problems.append(_Problem(what, fix, loc))
        elif not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            if entry.definitions_file is not None:
                what = f"definitions file {path} {state} (resolved against {policy_dir})"
                fix = f"generate it with `python <flow>.py dagster create {path}`, or fix the path"
            else:
                what = f"flow file {path} {state} (resolved against {policy_dir})"
                fix = "fix the path (it is relative to the policy file's directory)"
            problems.append(_Problem(what, fix, loc))
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


def salvage_policy(path: Path) -> Policy:
    """What can still be used of an invalid policy file: its flows and sensor settings.

    Used when the code location is (re)loaded while the file is invalid, so that the resume
    jobs and the sensor stay loaded and the sensor's ticks show the error from
    :func:`load_policy` until it is fixed. Every other setting is left at its default; the
    sensor never acts on this object, it re-reads the file on every tick.

    Args:
        path: The policy file.

    Returns:
        A policy holding the flow entries whose definitions files exist and, if that part is
        valid, the sensor's interval, with the sensor running by default; nothing else.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None
    data = data if isinstance(data, dict) else {}
    policy_dir = path.absolute().parent.resolve()
    flows = []
    raw_flows = data.get("flows")
    for raw in raw_flows if isinstance(raw_flows, list) else []:
        for key in ("definitions_file", "flow_file"):
            value = raw.get(key) if isinstance(raw, dict) else None
            if isinstance(value, str) and (policy_dir / value).expanduser().is_file():
                extra = {k: raw[k] for k in ("flow_class", "job_name") if key == "flow_file" and k in raw}
                flows.append({key: value, **extra})
                break
    try:
        sensor = SensorSettings.model_validate(data.get("sensor") or {})
    except ValidationError:
        sensor = SensorSettings()
    # Running, whatever the file says: a running sensor on an invalid policy only fails its
    # ticks with the message (it launches nothing), while a default flipped to stopped would
    # silence the error. A stop set in the UI still wins.
    sensor = sensor.model_copy(update={"default_status": "running"})
    return Policy.model_validate(
        {"version": 1, "sensor": sensor.model_dump(), "flows": flows},
        context={"policy_dir": policy_dir},
    )


def policy_json_schema() -> dict[str, Any]:
    """Returns the JSON Schema of the policy file, for editors and validation tools.

    Returns:
        `Policy.model_json_schema()` with `$schema` and `title` set.
    """
    schema = Policy.model_json_schema()
    schema["title"] = "auto-resume policy"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# Regenerate the committed schema with: python -m auto_resume.policy.loading > policy.schema.json
if __name__ == "__main__":
    sys.stdout.write(json.dumps(policy_json_schema(), indent=2) + "\n")
