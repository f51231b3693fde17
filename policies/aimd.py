"""The AIMD policy: additive increase while under target, multiplicative decrease on violation.

Built by :func:`policies.registry.build_policy` from ``{kind: aimd, increase,
decrease, ...}`` and stepped once per controller tick. AIMD counts ticks, not
seconds: ``increase`` is added per step, because the controller ticks at a
fixed interval and the measured P95 (a window over several ticks) answers per
tick anyway.

Plain AIMD and the cliff
------------------------
On our plant the frontier is steep and not monotonic: HP latency stays flat
while LP reads are throttled below some bandwidth, then jumps (and throttled
I/O is released in bursts, so the jump can be worse than no limit at all).
Plain AIMD climbs over that cliff, halves, climbs back and falls over it
again: a saw-tooth of half the level, forever, with a violation every cycle.

Cliff memory
------------
We remember where the cliff was and approach it carefully:

* ``ceiling``: the level in force when the last violation episode started.
* ``probe`` in [``min_probe``, 1]: how boldly we approach it. It halves on
  every violation episode that starts within the careful zone (a *repeat
  hit*: the cliff is still where we remembered it).
* The careful zone is ``ceiling +- approach * probe * ceiling``. Below it we
  climb at full ``increase`` (but stop at its edge); inside it at
  ``increase * probe**2``.
* A repeat hit cuts by ``1 - (1 - decrease) * probe`` instead of ``decrease``.

So on every repeat hit the level swing (the cut) halves, and the climb back
takes about twice as long (a zone half as wide crossed at a quarter of the
speed): the oscillation's amplitude decays and so does the rate of
violations, down to a floor set by ``min_probe``. We never stop probing
entirely, because the plant changes; ``min_probe`` bounds how slowly we do.

Forgetting: when a measurement comes back fine for a level past the top of
the careful zone (or at ``max_level``, at or above the ceiling), the cliff has
moved (LP load or HP contention went away), so the memory is dropped and
full-speed increase resumes. A violation well below the
careful zone (the cliff moved down) is a fresh hit: full ``decrease`` cut,
``probe`` back to 1/2. A violation that persists over several steps is cut by
the full ``decrease`` every step: persistent overload must still be shed
fast, whatever we remember.

``min_probe = 1`` turns the memory off (classic AIMD).

No data / sensor failure
------------------------
NO_DATA (no HP traffic, nothing to protect) grows the level exactly as a step
under target does. SENSOR_ERROR holds, then falls back, via
:class:`policies.base.FailSafeTracker`; the memory is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from policies.base import (
    FailSafe,
    FailSafeTracker,
    Observation,
    SensorStatus,
    checked_initial_level,
    range_problem,
    raise_problems,
)

__all__ = ["AimdParams", "AimdPolicy"]


@dataclass(frozen=True)
class AimdParams:
    """Parameters of the AIMD policy (the SLO file's ``policy`` section).

    increase: level added per step while under target, in (0, 1]. Default
        0.05: from fully throttled to free in 20 ticks (100 s at 5 s).
    decrease: factor applied to the level on violation, in (0, 1). Default
        0.5: halve, the classic AIMD choice, fast enough to clear a
        violation within a tick or two.
    headroom: slack above which we increase, in [0, 1). Between 0 and
        ``headroom`` the level holds. Default 0.1: grow only while latency is
        below 90 % of the target, so the level settles short of it rather
        than bouncing on it.
    min_level, max_level: bounds of the level, 0 <= min_level < max_level <= 1.
        Defaults 0 and 1: the SLO's throttle range already sets the floor.
    approach: half-width of the careful zone around the remembered cliff, as
        a fraction of the ceiling, in [0, 1). Default 0.2.
    min_probe: floor of the probe factor, in (0, 1]. Default 0.125: the
        cut on a repeat hit shrinks to 1/16 of the level and the careful
        climb to ``increase / 64`` per step, yet a cliff that has gone away
        is left behind after about ``2 * approach * ceiling / (increase *
        min_probe)`` careful steps (64 at the defaults and ceiling 1, five
        minutes at 5 s). 1 disables the memory (classic AIMD).
    """

    kind: ClassVar[str] = "aimd"

    increase: float = 0.05
    decrease: float = 0.5
    headroom: float = 0.1
    min_level: float = 0.0
    max_level: float = 1.0
    approach: float = 0.2
    min_probe: float = 0.125

    def __post_init__(self) -> None:
        problems = [
            range_problem("increase", self.increase, gt=0, le=1),
            range_problem("decrease", self.decrease, gt=0, lt=1),
            range_problem("headroom", self.headroom, ge=0, lt=1),
            range_problem("min_level", self.min_level, ge=0, le=1),
            range_problem("max_level", self.max_level, ge=0, le=1),
            range_problem("approach", self.approach, ge=0, lt=1),
            range_problem("min_probe", self.min_probe, gt=0, le=1),
        ]
        bounds_ok = problems[3] is None and problems[4] is None
        if bounds_ok and not self.min_level < self.max_level:
            problems.append(f"min_level must be < max_level, got {self.min_level!r} >= {self.max_level!r}")
        raise_problems("aimd policy", problems)


class AimdPolicy:
    """AIMD on the latency slack, with a memory of the last cliff (see the module docstring)."""

    def __init__(self, params: AimdParams, *, failsafe: FailSafe = FailSafe(), initial_level: float = 1.0) -> None:
        self._initial_level = checked_initial_level("aimd", params, AimdParams, initial_level)
        self.params = params
        self._failsafe = FailSafeTracker(failsafe)
        self._level = self._initial_level
        self._ceiling: float | None = None
        self._probe = 1.0
        self._violating = False
        self._action = "hold"
        self.reset()

    @property
    def level(self) -> float:
        """The level output by the last step (the initial level before the first)."""
        return self._level

    @property
    def ceiling(self) -> float | None:
        """The remembered cliff (level at the start of the last violation), or None."""
        return self._ceiling

    @property
    def terms(self) -> dict[str, float]:
        """What the last step did and what is remembered, for metrics and the decision log.

        ``increase`` / ``decrease``: the change applied by the last step (>= 0
        each, at most one non-zero); ``ceiling_memory``: the remembered cliff
        (0 when none); ``probe``: the current probe factor.
        """
        return dict(self._terms)

    def reset(self) -> None:
        """Forget everything: the initial level, no cliff memory, no sensor failures."""
        self._failsafe.on_success()
        self._level = self._initial_level
        self._ceiling = None
        self._probe = 1.0
        self._violating = False
        self._terms = self._make_terms(0.0, 0.0)

    def step(self, observation: Observation) -> float:
        """One control step; returns the new level in [0, 1]."""
        before = self._level
        if observation.status is SensorStatus.SENSOR_ERROR:
            self._level = self._failsafe.on_failure(self._level)
        elif observation.status is SensorStatus.NO_DATA and self._failsafe.on_no_data():
            pass  # a failure episode is not over because an answer came back empty: hold
        else:
            if observation.status is SensorStatus.OK:
                self._failsafe.on_success()
            if observation.status is SensorStatus.NO_DATA or observation.slack > self.params.headroom:
                self._violating = False
                self._grow()
            elif observation.slack >= 0:
                self._violating = False  # in the hold band: close enough, stay put
            else:
                self._cut()
        change = self._level - before
        self._terms = self._make_terms(max(change, 0.0), max(-change, 0.0))
        return self._level

    def _zone(self, ceiling: float) -> tuple[float, float]:
        half = self.params.approach * self._probe * ceiling
        return ceiling - half, ceiling + half

    def _grow(self) -> None:
        p = self.params
        level = self._level
        if self._ceiling is not None:
            _, top = self._zone(self._ceiling)
            if level > top or (level >= p.max_level and level >= self._ceiling):
                # This measurement reflects a level past the remembered cliff
                # (or at the top, at or above it) and it is fine: the cliff has
                # moved, so forget it and climb at full speed again.
                self._ceiling = None
                self._probe = 1.0
        if self._ceiling is None or p.min_probe >= 1:
            level += p.increase
        else:
            bottom, _ = self._zone(self._ceiling)
            if level < bottom:
                level = min(level + p.increase, bottom)  # fast, but stop at the careful zone
            else:
                level += p.increase * self._probe**2
        self._level = min(p.max_level, max(p.min_level, level))

    def _cut(self) -> None:
        p = self.params
        factor = p.decrease
        if not self._violating:  # a new violation episode
            bottom, _ = self._zone(self._ceiling) if self._ceiling is not None else (float("inf"), 0.0)
            repeat = self._level >= bottom
            self._probe = max(p.min_probe, self._probe / 2) if repeat else max(p.min_probe, 0.5)
            if repeat:
                factor = 1.0 - (1.0 - p.decrease) * self._probe
            self._ceiling = self._level
            self._violating = True
        self._level = min(p.max_level, max(p.min_level, self._level * factor))

    def _make_terms(self, increase: float, decrease: float) -> dict[str, float]:
        return {
            "increase": increase,
            "decrease": decrease,
            "ceiling_memory": self._ceiling if self._ceiling is not None else 0.0,
            "probe": self._probe,
            "sensor_failures": float(self._failsafe.failures),
            "failsafe_engaged": 1.0 if self._failsafe.engaged else 0.0,
        }
