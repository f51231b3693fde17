"""The control loop: every interval, sense -> decide -> map -> push, for every SLO.

:meth:`Controller.step` is one full tick and the unit the tests drive; it
takes the evaluation time as an argument and never reads the clock itself,
so the same loop runs against real Prometheus, a simulator (a different
:class:`~controller.sensor.Sensor` and :class:`~controller.push.Pusher`) and
tests. :meth:`Controller.run` only keeps the rate: a drift-free schedule
(tick k at ``start + k * interval``), a failed tick logged with context and
the next one run anyway, missed ticks skipped rather than bunched up.

Each tick pushes the whole desired state to every writer, even when nothing
changed: that renews the writers' lease and heals any writer that missed a
push (level-triggered actuation).

A controller that starts, or takes over as leader, first calls
:meth:`Controller.take_over`: every policy starts afresh from the level its
writers hold (``start_level: in-force``), so a restart or a fail-over
continues from the limits in force, and nothing a standby's policies concluded
from a plant they did not drive reaches the writers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.config import ControllerConfig, SloConfig
from controller.decision_log import DecisionLog
from controller.metrics import ControllerMetrics
from controller.push import InForce, Pusher, PushResult, WriterDirectory
from controller.sensor import Reading, Sensor
from controller.targets import GroupDecision, resolve_groups
from policies import Observation, Policy, SensorStatus
from policies.registry import build_policy
from writer.api import GroupTarget, TargetsPush

__all__ = ["Controller", "TickResult", "build_policies", "levels_in_force"]

log = logging.getLogger(__name__)


def build_policies(config: ControllerConfig) -> dict[str, Policy]:
    """One policy per SLO. Policies start at the fail-safe level (a controller that has
    just started knows as little as one whose sensor has failed for long), or at the
    level ``start_level`` gives as a number."""
    failsafe = config.failsafe.to_policy()
    start = config.fixed_start_level
    return {
        slo.name: build_policy(slo.policy.parsed(), failsafe=failsafe,
                               initial_level=failsafe.level if start is None else start)
        for slo in config.slos
    }


def levels_in_force(reports: list[InForce], failsafe_level: float) -> tuple[dict[str, float], int]:
    """The level each LP group holds on the writers that answered, and how many answered.

    Per group, the lowest over the answering writers, where a writer in
    fail-safe, or without a push since it started, or whose last push did not
    carry the group, counts as ``failsafe_level`` (at most its last level): what
    a take-over starts from must not open LP anywhere. Groups no writer
    reported are absent (the caller starts them at the fail-safe level).
    """
    answered = [r for r in reports if r.error is None]
    groups = {g for r in answered for g in r.levels}
    out = {}
    for group in groups:
        held = []
        for r in answered:
            level = r.levels.get(group)
            if level is None or r.failsafe_active or not r.pushed:
                level = failsafe_level if level is None else min(level, failsafe_level)
            held.append(level)
        out[group] = min(held)
    return out, len(answered)


@dataclass
class _SloState:
    slo: SloConfig
    policy: Policy
    #: Monotonic time of the last observation (not wall time: see Controller._monotonic).
    last_time: float | None = None
    level: float = 0.0


@dataclass(frozen=True)
class TickResult:
    at: float
    records: list[dict[str, Any]]
    groups: list[GroupDecision]
    pushes: list[PushResult] = field(default_factory=list)
    generation: int | None = None


def _target_record(t: GroupTarget) -> dict[str, Any]:
    return {
        "io_max": t.io_max.model_dump(),
        "failsafe": None if t.failsafe is None else t.failsafe.model_dump(),
        "io_weight": t.io_weight,
        "devices": t.devices if isinstance(t.devices, str) else [d if isinstance(d, str) else d.model_dump() for d in t.devices],
        "selector": dict(t.selector),
    }


class Controller:
    """Runs the SLOs of one config against a sensor and a set of writers."""

    def __init__(
        self,
        config: ControllerConfig,
        *,
        sensor: Sensor,
        pusher: Pusher,
        writers: WriterDirectory,
        policies: Mapping[str, Policy] | None = None,
        metrics: ControllerMetrics | None = None,
        decision_log: DecisionLog | None = None,
        dry_run: bool = False,
        name: str = "drcio-controller",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sensor = sensor
        self.pusher = pusher
        self.writers = writers
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        self.decision_log = decision_log
        self.dry_run = dry_run
        self.name = name
        #: ``dt`` comes from here, never from the wall clock: an NTP step or a VM
        #: resume must not saturate an integral or make the allowance jump.
        self._monotonic = monotonic
        pol = dict(policies) if policies is not None else build_policies(config)
        self._states = [_SloState(slo, pol[slo.name], level=pol[slo.name].level) for slo in config.slos]
        self._generation = 0
        self._take_over_pending = threading.Event()
        #: The label values of drcio_controller_pushes_total this replica has set: writer -> results.
        self._push_series: dict[str, set[str]] = {}
        # The elector's thread raises the generation floor (resume_after) while the loop counts on from it.
        self._generation_lock = threading.Lock()
        for slo in config.slos:
            self.metrics.target.labels(slo=slo.name).set(slo.target_seconds)

    # -- one tick ---------------------------------------------------------------------------

    def _observe(self, st: _SloState, now: float) -> tuple[Reading, Observation]:
        reading = self.sensor.read(st.slo, now)
        mono = self._monotonic()
        dt = self.config.interval_seconds if st.last_time is None else max(mono - st.last_time, 1e-3)
        st.last_time = mono
        obs = Observation(
            status=reading.status,
            latency_seconds=reading.latency_seconds,
            target_seconds=st.slo.target_seconds,
            dt_seconds=dt,
            # Only usable values reach the policy: an infinite or negative one from a
            # malformed answer must not turn into an exception that stops the tick.
            request_rate_per_second=_usable(reading.request_rate),
            lp_utilisation=_usable(reading.lp_utilisation),
        )
        return reading, obs

    @property
    def generation(self) -> int:
        """The generation of the last push body built (0 before the first tick)."""
        return self._generation

    def resume_after(self, generation: int) -> None:
        """Continue strictly above ``generation`` (a new leader above its predecessor's last push)."""
        with self._generation_lock:
            self._generation = max(self._generation, generation)

    @property
    def take_over_pending(self) -> bool:
        """Whether the next tick starts with :meth:`take_over` (requested, not yet done)."""
        return self._take_over_pending.is_set()

    def request_take_over(self) -> None:
        """Have the next tick call :meth:`take_over` first (safe from another thread: the leader elector's)."""
        self._take_over_pending.set()

    def take_over(self) -> dict[str, float]:
        """Start every SLO's policy afresh from the level in force; returns the level per SLO.

        With ``start_level: in-force`` the level is its LP group's on the
        writers (:func:`levels_in_force`; read over ``GET /status``), or,
        where no writer answers, the fail-safe level; else the level
        ``start_level`` fixes (the fail-safe level, or a number). The policies are built
        anew from the config: whatever they had learned (a standby's policies
        step on readings of a plant another replica drives) is dropped, and
        the PID's integral starts at that level (bumpless).
        """
        self._take_over_pending.clear()
        failsafe = self.config.failsafe
        held: dict[str, float] = {}
        fixed = self.config.fixed_start_level
        source = f"start_level: {self.config.start_level}"
        if fixed is None:
            writers = self.writers.writers()
            # Bounded by one interval: at thousands of writers the whole round could outlast their lease.
            read = self.pusher.read_in_force(writers, self.config.interval_seconds)
            held, answered = levels_in_force(read, failsafe.level)
            source = f"in force on {answered} of {len(writers)} writer(s)"
        levels = {}
        for st in self._states:
            level = held.get(st.slo.throttle.group_name, failsafe.level) if fixed is None else fixed
            st.policy = build_policy(st.slo.policy.parsed(), failsafe=failsafe.to_policy(), initial_level=level)
            st.level, st.last_time = level, None
            levels[st.slo.name] = level
        if fixed is None:
            source += f"; fail-safe level {failsafe.level:g} where none is held"
        log.info("taking over: policies start at %s (%s)",
                 ", ".join(f"{name} {level:.3f}" for name, level in levels.items()), source)
        return levels

    def _next_generation(self, now: float) -> int:
        # Wall-clock milliseconds keep generations increasing across controller
        # restarts (a restarted controller must not look stale to the writers);
        # +1 keeps them strictly increasing within a run.
        with self._generation_lock:
            self._generation = max(self._generation + 1, int(now * 1000))
            return self._generation

    def step(self, now: float) -> TickResult:
        """One sense-decide-map-push tick at evaluation time ``now`` (Unix seconds).

        ``now`` is only what Prometheus is asked about (and the decision log's
        time); the time between ticks comes from the monotonic clock.
        """
        started = time.perf_counter()
        if self._take_over_pending.is_set():
            self.take_over()
        readings: dict[str, Reading] = {}
        for st in self._states:
            reading, obs = self._observe(st, now)
            readings[st.slo.name] = reading
            st.level = st.policy.step(obs)
            self._record_slo_metrics(st, reading)

        groups = resolve_groups([(st.slo, st.level) for st in self._states], failsafe_level=self.config.failsafe.level)
        body = TargetsPush(
            generation=self._next_generation(now),
            lease_ttl_seconds=self.config.lease_ttl,
            groups=[g.target for g in groups],
            controller=self.name,
        )
        writers = self.writers.writers()
        # Elected while this tick ran: push nothing the policies decided before the take-over (the next tick does it).
        pushes = [] if self._take_over_pending.is_set() else self.pusher.push(writers, body)
        self._record_group_metrics(groups, pushes, len(writers))

        by_group = {g.group: g for g in groups}
        # One list of push records, shared by every SLO's record: built per SLO it
        # would cost SLOs x writers dicts a tick (a million at 100 x 10,000).
        push_records = [p.as_record() for p in pushes]
        records = [
            self._record(st, readings[st.slo.name], by_group[st.slo.throttle.group_name], now, push_records)
            for st in self._states
        ]
        if self.decision_log is not None:
            self.decision_log.write(records)
        self.metrics.loop_duration.observe(time.perf_counter() - started)
        self.metrics.ticks.inc()
        self.metrics.last_tick.set(now)
        return TickResult(at=now, records=records, groups=groups, pushes=pushes, generation=body.generation)

    @staticmethod
    def _failsafe_active(st: _SloState) -> bool:
        # The policy owns the hold-then-fail-safe rule; it reports it as a term.
        return st.policy.terms.get("failsafe_engaged", 0.0) > 0.0

    def _record(
        self, st: _SloState, reading: Reading, group: GroupDecision, now: float, push_records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "time": round(now, 3),
            "slo": st.slo.name,
            "status": reading.status.value,
            "latency_seconds": reading.latency_seconds,
            "target_seconds": st.slo.target_seconds,
            "request_rate": reading.request_rate,
            "level": round(st.level, 6),
            "policy": st.slo.policy.kind,
            "terms": {k: round(v, 6) for k, v in st.policy.terms.items()},
            "failsafe": self._failsafe_active(st),
            "error": reading.error,
            "group": group.group,
            "group_level": round(group.level, 6),
            "conflict": group.conflict,
            "winner": group.winner,
            "limits_from": dict(group.limits_from),
            "overlapping_groups": list(group.overlaps),
            "targets": {group.group: _target_record(group.target)},
        }
        if reading.clipped:
            rec["clipped"] = True
        if st.slo.uses_lp_utilisation:
            rec["lp_utilisation"] = reading.lp_utilisation
            if reading.lp_utilisation_error is not None:
                rec["lp_utilisation_error"] = reading.lp_utilisation_error
        if not self.dry_run:
            rec["push"] = push_records
        else:
            rec["dry_run"] = True
        return rec

    def _record_slo_metrics(self, st: _SloState, reading: Reading) -> None:
        m, name = self.metrics, st.slo.name
        m.set_status(name, reading.status)
        if reading.latency_seconds is not None:
            m.observed.labels(slo=name).set(reading.latency_seconds)
        else:
            # Absent, not zero: a dashboard must not draw "0 s latency" while blind.
            _remove_series(m.observed, name)
        used = _usable(reading.lp_utilisation)
        if used is not None:
            m.lp_utilisation.labels(slo=name).set(used)
        else:
            _remove_series(m.lp_utilisation, name)
        if reading.status is SensorStatus.SENSOR_ERROR:
            m.sensor_errors.labels(slo=name, reason=reading.reason or "unknown").inc()
        m.slo_level.labels(slo=name).set(st.level)
        m.failsafe.labels(slo=name).set(1.0 if self._failsafe_active(st) else 0.0)
        for term, value in st.policy.terms.items():
            m.term.labels(slo=name, term=term).set(value)

    def _record_group_metrics(self, groups: list[GroupDecision], pushes: list[PushResult], n_writers: int) -> None:
        m = self.metrics
        m.writers.set(n_writers)
        for g in groups:
            m.level.labels(group=g.group).set(g.level)
            m.conflicts.labels(group=g.group).set(len(g.slos) - 1 + len(g.overlaps))
            for direction, value in (("read", g.target.io_max.rbps), ("write", g.target.io_max.wbps)):
                if value is None:
                    _remove_series(m.target_bps, g.group, direction)
                else:
                    m.target_bps.labels(group=g.group, direction=direction).set(value)
            if g.target.io_weight is not None:
                m.target_weight.labels(group=g.group).set(g.target.io_weight)
        for p in pushes:
            m.pushes.labels(writer=p.writer, result=p.outcome).inc()
            self._push_series.setdefault(p.writer, set()).add(p.outcome)
        if pushes:
            # A writer no longer pushed to (a node gone, a writer pod replaced: a new IP) leaves its series:
            # every rollout of the DaemonSet would otherwise add a node's worth of series for good.
            pushed = {p.writer for p in pushes}
            for gone in [w for w in self._push_series if w not in pushed]:
                for result in self._push_series.pop(gone):
                    m.pushes.remove(gone, result)

    # -- the outer loop ---------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
        max_ticks: int | None = None,
    ) -> int:
        """Tick at a fixed rate until ``stop`` is set (or ``max_ticks``); returns ticks run.

        The schedule is anchored at the start (tick k at start + k*interval), so
        tick durations do not accumulate into drift; a tick that overruns makes
        the loop skip to the next slot instead of firing a burst of late ticks.
        """
        interval = self.config.interval_seconds
        sleep = wait if wait is not None else stop.wait
        start = monotonic()
        k = 0
        ticks = 0
        while not stop.is_set():
            try:
                self.step(wall_clock())
            except Exception:  # a failed tick is logged with context; the next one runs
                log.exception("tick %d failed; continuing", k)
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            k += 1
            next_at = start + k * interval
            now = monotonic()
            if now > next_at:
                skipped = int((now - next_at) // interval) + 1
                log.warning("tick overran the interval; skipping %d slot(s)", skipped)
                k += skipped
                next_at = start + k * interval
            sleep(max(0.0, next_at - monotonic()))
        return ticks


def _remove_series(metric: Any, *labels: str) -> None:
    """Drop one labelled series if present (absent, not zero, while there is no value)."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def _usable(value: float | None) -> float | None:
    """``value`` if it is finite and >= 0, else None."""
    return value if value is not None and math.isfinite(value) and value >= 0 else None
