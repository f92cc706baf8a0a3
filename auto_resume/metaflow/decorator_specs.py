"""Decorator specs injected at resume time (``metaflow resume --with``), checked and applied.

A spec reads ``name`` or ``name:attribute=value,attribute=value`` and is parsed by Metaflow
itself, so an unknown decorator or attribute is refused with Metaflow's own words. Injection
follows Metaflow's rule for ``--with``: a step that already has a decorator of that name keeps
its own, and the injected one is ignored there. What Metaflow's runtime (not the task) does
for a decorator is done here, as metaflow-dagster does it for the decorators it compiles:
``runtime_step_cli`` (``@environment`` sets variables that way) and ``@retry``'s attempts.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from auto_resume.core.resume_changes import spec_name

# What a resume may inject unless the policy's ``allowed_decorators`` says otherwise.
DEFAULT_ALLOWED_DECORATORS = ("retry", "resources", "timeout", "environment")
# Metaflow splits a spec's attributes on commas followed by ``name=``.
_ATTRIBUTE_SPLIT = re.compile(r",(?=[\s\w]+=)")
_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def spec_problem(spec: object, allowed: Collection[str]) -> str | None:
    """What is wrong with one injected spec, as ``"<what>; fix: <how>"``; None when it is valid.

    Args:
        spec: The spec as written (a policy's ``with`` item, or run config).
        allowed: The policy's ``allowed_decorators``.
    """
    if not isinstance(spec, str) or not spec.strip():
        return f"{spec!r} is not a decorator spec; fix: write it like `resources:memory=32000`"
    name, _, attributes = spec.partition(":")
    if not _NAME.match(name):
        return f"{spec!r} does not start with a decorator name; fix: write it like `retry:times=2`"
    if name not in allowed:
        return (
            f"decorator {name!r} is not in the policy's allowed_decorators ({', '.join(allowed) or 'none'}); "
            f"fix: remove {spec!r}, or add {name!r} to allowed_decorators in the policy"
        )
    for part in _ATTRIBUTE_SPLIT.split(attributes) if attributes else ():
        key, equals, value = part.partition("=")
        if not equals or not key.strip() or not value.strip():
            return (
                f"{spec!r}: attribute {part!r} has no value; fix: write `attribute=value`, "
                f"e.g. `{name}:{key.strip() or 'attribute'}=...`, or drop the `:` part"
            )
    try:
        decorator = _parse(spec)
    except Exception as exc:  # Metaflow's own refusal: unknown decorator, attribute...
        headline = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{spec!r}: Metaflow refuses it: {headline}; fix: correct the spec"
    attrs = getattr(decorator, "attributes", {}) or {}
    for key, default in (getattr(decorator, "defaults", {}) or {}).items():
        if isinstance(default, dict) and not isinstance(attrs.get(key), dict):
            return f'{spec!r}: {key} must be a JSON mapping; fix: e.g. `{name}:{key}={{"NAME": "value"}}`'
    return None


def allowed_problem(name: object) -> str | None:
    """What is wrong with one ``allowed_decorators`` entry; None when Metaflow knows the decorator."""
    from auto_resume.metaflow.deployment import UNSUPPORTED_STEP_DECORATORS

    if not isinstance(name, str) or not _NAME.match(name):
        return f"{name!r} is not a decorator name; fix: e.g. `retry`"
    if name in UNSUPPORTED_STEP_DECORATORS:
        return (
            f"@{name} changes how a step is launched, which auto-resume cannot do: it runs steps "
            f"as local subprocesses; fix: remove {name!r}"
        )
    try:
        _parse(name)
    except Exception as exc:
        headline = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{name!r} is not a Metaflow step decorator ({headline}); fix: correct the name"
    return None


def tags_problem(tags: Sequence[object]) -> str | None:
    """What Metaflow refuses in these run tags (type, length, count); None when it takes them."""
    from metaflow.exception import MetaflowException
    from metaflow.tagging_util import validate_tags

    try:
        validate_tags(list(tags))
    except MetaflowException as exc:
        return f"Metaflow refuses these tags: {exc}; fix: use short, non-empty text tags"
    return None


def _parse(spec: str) -> Any:
    from metaflow.decorators import extract_step_decorator_from_decospec

    return extract_step_decorator_from_decospec(spec)[0]


@dataclass(frozen=True)
class Injection:
    """How the injected specs change one step's executed tasks."""

    specs: tuple[str, ...] = ()  # passed to the task as --with
    ignored: tuple[str, ...] = ()  # the step has a decorator of that name: its own wins
    env: dict[str, str] = field(default_factory=dict)  # set by runtime_step_cli (@environment)
    user_code_retries: int | None = None  # from an injected @retry
    retry_delay_seconds: float = 0.0


class _CliArgs:
    """What ``runtime_step_cli`` may change; only ``env`` is kept (the launch stays local)."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}
        self.top_level_args: list[str] = []
        self.commands: list[str] = []
        self.command_args: list[str] = []
        self.command_options: dict[str, Any] = {}
        self.entrypoint: list[str] = []


def injection_for(specs: Sequence[str], step_name: str, static_names: Collection[str]) -> Injection:
    """What ``specs`` do to the tasks of a step whose own decorators are ``static_names``.

    Args:
        specs: Valid specs (see `spec_problem`), in order; a later one of the same name wins.
        step_name: The step, for the decorators' hooks.
        static_names: Names of the decorators the step has in the flow or its deployment.
    """
    chosen: dict[str, str] = {}
    ignored: list[str] = []
    for spec in specs:
        name = spec_name(spec)
        if name in static_names:
            ignored.append(spec)
        else:
            chosen[name] = spec
    env: dict[str, str] = {}
    retries: int | None = None
    delay = 0.0
    for spec in chosen.values():
        decorator = _parse(spec)
        if not hasattr(decorator, "_step_name"):
            decorator._step_name = step_name
        if decorator.name == "retry":
            retries, _ = decorator.step_task_retry_count()
            delay = float(decorator.attributes.get("minutes_between_retries") or 0) * 60
        cli_args = _CliArgs()
        decorator.runtime_step_cli(cli_args, 0, 0, None)
        env.update({str(k): str(v) for k, v in cli_args.env.items()})
    return Injection(tuple(chosen.values()), tuple(ignored), env, retries, delay)
