"""What a resume changes in how the flow runs: injected decorators, Metaflow tags, a time limit, a
step to re-run from; and which policy settings asked for it. Pure data.

The flow's settings (``defaults`` / ``overrides`` / its entry) give the base; the error rule that
matched the failure adds its own: its specs replace the flow's of the same decorator, its tags
join the flow's, its time limit and ``from_step`` win. They apply to the one resume that rule
decided: the next failure is matched again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from auto_resume.policy.settings import Defaults, ErrorRule


@dataclass(frozen=True)
class ResumeChanges:
    """How one resume runs differently from its origin."""

    with_specs: tuple[str, ...] = ()
    metaflow_tags: tuple[str, ...] = ()
    max_runtime_seconds: int | None = None
    from_step: str | None = None
    because: tuple[str, ...] = ()  # the policy settings that asked, e.g. ("flow settings", "errors[0]")

    def __bool__(self) -> bool:
        return bool(self.with_specs or self.metaflow_tags or self.max_runtime_seconds or self.from_step)

    def describe(self) -> str:
        """One line, e.g. ``with resources:memory=32000; from step start (errors[0])``; '' if none."""
        parts = []
        if self.with_specs:
            parts.append("with " + " ".join(self.with_specs))
        if self.metaflow_tags:
            parts.append("Metaflow tags " + " ".join(self.metaflow_tags))
        if self.max_runtime_seconds:
            parts.append(f"max runtime {self.max_runtime_seconds}s")
        if self.from_step:
            parts.append(f"from step {self.from_step}")
        if not parts:
            return ""
        why = f" ({', '.join(self.because)})" if self.because else ""
        return "; ".join(parts) + why

    def as_json(self) -> str:
        """The changes and their reason, as recorded on the resume run (tag ``auto_resume/changes``)."""
        data: dict[str, Any] = {
            "with": list(self.with_specs),
            "metaflow_tags": list(self.metaflow_tags),
            "max_runtime_seconds": self.max_runtime_seconds,
            "from_step": self.from_step,
            "because": list(self.because),
        }
        return json.dumps({key: value for key, value in data.items() if value}, sort_keys=True)


def changes_for(settings: Defaults, rule: tuple[int, ErrorRule] | None = None) -> ResumeChanges:
    """The changes of a resume decided under ``settings``, after error rule ``rule`` matched.

    Args:
        settings: The flow's effective settings.
        rule: The matching rule and its index in ``errors``; None when none matched.
    """
    flow = _from_settings(settings, "flow settings")
    if rule is None:
        return flow
    return merge_changes(flow, _from_settings(rule[1], f"errors[{rule[0]}]", rule[1].from_step))


def _from_settings(settings: Defaults | ErrorRule, name: str, from_step: str | None = None) -> ResumeChanges:
    changes = ResumeChanges(settings.with_, settings.metaflow_tags, settings.max_runtime_seconds, from_step)
    return replace(changes, because=(name,)) if changes else changes


def merge_changes(base: ResumeChanges, top: ResumeChanges) -> ResumeChanges:
    """``top`` over ``base``: its specs replace those of the same decorator, its tags join, its
    time limit and from_step win where it has them."""
    specs = {spec_name(spec): spec for spec in base.with_specs}
    specs.update({spec_name(spec): spec for spec in top.with_specs})
    return ResumeChanges(
        with_specs=tuple(specs.values()),
        metaflow_tags=tuple(dict.fromkeys((*base.metaflow_tags, *top.metaflow_tags))),
        max_runtime_seconds=top.max_runtime_seconds or base.max_runtime_seconds,
        from_step=top.from_step or base.from_step,
        because=tuple(dict.fromkeys((*base.because, *top.because))),
    )


def spec_name(spec: str) -> str:
    """The decorator name of a spec (``retry:times=1`` -> ``retry``)."""
    return spec.split(":", 1)[0].strip()
