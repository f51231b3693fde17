"""The PID policy: a ``simple-pid`` controller on the HP latency slack.

Built by :func:`policies.registry.build_policy` from ``{kind: pid, kp, ki, kd,
...}`` and stepped once per controller tick. The loop closes on the
normalised slack ``(target - latency) / target`` (see
:attr:`policies.base.Observation.slack`) and outputs the LP allowance level
in [0, 1].

What this adds around ``simple_pid.PID``, and why:

* **Direction.** ``simple-pid`` computes ``error = setpoint - input``. We
  feed it ``input = -slack`` and ``setpoint = -params.setpoint``, so
  ``error = slack - setpoint``: more slack than we aim for raises the
  allowance, less lowers it.
* **Aim under the target** (``setpoint``, default 0.1 slack = 90 % of the
  target). A P95 over a window is noisy and the plant answers with a lag;
  sitting exactly at the target means every other tick is a violation.
* **Dead band** (``deadband``, default 0.05 around the setpoint): inside it
  the error is zero, so neither P nor I move. Outside it the band is
  subtracted (the error is continuous), so leaving the band does not kick the
  output. This keeps the level still while the latency wobbles by a few
  percent, which would otherwise turn into needless cgroup writes.
* **Cut hard, grow gently** (``violation_gain``, default 2): the part of the
  error beyond the target (negative slack) counts this many times. A missed
  HP SLO costs more than a slower LP batch, so a violation is shed twice as
  fast as headroom is taken up; between the setpoint and the target the loop
  stays symmetric, which keeps it calm where it spends its time.
* **No integral wind-up while clamped.** ``simple-pid`` only clamps its
  integral to the output limits, so hours at level 1 (HP idle) leave the
  integral at 1 and the first violation has to unwind it before the level
  can drop. We add conditional integration: when the output would saturate
  and the error pushes further into the saturation, the integral moves only
  as far as the output needs to reach the limit (never further than
  simple-pid would have moved it), so it holds what the output can act on.
* **Bumpless hand-over.** The PID runs only between valid measurements. On
  the first valid step, and after NO_DATA or a sensor failure, it is put back
  in auto mode with ``set_auto_mode(True, last_output=level)``: the integral
  starts at the level in force, so the output continues from there.
* **No data / sensor failure.** NO_DATA (no HP traffic, nothing to protect)
  ramps the level up at ``no_data_rate`` per second. SENSOR_ERROR holds, then
  falls back, via :class:`policies.base.FailSafeTracker`. The PID itself never
  sees these steps, so it is never fed NaN or a made-up latency.
* **Open only where LP needs it (the gate; off unless** ``gate_utilisation``
  **> 0).** The latency cannot tell "LP is idle" from "LP is held by its
  limit": both read as headroom, and a loop that opens while LP is idle, or
  between bursts, meets LP's return unthrottled. With the gate on, above
  ``gate_above`` the level rises only while LP uses at least
  ``gate_utilisation`` of the limit in force
  (:attr:`policies.base.Observation.lp_utilisation`, measured from the
  writers' metrics) and HP's request rate has not risen by more than
  ``gate_rise`` within the last ``gate_rise_seconds`` (a rising HP load moves
  the knee down: no time to open), nor fallen by more than ``gate_fall`` (HP
  leaving: a window whose last seconds hold fewer requests reads as headroom,
  and a loop that opens into a quiet spell meets HP's return unthrottled).
  A rise by more than ``gate_step`` is a step in load (HP starting, or
  returning from quiet), not a ramp: it holds only until the rate has
  stopped rising for ``gate_step_seconds``, since a windowed rate that has
  stopped changing means the window holds the new load alone, and its P95
  shows what the step did.
  Otherwise the level holds (the PID is
  switched off and takes over bumplessly, as after no data); below
  ``gate_above`` (default 0: nowhere) the PID opens as usual, up to
  ``gate_above``. Cutting is never gated. A missing measurement counts as
  "not bound", so a blind gate holds. ``no_data_rate`` growth stops at
  ``gate_above`` too.
* **No clock.** ``dt`` comes from the observation; ``sample_time=None`` and a
  constant ``time_fn`` mean ``simple-pid`` never consults the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from simple_pid import PID

from policies.base import (
    FailSafe,
    FailSafeTracker,
    Observation,
    SensorStatus,
    checked_initial_level,
    clamp_level,
    range_problem,
    raise_problems,
)

__all__ = ["PidParams", "PidPolicy"]


@dataclass(frozen=True)
class PidParams:
    """Parameters of the PID policy (the SLO file's ``policy`` section).

    All errors are in units of slack (a fraction of the target), so the gains
    do not depend on whether the target is 5 ms or 500 ms.

    kp: proportional gain, level per unit of slack error. Default 0.5: a
        latency at twice the target (slack -1) cuts the level by ~1 at once.
    ki: integral gain, level per (unit of slack error x second). Default 0.1:
        at a 5 s interval, a steady error of 0.1 moves the level by 0.05 per
        tick, which is what removes the steady-state offset P leaves.
    kd: derivative gain in seconds (on the measurement, so a setpoint change
        does not kick). Default 0: P95 over a window is too noisy to
        differentiate usefully.
    setpoint: slack to aim for, in [0, 1). Default 0.1: hold latency at 90 %
        of the target so noise and lag do not tip it over.
    deadband: half-width of the band around the setpoint in which the error
        counts as zero, in [0, 1). Default 0.05: ignore +-5 % wobble.
    violation_gain: factor on the part of the error beyond the target
        (negative slack), >= 1. Default 2: shed a violation twice as fast as
        headroom is taken up. 1 makes the loop symmetric.
    no_data_rate: level per second added while there is no HP traffic, in
        [0, 1]. Default 0.01: from fully throttled to free in 100 s, the same
        pace as AIMD's default +0.05 per 5 s tick. 0 holds instead.
    gate_utilisation: LP's use of its limit (``Observation.lp_utilisation``)
        needed before the level may rise above ``gate_above``, in [0, 1].
        Default 0: no gate. 0.9 is what ``benchmarks/control_quality.py``
        measures (LP under io.max moves 99 % of the limit in the fitted sweep).
    gate_above: the level up to which the gated PID opens without evidence
        that LP needs more, in [0, 1]. Default 0: none, every rise needs the
        evidence (a level known safe for any LP load on the node, if there is
        one, is what to set here; 0.45 was one in the simulator, not on the
        real host, where LP bursts let in at 0.45 violated the SLO).
    gate_rise: with the gate on, an HP request rate more than this fraction
        above the rate ``gate_rise_seconds`` ago holds the level too, >= 0.
        Default 0.05; 0 ignores the rate.
    gate_fall: with the gate on, an HP request rate more than this fraction
        below the rate ``gate_rise_seconds`` ago holds the level too, in
        [0, 1]. Default 0.25: HP going quiet drops the 5 s window's rate by a
        fifth a second, so the hold starts on its second second; a 300 -> 150
        requests/s ramp over 40 s falls 8 % per 5 s (not held), and Poisson
        noise alone (two adjacent 5 s windows, normal approximation) falls
        25 % about once in 1 300 ticks at 50 requests/s and once in 250 000
        at 100. 0.15 (once in 190 at 100 requests/s) held on noise often
        enough to cost attainment in the simulator's hp-ramp: 98.7 % against
        99.5 %. 0 ignores falls.
    gate_rise_seconds: how far back ``gate_rise`` and ``gate_fall`` compare,
        > 0. Default 5 s (the template's window).
    gate_step: with the gate on, a rise of more than this fraction within
        ``gate_rise_seconds`` is a step in HP's load, not a ramp, 0 or >=
        ``gate_rise``: it holds only until the rate has risen by at most
        ``gate_rise`` over the last ``gate_step_seconds``. Default 0.5. A windowed rate climbs for
        one window after a step (HP starting, or back from quiet) and then
        stops, and from then on the window holds the new load alone; without
        this the rise check held ``gate_rise_seconds`` longer. The ramps it
        must still hold for rise by a few % per window (``hp-ramp``: 8 %).
        In the simulator (``benchmarks/control_quality.py``) the steady
        scenario's start opens 5 s sooner (seed 1). 0 treats a step as any rise.
    gate_step_seconds: how long the rate must have stopped rising after a
        step, in (0, ``gate_rise_seconds``]. Default 3 s. In the simulator,
        2 s opened into HP's return in ``hp-steps`` before its P95 showed the
        new load (the SLO held again 14 intervals after the return, against
        2), and 4 s gave the same figures as no step rule.
    """

    kind: ClassVar[str] = "pid"

    kp: float = 0.5
    ki: float = 0.1
    kd: float = 0.0
    setpoint: float = 0.1
    deadband: float = 0.05
    violation_gain: float = 2.0
    no_data_rate: float = 0.01
    gate_utilisation: float = 0.0
    gate_above: float = 0.0
    gate_rise: float = 0.05
    gate_fall: float = 0.25
    gate_rise_seconds: float = 5.0
    gate_step: float = 0.5
    gate_step_seconds: float = 3.0

    def __post_init__(self) -> None:
        checked = {
            "kp": range_problem("kp", self.kp, ge=0),
            "ki": range_problem("ki", self.ki, ge=0),
            "kd": range_problem("kd", self.kd, ge=0),
            "setpoint": range_problem("setpoint", self.setpoint, ge=0, lt=1),
            "deadband": range_problem("deadband", self.deadband, ge=0, lt=1),
            "violation_gain": range_problem("violation_gain", self.violation_gain, ge=1),
            "no_data_rate": range_problem("no_data_rate", self.no_data_rate, ge=0, le=1),
            "gate_utilisation": range_problem("gate_utilisation", self.gate_utilisation, ge=0, le=1),
            "gate_above": range_problem("gate_above", self.gate_above, ge=0, le=1),
            "gate_rise": range_problem("gate_rise", self.gate_rise, ge=0),
            "gate_fall": range_problem("gate_fall", self.gate_fall, ge=0, le=1),
            "gate_rise_seconds": range_problem("gate_rise_seconds", self.gate_rise_seconds, gt=0),
            "gate_step": range_problem("gate_step", self.gate_step, ge=0),
            "gate_step_seconds": range_problem("gate_step_seconds", self.gate_step_seconds, gt=0),
        }
        problems = list(checked.values())

        def valid(*names: str) -> bool:
            return all(checked[n] is None for n in names)

        if valid("gate_rise", "gate_step") and 0 < self.gate_step < self.gate_rise:
            problems.append(f"gate_step must be 0 (off) or >= gate_rise ({self.gate_rise:g}): a step is a rise "
                            f"larger than the ones that hold, got {self.gate_step:g}")
        if valid("gate_rise_seconds", "gate_step_seconds") and self.gate_step_seconds > self.gate_rise_seconds:
            problems.append(f"gate_step_seconds must be <= gate_rise_seconds ({self.gate_rise_seconds:g}), "
                            f"got {self.gate_step_seconds:g}")
        if valid("kp", "ki") and self.kp == 0 and self.ki == 0:
            problems.append("at least one of kp, ki must be > 0 (otherwise the level never moves)")
        raise_problems("pid policy", problems)

    @property
    def uses_lp_utilisation(self) -> bool:
        """Whether the controller must measure ``Observation.lp_utilisation`` for this policy (the gate is on)."""
        return self.gate_utilisation > 0


class PidPolicy:
    """PID on the latency slack, clamped to [0, 1], without wind-up, with bumpless hand-over."""

    def __init__(self, params: PidParams, *, failsafe: FailSafe = FailSafe(), initial_level: float = 1.0) -> None:
        self._initial_level = checked_initial_level("pid", params, PidParams, initial_level)
        self.params = params
        self._failsafe = FailSafeTracker(failsafe)
        self._pid = self._new_pid()
        self._level = self._initial_level
        self._terms: dict[str, float] = {}
        self._gated = False
        self._clock = 0.0
        self._rates: list[tuple[float, float]] = []  # (time, HP request rate) within gate_rise_seconds
        self.reset()

    def _new_pid(self) -> PID:
        p = self.params
        return PID(
            Kp=p.kp,
            Ki=p.ki,
            Kd=p.kd,
            setpoint=-p.setpoint,
            sample_time=None,  # every call computes: the controller's tick is the sample
            output_limits=(0.0, 1.0),
            auto_mode=False,  # switched on, bumplessly, by the first valid measurement
            error_map=self._shape_error,
            time_fn=lambda: 0.0,  # dt is always passed; the policy must not read the clock
        )

    def _shape_error(self, error: float) -> float:
        """Dead band around the setpoint, then the violation gain beyond the target.

        ``error`` is ``slack - setpoint``. The result is continuous in the
        slack: zero inside the band, the band subtracted outside it, and the
        part of the slack below zero (the actual violation) counted
        ``violation_gain`` times.
        """
        p = self.params
        band = p.deadband
        shaped = 0.0 if abs(error) <= band else error - band if error > 0 else error + band
        violation = min(error + p.setpoint, 0.0)  # the slack, when it is negative
        return shaped + (p.violation_gain - 1.0) * violation

    @property
    def level(self) -> float:
        """The level output by the last step (the initial level before the first)."""
        return self._level

    @property
    def terms(self) -> dict[str, float]:
        """``p``, ``i``, ``d``, ``error`` (shaped slack error) and the fail-safe state, for metrics."""
        return dict(self._terms)

    def reset(self) -> None:
        """Forget everything: back to the initial level, PID off until the next valid measurement."""
        self._pid.set_auto_mode(False)
        self._pid.reset()
        self._failsafe.on_success()
        self._level = self._initial_level
        self._gated = False
        self._clock = 0.0
        self._rates = []
        self._set_terms(p=0.0, i=self._level, d=0.0, error=0.0)

    def step(self, observation: Observation) -> float:
        """One control step; returns the new level in [0, 1]."""
        self._clock += observation.dt_seconds
        self._note_rate(observation.request_rate_per_second)
        self._gated = False
        if observation.status is SensorStatus.SENSOR_ERROR:
            self._to_manual()
            self._level = self._failsafe.on_failure(self._level)
            self._set_terms(p=0.0, i=self._level, d=0.0, error=0.0)
            return self._level

        if observation.status is SensorStatus.NO_DATA and self._failsafe.on_no_data():
            self._set_terms(p=0.0, i=self._level, d=0.0, error=0.0)
            return self._level
        if observation.status is SensorStatus.OK:
            self._failsafe.on_success()
        if observation.status is SensorStatus.NO_DATA:
            # Nothing to protect: grow gently, outside the PID so that its
            # integral and derivative memory are not fed an invented latency.
            self._to_manual()
            grown = clamp_level(self._level + self.params.no_data_rate * observation.dt_seconds)
            if self.params.uses_lp_utilisation and grown > max(self._level, self.params.gate_above):
                grown, self._gated = max(self._level, self.params.gate_above), True
            self._level = grown
            self._set_terms(p=0.0, i=self._level, d=0.0, error=0.0)
            return self._level

        if not self._gate_closed(observation):
            return self._step_pid(observation)
        self._gated = True
        if self._level >= self.params.gate_above:
            # Hold: the PID is off and takes over bumplessly once the gate opens (or the error turns).
            self._to_manual()
            self._set_terms(p=0.0, i=self._level, d=0.0, error=self._shape_error(observation.slack - self.params.setpoint))
            return self._level
        level = self._step_pid(observation)
        if level > self.params.gate_above:
            # Free up to gate_above only; off from there, so the integral cannot wind up past it.
            self._level = self.params.gate_above
            self._to_manual()
            self._set_terms(p=0.0, i=self._level, d=0.0, error=self._terms["error"])
        return self._level

    def _note_rate(self, rate: float | None) -> None:
        """Keep the HP rates of the last ``gate_rise_seconds`` (only the gate's rise and fall checks read them)."""
        if not (self.params.uses_lp_utilisation and (self.params.gate_rise > 0 or self.params.gate_fall > 0)):
            return
        horizon = self._clock - self.params.gate_rise_seconds - 1e-9
        self._rates = [(t, r) for t, r in self._rates if t >= horizon]
        if rate is not None:
            self._rates.append((self._clock, rate))

    def _gate_closed(self, observation: Observation) -> bool:
        """With the gate on: the PID wants to open, but LP is not bound by its limit or HP's rate is moving."""
        p = self.params
        if not p.uses_lp_utilisation or observation.slack - p.setpoint <= p.deadband:
            return False
        used = observation.lp_utilisation
        if used is None or used < p.gate_utilisation:
            return True
        if len(self._rates) > 1:
            (_, then), (_, now) = self._rates[0], self._rates[-1]
            rising = p.gate_rise > 0 and now > then * (1.0 + p.gate_rise)
            if rising and p.gate_step > 0 and now > then * (1.0 + p.gate_step):
                rising = not self._step_over(now)
            falling = p.gate_fall > 0 and now < then * (1.0 - p.gate_fall)
            return rising or falling
        return False

    def _step_over(self, now: float) -> bool:
        """After a step in HP's rate: the rate has risen by at most ``gate_rise`` over ``gate_step_seconds``."""
        p = self.params
        if self._rates[0][0] > self._clock - p.gate_step_seconds + 1e-9:
            return False  # not yet seen for that long
        recent = next(r for t, r in self._rates if t >= self._clock - p.gate_step_seconds - 1e-9)
        return recent > 0 and now <= recent * (1.0 + p.gate_rise)

    def _step_pid(self, observation: Observation) -> float:
        if not self._pid.auto_mode:
            # Bumpless: the integral starts at the level in force.
            self._pid.set_auto_mode(True, last_output=self._level)
        slack = observation.slack
        error = self._shape_error(slack - self.params.setpoint)
        integral_before = self._pid.components[1]
        self._pid(-slack, dt=observation.dt_seconds)
        p, i, d = self._pid.components
        limit = 1.0 if error > 0 else 0.0
        if (error > 0 and p + i + d > 1.0) or (error < 0 and p + i + d < 0.0):
            # Conditional integration: the output saturates and the error
            # pushes further in, so integrating would only store error the
            # output cannot act on (wind-up). The integral moves at most to
            # where the output just reaches the limit, and never past where
            # simple-pid would have taken it; if it was already beyond, it
            # stays where it was.
            i = min(max(limit - p - d, min(integral_before, i)), max(integral_before, i))
            # simple-pid keeps the integral in ``_integral`` (read-only as
            # components[1]); setting it is the one private touch we need.
            self._pid._integral = i  # type: ignore[attr-defined]  # private, see above
        self._level = clamp_level(p + i + d)
        self._set_terms(p=p, i=i, d=d, error=error)
        return self._level

    def _to_manual(self) -> None:
        if self._pid.auto_mode:
            self._pid.set_auto_mode(False)

    def _set_terms(self, *, p: float, i: float, d: float, error: float) -> None:
        self._terms = {
            "p": float(p),
            "i": float(i),
            "d": float(d),
            "error": float(error),
            "sensor_failures": float(self._failsafe.failures),
            "failsafe_engaged": 1.0 if self._failsafe.engaged else 0.0,
            "gated": 1.0 if self._gated else 0.0,
        }
