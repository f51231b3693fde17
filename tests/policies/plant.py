"""Small simulated plants the policy tests close the loop around.

A plant turns the LP level the policy chose into the HP P95 latency the next
observation reports. The loop is: observe -> policy.step -> apply, so the
measurement at step k reflects the level decided at step k-1 (the one-step
lag of a real tick: a new limit shows in the next window). Nothing here
sleeps; time is the ``dt`` each observation carries.

* :class:`LinearPlant`: latency grows linearly with the LP level while LP
  load is on; with LP load off (or HP contention gone) it is flat.
* :class:`CliffPlant`: the shape of the real frontier: flat up to a cliff,
  then a jump; throttled-but-high levels are worse than no limit at all
  (throttled I/O is released in bursts), and a large rise of the level in
  one step releases a backlog burst on top. Steep and non-monotonic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies import Observation, Policy, SensorStatus

TARGET_SECONDS = 0.1
DT_SECONDS = 5.0


@dataclass
class LinearPlant:
    """HP latency = base + span * level while LP load is on, else base."""

    base_seconds: float = 0.04
    span_seconds: float = 0.12  # at level 1: 0.16 s, 1.6x the target; the target holds up to level 0.5
    lp_load: bool = True
    applied: float = 1.0

    def latency(self) -> float:
        return self.base_seconds + (self.span_seconds * self.applied if self.lp_load else 0.0)

    def apply(self, level: float) -> None:
        self.applied = level


@dataclass
class CliffPlant:
    """Flat below ``cliff``, a jump above it, milder at (nearly) no limit, plus backlog bursts."""

    base_seconds: float = 0.03
    cliff: float = 0.6
    over_cliff_seconds: float = 0.3  # 3x the target just past the cliff
    unthrottled_from: float = 0.95
    unthrottled_seconds: float = 0.18  # no limit: bad, but steadier than a bursty throttle
    burst_rise: float = 0.2  # a rise larger than this in one step releases a backlog
    burst_seconds: float = 0.2
    applied: float = 1.0
    previous: float = 1.0

    def latency(self) -> float:
        if self.applied <= self.cliff:
            latency = self.base_seconds
        elif self.applied < self.unthrottled_from:
            latency = self.over_cliff_seconds
        else:
            latency = self.unthrottled_seconds
        if self.applied - self.previous > self.burst_rise:
            latency += self.burst_seconds
        return latency

    def apply(self, level: float) -> None:
        self.previous, self.applied = self.applied, level


Plant = LinearPlant | CliffPlant


def ok(latency_seconds: float, *, dt: float = DT_SECONDS, target: float = TARGET_SECONDS) -> Observation:
    return Observation(SensorStatus.OK, latency_seconds, target, dt)


def no_data(*, dt: float = DT_SECONDS, target: float = TARGET_SECONDS) -> Observation:
    return Observation(SensorStatus.NO_DATA, None, target, dt)


def sensor_error(*, dt: float = DT_SECONDS, target: float = TARGET_SECONDS) -> Observation:
    return Observation(SensorStatus.SENSOR_ERROR, None, target, dt)


@dataclass
class Trace:
    """What a closed-loop run saw: the latency of each observation and the level answered."""

    latencies: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)

    def first_step_under(self, target: float = TARGET_SECONDS) -> int | None:
        return next((k for k, v in enumerate(self.latencies) if v <= target), None)


def run(policy: Policy, plant: Plant, steps: int, *, dt: float = DT_SECONDS, trace: Trace | None = None) -> Trace:
    """Close the loop for ``steps`` ticks; append to ``trace`` if given."""
    trace = trace if trace is not None else Trace()
    for _ in range(steps):
        latency = plant.latency()
        level = policy.step(ok(latency, dt=dt))
        plant.apply(level)
        trace.latencies.append(latency)
        trace.levels.append(level)
    return trace
