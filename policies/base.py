"""The policy contract: what a control policy sees and what it answers.

A policy turns one :class:`Observation` (measured HP latency, its target,
the time since the last step) into a *level*: the LP allowance in [0, 1],
0 = throttle LP as hard as the SLO allows, 1 = leave LP free. Policies are
pure: no I/O, no clock, no globals; time arrives in the observation. That is
what lets the same policy run against real Prometheus, the simulator and the
tests.

Missing measurements are explicit, never a zero:

* ``NO_DATA``: Prometheus answered, the HP series exists, but carries less
  than ``min_rate`` requests/s. Nothing to protect, so policies let the
  allowance grow gently, exactly as while under target. An *absent* series is
  never NO_DATA (the sensor reports it as a failure). During a failure episode
  NO_DATA holds instead (see :meth:`FailSafeTracker.on_no_data`).
* ``SENSOR_ERROR``: the measurement failed (Prometheus down, timeout, bad
  answer). We cannot know whether the SLO holds, so policies *hold* their last
  level for ``failsafe.after`` consecutive failed steps, then move to
  ``failsafe.level`` until a valid measurement returns. Holding first rides
  out a single failed scrape; the bound keeps a stale decision from living
  forever.

:class:`FailSafeTracker` implements that rule once for every policy.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "SensorStatus",
    "Observation",
    "Policy",
    "FailSafe",
    "FailSafeTracker",
    "PolicyConfigError",
    "clamp_level",
    "checked_initial_level",
    "range_problem",
    "raise_problems",
]


class PolicyConfigError(ValueError):
    """A policy parameter is out of range; the message says which and what is allowed.

    ``problems`` lists every individual problem (one per field), so callers
    that merge errors from several places can report them all at once.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


class SensorStatus(enum.Enum):
    OK = "ok"
    NO_DATA = "no_data"
    SENSOR_ERROR = "sensor_error"


@dataclass(frozen=True)
class Observation:
    """One measurement as the policy sees it.

    ``latency_seconds`` is set (finite, >= 0) exactly when ``status`` is OK.
    ``dt_seconds`` is the time since the previous step (> 0); the first step
    of a run passes the nominal interval.
    ``request_rate_per_second`` is the HP request rate over the SLO's window
    when the sensor measured it (it does for every metric SLO, to check
    ``min_rate``; a raw query only with ``rate_query``), else None. A policy
    may use it to tell whether what it learned still applies (a knee learned
    under heavy HP traffic is too tight once the traffic drops); none may
    need it.
    ``lp_utilisation`` is how much of its limit LP used over the same window:
    LP's bytes/s against the ``io.max`` in force, the highest ratio over the
    SLO's LP cgroups, devices and directions (about 1: LP is bound by its
    limit and would move more; near 0: idle). Measured from the writers' own
    metrics when the SLO's policy asks for it (the PID's gate), else None; None
    too when nothing is limited or nothing was measured.
    """

    status: SensorStatus
    latency_seconds: float | None
    target_seconds: float
    dt_seconds: float
    request_rate_per_second: float | None = None
    lp_utilisation: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_seconds) and self.target_seconds > 0):
            raise ValueError(f"target_seconds must be finite and > 0, got {self.target_seconds!r}")
        if not (math.isfinite(self.dt_seconds) and self.dt_seconds > 0):
            raise ValueError(f"dt_seconds must be finite and > 0, got {self.dt_seconds!r}")
        if self.status is SensorStatus.OK:
            if self.latency_seconds is None or not math.isfinite(self.latency_seconds) or self.latency_seconds < 0:
                raise ValueError(f"an OK observation needs a finite latency >= 0, got {self.latency_seconds!r}")
        elif self.latency_seconds is not None:
            raise ValueError(f"a {self.status.value} observation carries no latency")
        rate = self.request_rate_per_second
        if rate is not None and not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"request_rate_per_second must be finite and >= 0 or None, got {rate!r}")
        used = self.lp_utilisation
        if used is not None and not (math.isfinite(used) and used >= 0):
            raise ValueError(f"lp_utilisation must be finite and >= 0 or None, got {used!r}")

    @property
    def slack(self) -> float:
        """Normalised error ``(target - latency) / target``: 1 = idle, 0 = at target, < 0 = violation.

        Only defined for OK observations. Working on slack rather than seconds
        makes gains independent of the SLO's scale (a 5 ms and a 500 ms target
        tune alike).
        """
        if self.latency_seconds is None:
            raise ValueError(f"slack is undefined for a {self.status.value} observation")
        return (self.target_seconds - self.latency_seconds) / self.target_seconds


