"""The auto-resume policy file's models: what a valid policy holds, and each flow's settings.

`Policy` is the whole file; `FlowEntry` and `JobOverride` layer `Overrides` over the `Defaults`
(all in `auto_resume.policy.settings`), and `Policy.settings_for` merges the layers into one
flow's `EffectiveFlowSettings`. `auto_resume.policy.loading` reads and validates the file.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from auto_resume.metaflow.decorator_specs import DEFAULT_ALLOWED_DECORATORS
from auto_resume.policy.settings import (
    MERGED_KEY_BY_KEY,
    OVERRIDABLE,
    Breaker,
    Defaults,
    Hook,
    Overrides,
    Switch,
    check_glob,
)


class SensorSettings(BaseModel):
    """Settings of the Dagster sensor that watches for failed runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    minimum_interval_seconds: int = Field(
        default=30,
        ge=5,
        strict=True,
        description=(
            "Seconds between sensor ticks; the Dagster daemon needs >= 5. A multiple of 5 is "
            "declared to Dagster as one second less, so that ticks come every interval."
        ),
        examples=[30],
    )
    default_status: Literal["running", "stopped"] = Field(
        default="stopped",
        description="Initial sensor status; the Dagster UI toggle overrides it.",
        examples=["stopped"],
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
        examples=["flows/my_flow_dagster.py"],
    )
    flow_file: Path | None = Field(
        default=None,
        description="Instead of definitions_file: a Metaflow flow file; auto-resume builds its job "
        "(named after the flow) in the auto_resume code location. Relative to the policy file's "
        "directory.",
        examples=["flows/my_flow.py"],
    )
    flow_class: str | None = Field(
        default=None,
        description="With flow_file: the flow class to run, when the file defines several.",
        examples=["MyFlow"],
    )
    job_name: str | None = Field(
        default=None,
        description="With flow_file: the Dagster job's name (default: the flow's name).",
        examples=["MyFlow"],
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

    job: str = Field(
        description="Dagster job name of the flow, exact or glob (`Train*`).", examples=["Train*"]
    )

    @field_validator("job")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_glob(value)


class EffectiveFlowSettings(Defaults):
    """One flow's settings after merging kill switch, defaults, job overrides and its entry."""


class Policy(BaseModel):
    """Which Metaflow-on-Dagster flows to resume after failures, when, and how often."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = Field(description="Policy format version; must be 1.", examples=[1])
    enabled: Switch = Field(
        default=True, description="Global kill switch: false resumes nothing.", examples=[True]
    )
    sensor: SensorSettings = Field(
        default_factory=SensorSettings,
        description="Sensor settings.",
        examples=[{"minimum_interval_seconds": 30}],
    )
    max_resumes_in_flight: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Resume runs of all flows queued or running at once.",
        examples=[10],
    )
    breaker: Breaker | None = Field(
        default=None,
        description="A storm breaker over the failures of every watched flow.",
        examples=[{"failures": 20, "window_seconds": 300, "scope": "fingerprint", "cooldown_seconds": 900}],
    )
    on_give_up: Hook | None = Field(
        default=None,
        description="Called once per failed run given up; AUTO_RESUME_RUN_ID, AUTO_RESUME_JOB_NAME, "
        "AUTO_RESUME_REASON, AUTO_RESUME_ROOT_RUN_ID, AUTO_RESUME_ATTEMPT are set.",
        examples=[{"command": ["/usr/local/bin/notify-oncall"]}],
    )
    allowed_decorators: tuple[str, ...] = Field(
        default=DEFAULT_ALLOWED_DECORATORS,
        description="Step decorators a resume may inject (`with`, in this file or in the run config "
        "of a <job>_resume run typed in the Launchpad); any other is refused before a task runs.",
        examples=[list(DEFAULT_ALLOWED_DECORATORS)],
    )
    defaults: Defaults = Field(
        default_factory=Defaults,
        description="Settings of flows without overrides.",
        examples=[{"max_attempts": 2}],
    )
    overrides: tuple[JobOverride, ...] = Field(
        default=(),
        description="Overrides by job name, applied in order after the defaults.",
        examples=[[{"job": "Train*", "max_attempts": 5}]],
    )
    flows: tuple[FlowEntry, ...] = Field(
        default=(),
        description="Watched flows; may be empty.",
        examples=[[{"definitions_file": "flows/my_flow_dagster.py"}]],
    )

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
                merged = {name: getattr(self.defaults, name) for name in OVERRIDABLE}
                for layer in [*layers, flow]:
                    for name in OVERRIDABLE:
                        value = getattr(layer, name)
                        if value is None:
                            continue
                        merged[name] = {**merged[name], **value} if name in MERGED_KEY_BY_KEY else value
                merged["enabled"] = self.enabled and merged["enabled"]
                return EffectiveFlowSettings.model_validate(merged)
        raise KeyError(f"{wanted} is not listed under flows in the policy")
