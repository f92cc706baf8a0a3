"""The per-flow settings of the policy file: backoff, error rules, time windows, hooks.

Frozen pydantic models, validated once when the policy is loaded; `auto_resume.policy.loading` puts
them together and reports every problem with its file, line and fix. A `ValueError` raised by a
validator here reads ``"<what>; fix: <how>"``: the loader splits it into the two parts.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

Switch = Annotated[bool, Field(strict=True)]  # strict: reject "yes", 1, ...
Attempts = Annotated[int, Field(ge=0, strict=True)]  # strict: reject "2", 2.5, true
Seconds = Annotated[float, Field(ge=0, strict=True)]
Mode = Literal["act", "observe"]
# What becomes of a failure given up as deterministic: given up for good, or parked until the
# flow's code changes, then resumed once (auto_resume.dagster.parking).
OnCodeChange = Literal["give_up", "resume"]
ON_CODE_CHANGE_DESCRIPTION = (
    "`resume`: a failure given up as deterministic (an error rule says never, max_attempts spent "
    "failing the same way, stop_on_same_failure) is parked instead, and resumed once, with a fresh "
    "attempt budget, when the flow's code fingerprint changes; `give_up`: given up for good."
)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Dagster's RunFailureReason values, lower-cased. unexpected_termination: the run worker died.
FailureReason = Literal[
    "step_failure",
    "run_exception",
    "unexpected_termination",
    "job_initialization_failure",
    "start_timeout",
    "run_worker_restart",
    "unknown",
]
RESERVED_TAG_PREFIXES = ("auto_resume/", "dagster/", ".dagster/")
_TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def check_glob(value: str) -> str:
    """Rejects an empty glob or one with an unclosed ``[`` (fnmatch would read it literally)."""
    if not value:
        raise ValueError("empty pattern; fix: write a name or a glob such as `Train*`")
    depth_ok = True
    i = 0
    while i < len(value):
        if value[i] == "[":
            close = value.find("]", i + 2 if value[i + 1 : i + 2] in ("!", "]") else i + 1)
            if close == -1:
                depth_ok = False
                break
            i = close
        i += 1
    if not depth_ok:
        raise ValueError(
            f"glob {value!r} has an unclosed `[`; fix: close the character class, e.g. `Train[0-9]*`, "
            "or write `[[]` for a literal `[`"
        )
    return value


class Backoff(BaseModel):
    """How long to wait before a resume: ``initial * multiplier**(attempt-1)``, capped, plus jitter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_seconds: Seconds = Field(
        default=0, description="Wait before the first resume of a failure.", examples=[60]
    )
    multiplier: float = Field(
        default=2, ge=1, strict=True, description="Factor applied per further attempt.", examples=[2]
    )
    max_seconds: Seconds = Field(
        default=3600, description="Upper bound of the wait before jitter.", examples=[3600]
    )
    jitter_seconds: Seconds = Field(
        default=0,
        description="Up to this much is added, fixed per failed run (spreads a burst).",
        examples=[30],
    )


def _one_or_many(value: object) -> object:
    """A single text where a list is expected reads as a list of one."""
    return (value,) if isinstance(value, str) else value


# How a resume may run differently from the origin (`metaflow resume --with/--tag`, a run timeout).
# `Defaults` holds them per flow; an `ErrorRule` adds its own for the failures it matches.
WITH_FIELD = Field(
    default=(),
    alias="with",
    description="Decorator specs injected into every task a resume executes, not into clones, as "
    "`metaflow resume --with` (a step with its own decorator of that name keeps it); only "
    "allowed_decorators.",
    examples=[["resources:memory=32000"]],
)
METAFLOW_TAGS_FIELD = Field(
    default=(),
    description="Metaflow tags of the Metaflow run a resume makes (`metaflow resume --tag`).",
    examples=[["resumed-after-oom"]],
)
MAX_RUNTIME_FIELD = Field(
    default=None,
    ge=1,
    strict=True,
    description="A resume run still at work after this many seconds is stopped (Dagster's "
    "dagster/max_runtime tag; needs run_monitoring in dagster.yaml).",
    examples=[7200],
)


class ErrorRule(BaseModel):
    """Resume or never resume failures that match; every condition given must match.

    A ``resume`` rule may also say how that resume runs: ``with``, ``metaflow_tags``,
    ``max_runtime_seconds`` (added to the flow's own) and ``from_step``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    action: Literal["resume", "never"] = Field(
        description="`never` gives the failure up at once.", examples=["never"]
    )
    reason: tuple[FailureReason, ...] | None = Field(
        default=None,
        description="Dagster failure reasons, e.g. step_failure, unexpected_termination (run worker "
        "crash), start_timeout; one or a list.",
        examples=[["step_failure", "unexpected_termination"]],
    )
    step: str | None = Field(
        default=None, description="Failing Metaflow step name, exact or glob.", examples=["train*"]
    )
    exception: str | None = Field(
        default=None,
        description="Exception class name (e.g. `MemoryError`), exact or glob.",
        examples=["MemoryError"],
    )
    message: str | None = Field(
        default=None,
        description="Regular expression searched in the error message.",
        examples=[r"timed out after \d+ s"],
    )
    with_: tuple[str, ...] = WITH_FIELD
    metaflow_tags: tuple[str, ...] = METAFLOW_TAGS_FIELD
    max_runtime_seconds: int | None = MAX_RUNTIME_FIELD
    from_step: str | None = Field(
        default=None,
        description="Re-run this Metaflow step and every step after it, even where they completed.",
        examples=["start"],
    )
    on_code_change: OnCodeChange | None = Field(
        default=None,
        description=ON_CODE_CHANGE_DESCRIPTION + " Null: the flow's `on_code_change`.",
        examples=["resume"],
    )

    @field_validator("reason", "with_", "metaflow_tags", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return _one_or_many(value)

    @field_validator("step", "exception")
    @classmethod
    def _glob(cls, value: str | None) -> str | None:
        return None if value is None else check_glob(value)

    @field_validator("message")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"invalid regular expression {value!r}: {exc}; fix: correct it, or escape "
                    "special characters with a backslash (in YAML, use single quotes: '\\d+')"
                ) from None
        return value

    @model_validator(mode="after")
    def _has_condition(self) -> ErrorRule:
        if (self.reason, self.step, self.exception, self.message) == (None, None, None, None):
            raise ValueError(
                "the rule matches every failure; fix: add `reason`, `step`, `exception` or `message`, "
                "or use `enabled` / `max_attempts` to stop all resumes"
            )
        changes = [
            name
            for name, value in (
                ("with", self.with_),
                ("metaflow_tags", self.metaflow_tags),
                ("max_runtime_seconds", self.max_runtime_seconds),
                ("from_step", self.from_step),
            )
            if value
        ]
        if self.action == "never" and changes:
            raise ValueError(
                f"a `never` rule launches no resume, so its {', '.join(changes)} would never apply; "
                "fix: use `action: resume`, or remove them"
            )
        return self


def _clock(value: object, field: str) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f'YAML read an unquoted time as the number {value}; fix: quote it, e.g. `{field}: "18:00"`'
        )
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected a time HH:MM (got {value!r}); fix: write it like `{field}: "08:30"`')
    return dt.time(int(match.group(1)), int(match.group(2)))


class AllowedHours(BaseModel):
    """Resumes may start on these days between ``start`` and ``end`` (local time, end excluded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    days: tuple[Weekday, ...] = Field(
        default=WEEKDAYS, description="Days, e.g. [mon, tue, wed, thu, fri].", examples=[WEEKDAYS[:5]]
    )
    start: dt.time = Field(description='Local time "HH:MM" (quoted) the window opens.', examples=["08:00"])
    end: dt.time = Field(
        description='Local time "HH:MM" (quoted) it closes; before start means overnight.',
        examples=["20:00"],
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse(cls, value: object, info: Any) -> dt.time:
        return _clock(value, info.field_name)

    @model_validator(mode="after")
    def _not_empty(self) -> AllowedHours:
        if self.start == self.end:
            raise ValueError(
                "start equals end, so the window is empty; fix: make them differ "
                '(for all day, leave `allowed` out, or use start "00:00" end "23:59")'
            )
        return self


def _moment(value: object) -> object:
    if isinstance(value, dt.datetime | str):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    raise ValueError(f"expected a date-time (got {value!r}); fix: write it like `start: 2026-12-24 18:00:00`")


class Blackout(BaseModel):
    """A period in which no resume starts (local time unless an offset is given; end excluded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: dt.datetime = Field(
        description="First moment, e.g. 2026-12-24 18:00:00 (a date means 00:00).",
        examples=[dt.datetime(2026, 12, 24)],
    )
    end: dt.datetime = Field(
        description="First moment after the blackout.", examples=[dt.datetime(2026, 12, 27)]
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        return _moment(value)

    @model_validator(mode="after")
    def _ordered(self) -> Blackout:
        if self.end.replace(tzinfo=None) <= self.start.replace(tzinfo=None) and (
            (self.end.tzinfo is None) == (self.start.tzinfo is None)
        ):
            raise ValueError(f"end {self.end} is not after start {self.start}; fix: swap or correct them")
        return self


class Windows(BaseModel):
    """When resumes may start; a resume due outside them waits for the next allowed moment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = Field(
        default="UTC",
        description="IANA time zone of the times below, e.g. Europe/Paris.",
        examples=["Europe/Paris"],
    )
    allowed: tuple[AllowedHours, ...] = Field(
        default=(),
        description="Allowed hours; empty means at any time (blackouts still apply).",
        examples=[[{"days": list(WEEKDAYS[:5]), "start": "08:00", "end": "20:00"}]],
    )
    blackouts: tuple[Blackout, ...] = Field(
        default=(),
        description="Periods in which nothing starts.",
        examples=[[{"start": dt.datetime(2026, 12, 24), "end": dt.datetime(2026, 12, 27)}]],
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; fix: use an IANA name such as `UTC`, `Europe/Paris` "
                "or `America/New_York`"
            ) from None
        return value


class Hook(BaseModel):
    """A command or a Python callable told of an event; its failure is logged, never retried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="argv run without a shell, with the hook's values in its environment.",
        examples=[["/usr/local/bin/notify-oncall"]],
    )
    callable: str | None = Field(
        default=None,
        description="`module:function` called with a dict of the same values.",
        examples=["my_alerts:notify"],
    )
    timeout_seconds: float = Field(
        default=30, gt=0, strict=True, description="Time limit of the command.", examples=[30]
    )

    @field_validator("callable")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _CALLABLE.match(value):
            raise ValueError(f"expected `module:function` (got {value!r}); fix: e.g. `my_alerts:notify`")
        module_name, name = value.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"cannot import {module_name!r}: {exc}; fix: install it or correct the module name"
            ) from None
        if not callable(getattr(module, name, None)):
            raise ValueError(f"{module_name} has no function {name!r}; fix: correct the name")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Hook:
        if (self.command is None) == (self.callable is None):
            raise ValueError(
                "give exactly one of `command` and `callable`; fix: e.g. "
                "`{command: [/usr/local/bin/page-oncall]}`"
            )
        return self


class Breaker(BaseModel):
    """A storm breaker: when ``failures`` failures of one scope arrive within ``window_seconds``,
    resumes in that scope stop for ``cooldown_seconds``; then one resume is tried, and a failure
    of the same scope opens the breaker again. Failures wait meanwhile (nothing is lost)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: int = Field(ge=2, strict=True, description="Failures that open the breaker.", examples=[20])
    window_seconds: float = Field(
        gt=0, strict=True, description="Within this many seconds of each other.", examples=[300]
    )
    scope: Literal["fingerprint", "flow", "all"] = Field(
        default="fingerprint",
        description="What counts together: `fingerprint` (exception class and normalised message, "
        "across flows), `flow` (each flow's failures), `all`.",
        examples=["fingerprint"],
    )
    cooldown_seconds: float = Field(
        gt=0, strict=True, description="How long resumes in that scope stop.", examples=[900]
    )
    on_open: Hook | None = Field(
        default=None,
        description="Called once each time the breaker opens; AUTO_RESUME_EVENT=breaker_opened, "
        "AUTO_RESUME_BREAKER, AUTO_RESUME_REASON, AUTO_RESUME_RUN_ID (the failure that opened it), "
        "AUTO_RESUME_JOB_NAME, AUTO_RESUME_UNTIL are set.",
        examples=[{"command": ["/usr/local/bin/page-oncall"]}],
    )


def check_tags(value: dict[str, str] | None) -> dict[str, str] | None:
    """Rejects tag keys Dagster refuses and keys in the namespaces auto-resume or Dagster own."""
    for key in value or {}:
        if key.startswith(RESERVED_TAG_PREFIXES):
            raise ValueError(
                f"tag {key!r} is in a reserved namespace ({', '.join(RESERVED_TAG_PREFIXES)}); "
                "fix: use your own prefix, e.g. `team/owner`"
            )
        if not _TAG_KEY.match(key):
            raise ValueError(
                f"tag key {key!r} is not valid in Dagster; fix: letters, digits, `_`, `-`, `.`, at most "
                "one `/` (prefix/name), 63 characters per part"
            )
    return value


class _FlowSettingsModel(BaseModel):
    """What `Defaults` and `Overrides` share: the config and the checks of ``tags`` and lists."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("tags", check_fields=False)
    @classmethod
    def _valid_tags(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_tags(value)

    @field_validator("with_", "metaflow_tags", mode="before", check_fields=False)
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return _one_or_many(value)


# Every per-flow setting is declared here, once: `Overrides` is built from these fields.
class Defaults(_FlowSettingsModel):
    """Settings of every flow that does not override them."""

    enabled: Switch = Field(default=True, description="Auto-resume flows unless overridden.", examples=[True])
    mode: Mode = Field(
        default="act", description="`observe`: record every decision, launch nothing.", examples=["observe"]
    )
    max_attempts: Attempts = Field(
        default=2, description="Resume runs allowed per original failure (lineage).", examples=[2]
    )
    backoff: Backoff = Field(
        default_factory=Backoff,
        description="Wait before each resume.",
        examples=[{"initial_seconds": 60, "multiplier": 2, "max_seconds": 3600}],
    )
    errors: tuple[ErrorRule, ...] = Field(
        default=(),
        description="Error rules; the first that matches decides; none matching: resume.",
        examples=[[{"action": "never", "exception": "MemoryError"}]],
    )
    stop_on_same_failure: Switch = Field(
        default=False,
        description="Give up when a resume fails like the attempt before it (step, exception, message).",
        examples=[True],
    )
    max_failure_age_seconds: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Failures older than this when first seen are skipped.",
        examples=[86400],
    )
    windows: Windows | None = Field(
        default=None,
        description="When resumes may start; null: any time.",
        examples=[{"timezone": "Europe/Paris", "allowed": [{"start": "08:00", "end": "20:00"}]}],
    )
    max_resumes_in_flight: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Resume runs of one flow queued or running at once.",
        examples=[10],
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Dagster tags added to resume runs.",
        examples=[{"team/owner": "ml-platform"}],
    )
    with_: tuple[str, ...] = WITH_FIELD
    metaflow_tags: tuple[str, ...] = METAFLOW_TAGS_FIELD
    max_runtime_seconds: int | None = MAX_RUNTIME_FIELD
    breaker: Breaker | None = Field(
        default=None,
        description="A storm breaker over this flow's failures only.",
        examples=[{"failures": 10, "window_seconds": 300, "cooldown_seconds": 900}],
    )
    on_code_change: OnCodeChange = Field(
        default="give_up", description=ON_CODE_CHANGE_DESCRIPTION, examples=["resume"]
    )


# Settings that an override adds to, key by key, instead of replacing them.
MERGED_KEY_BY_KEY = frozenset({"tags"})


def _optional(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """``field`` of `Defaults` as an override: the same type and checks, or null to inherit."""
    inner: Any = field.annotation
    if field.metadata:  # the constraints, e.g. ge=1, strict
        inner = Annotated[(inner, *field.metadata)]
    verb = "Added to (and win over)" if name in MERGED_KEY_BY_KEY else "Replaces"
    override = Field(
        default=None,
        alias=field.alias,
        description=f"{verb} defaults.{field.alias or name}; null inherits it.",
        examples=field.examples,
    )
    return inner | None, override


if TYPE_CHECKING:  # mypy cannot follow create_model: the generated fields are read with getattr
    Overrides = _FlowSettingsModel
else:
    Overrides = create_model(
        "Overrides",
        __base__=_FlowSettingsModel,
        __module__=__name__,
        __doc__="Settings that replace the defaults; every field is optional (null inherits).",
        **{name: _optional(name, field) for name, field in Defaults.model_fields.items()},
    )

OVERRIDABLE = tuple(Defaults.model_fields)