@runtime_checkable
class Policy(Protocol):
    """A control policy: ``step`` one observation to a level in [0, 1]; ``reset`` to start over."""

    def step(self, observation: Observation) -> float: ...

    def reset(self) -> None: ...

    @property
    def level(self) -> float:
        """The level output by the last step (the initial level before any)."""
        ...

    @property
    def terms(self) -> dict[str, float]:
        """The policy's internal terms for metrics and the decision log (e.g. PID p/i/d)."""
        ...


@dataclass(frozen=True)
class FailSafe:
    """What a policy does while the sensor fails.

    after: consecutive failed steps during which the last level is held.
        Default 3: at a 5 s interval that rides out 15 s of Prometheus
        trouble (a restart, a slow scrape) before acting blind.
    level: the level applied after that, until a valid measurement returns.
        Default 0.2: a conservative allowance that protects HP without
        stopping LP; the operator sets it from the SLO's throttle range.
    """

    after: int = 3
    level: float = 0.2

    def __post_init__(self) -> None:
        if self.after < 0:
            raise PolicyConfigError(f"failsafe.after must be >= 0, got {self.after}")
        if not 0.0 <= self.level <= 1.0:
            raise PolicyConfigError(f"failsafe.level must be in [0, 1], got {self.level}")


def clamp_level(value: float) -> float:
    """Clamp to [0, 1]; NaN is a programming error and raises."""
    if math.isnan(value):
        raise ValueError("level is NaN")
    return min(1.0, max(0.0, value))


class FailSafeTracker:
    """Counts consecutive sensor failures and says what to output while they last.

    Used by every policy so the hold-then-fail-safe rule lives in one place.
    """

    def __init__(self, failsafe: FailSafe) -> None:
        self.failsafe = failsafe
        self.failures = 0
        self._quiet = 0

    def on_no_data(self) -> bool:
        """Record one NO_DATA step during or after a failure; True = hold the level this step.

        An empty answer is not proof that the sensor works again: if it reset
        the failure count, alternating errors and empty answers would keep the
        count below ``after`` forever and the fail-safe would never engage.
        So while failures are counted, NO_DATA holds (the fail-safe level if
        engaged) and leaves the count alone; only ``after + 1`` NO_DATA steps
        in a row (a sensor that answers consistently) or one valid
        measurement end the failure episode.
        """
        if self.failures == 0:
            return False
        self._quiet += 1
        if self._quiet > self.failsafe.after:
            self.on_success()
            return False
        return True

    def on_failure(self, last_level: float) -> float:
        """Record one failed step; return the level to output for it."""
        self.failures += 1
        self._quiet = 0
        if self.failures <= self.failsafe.after:
            return last_level
        return self.failsafe.level

    def on_success(self) -> None:
        self.failures = 0
        self._quiet = 0

    @property
    def engaged(self) -> bool:
        """True once the hold has run out and the fail-safe level is in force."""
        return self.failures > self.failsafe.after


def _describe_range(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else None
    if low is not None and high is not None:
        return f"in {low}, {high}"
    if low is not None:
        return f">= {ge:g}" if ge is not None else f"> {gt:g}"
    if high is not None:
        return f"<= {le:g}" if le is not None else f"< {lt:g}"
    return "finite"


def range_problem(
    name: str,
    value: object,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> str | None:
    """Say what is wrong with one numeric parameter, or None if it is fine.

    Accepts int and float (YAML gives either), refuses bool (``True`` is an
    int to Python, never a gain to us), strings, NaN and infinities. Used by
    every policy's params dataclass so all of them word errors alike.
    """
    allowed = _describe_range(ge, gt, le, lt)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number {allowed}, got {value!r} ({type(value).__name__})"
    v = float(value)
    ok = (
        math.isfinite(v)
        and (ge is None or v >= ge)
        and (gt is None or v > gt)
        and (le is None or v <= le)
        and (lt is None or v < lt)
    )
    return None if ok else f"{name} must be {allowed}, got {value!r}"


def raise_problems(what: str, problems: Sequence[str | None]) -> None:
    """Raise one :class:`PolicyConfigError` listing every problem (Nones are skipped)."""
    found = [p for p in problems if p is not None]
    if found:
        raise PolicyConfigError(f"{what}: " + "; ".join(found), found)


def checked_initial_level(kind: str, params: object, params_cls: type, initial_level: float) -> float:
    """The constructor checks every policy shares: ``params`` of the right class, a level in [0, 1]."""
    raise_problems(f"{kind} policy", [range_problem("initial_level", initial_level, ge=0, le=1)])
    if not isinstance(params, params_cls):
        raise PolicyConfigError(f"{kind} policy: params must be {params_cls.__name__}, got {type(params).__name__}")
    return float(initial_level)
