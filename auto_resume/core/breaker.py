"""Storm breakers: stop resuming into an outage. Pure state and rules, kept in the sensor's cursor.

A breaker counts the failures of one scope (a fingerprint: exception class and normalised
message, across flows; a flow; or all). When ``failures`` of them arrive within
``window_seconds`` it opens: resumes in that scope wait for ``cooldown_seconds``. Then it is
half open: one failure's resume is let through (the probe) and the others keep waiting. A new
failure of the scope opens it again; the probe's resume finishing without one closes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from auto_resume.core.decision import FailedRun, failure_signature
from auto_resume.policy.settings import Breaker

# How soon a failure waiting behind a half-open breaker's probe is looked at again.
PROBE_RECHECK_SECONDS = 30.0


@dataclass
class BreakerState:
    """One scope's breaker: its recent failures, and whether and until when it is open."""

    recent: list[float] = field(default_factory=list)  # failure times, the last `failures` of them
    opened_at: float | None = None
    open_until: float | None = None  # None: closed
    probe: str | None = None  # half open: the failed run whose resume is the probe
    window_seconds: float = 0.0  # the breaker's, to forget it once quiet


@dataclass(frozen=True)
class Opening:
    """A breaker that has just opened, to be recorded once."""

    key: str
    run_id: str  # the failure that opened it
    job_name: str
    until: float
    reason: str


def breaker_keys(
    failed: FailedRun, flow: str, global_breaker: Breaker | None, flow_breaker: Breaker | None
) -> list[tuple[str, Breaker]]:
    """The breakers a failure counts in, each with its key: the policy's, then its flow's.

    ``flow`` is the flow's own job name (a failure of its resume job is a failure of the flow).
    """
    found = []
    for prefix, breaker in (("all flows", global_breaker), (f"flow {flow}", flow_breaker)):
        if breaker is None:
            continue
        if breaker.scope == "fingerprint":
            scope = "fingerprint " + failure_signature(None, failed.exception_class, failed.message)
        elif breaker.scope == "flow":
            scope = f"flow {flow}"
        else:
            scope = "every failure"
        found.append((f"{prefix}: {scope}", breaker))
    return found


class BreakerBoard:
    """Every breaker's state, read from and written back to the sensor's cursor."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.states = {key: BreakerState(**value) for key, value in (data or {}).items()}

    def dump(self) -> dict[str, Any]:
        return {key: asdict(state) for key, state in self.states.items()}

    def record(self, failed: FailedRun, keys: list[tuple[str, Breaker]], now: float) -> list[Opening]:
        """Count a failure read for the first time; the breakers it opens (or opens again)."""
        opened = []
        for key, breaker in keys:
            state = self.states.setdefault(key, BreakerState())
            state.window_seconds = breaker.window_seconds
            moment = failed.failed_at or now
            inside = [t for t in state.recent if moment - t <= breaker.window_seconds]
            state.recent = [*inside[-(breaker.failures - 1) :], moment]
            half_open = state.open_until is not None and now >= state.open_until
            tripped = state.open_until is None and len(state.recent) >= breaker.failures
            if not (tripped or half_open):
                continue
            why = (
                f"{len(state.recent)} failures within {breaker.window_seconds:g}s"
                if tripped
                else "a failure while it was trying one resume"
            )
            state.opened_at, state.open_until, state.probe = now, now + breaker.cooldown_seconds, None
            reason = f"storm breaker {key} opened: {why}"
            opened.append(Opening(key, failed.run_id, failed.job_name, state.open_until, reason))
        return opened

    def gate(
        self, failed: FailedRun, keys: list[tuple[str, Breaker]], now: float
    ) -> tuple[str, float] | None:
        """Why ``failed`` may not be resumed now, and when to look again; None: it may.

        Past the cooldown the first failure asking becomes the probe, and is let through.
        """
        states = [(key, self.states[key]) for key, _ in keys if key in self.states]
        states = [(key, state) for key, state in states if state.open_until is not None]
        for key, state in states:
            assert state.open_until is not None
            if now < state.open_until:
                return f"storm breaker {key} is open until {_utc(state.open_until)}", state.open_until
            if state.probe is not None and state.probe != failed.run_id:
                why = f"storm breaker {key} is trying one resume (of run {state.probe}) first"
                return why, now + PROBE_RECHECK_SECONDS
        for _, state in states:
            state.probe = failed.run_id
        return None

    def probes(self) -> dict[str, str]:
        """Half-open breakers with a probe: key -> the failed run whose resume is the probe."""
        return {key: state.probe for key, state in self.states.items() if state.probe is not None}

    def close(self, key: str) -> None:
        """The probe's resume finished without a new failure of the scope: the storm is over."""
        self.states.pop(key, None)

    def forget_quiet(self, now: float) -> None:
        """Drop what no longer matters: closed breakers without a failure inside their window, and
        half-open ones that nothing asked to resume within a window after their cooldown."""
        for key in list(self.states):
            state = self.states[key]
            last = max(state.recent, default=0.0)
            closed_and_quiet = state.open_until is None and now - last > state.window_seconds
            unasked = (
                state.open_until is not None
                and state.probe is None
                and now - state.open_until > state.window_seconds
            )
            if closed_and_quiet or unasked:
                del self.states[key]


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
