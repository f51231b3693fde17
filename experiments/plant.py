"""A seeded model of the plant drcio controls: a disk shared by HP requests and throttled LP I/O, and its measurement path.

Used by the ``sim`` backend (:mod:`experiments.backends.sim`) and fitted by
``benchmarks/sim_fit.py``. Pure numerics on numpy; no clock, no I/O besides
reading the fit file. Time advances in fixed steps of ``dt_seconds``.

**Disk service, shaped like the frontier measured here.** An HP request's
latency is a base service time (lognormal: on this machine mostly Python and
CPU scheduling, fitted to the baseline's P50/P95) plus a queueing delay behind
LP I/O, exponential with mean ``wait_max * r**p / (1 + r**p)``, ``r = LP
bytes/s / knee``. That shape is what the real sweeps show: flat while LP is
small, a steep rise around the knee, and a ceiling (the LP job keeps a fixed
number of requests in flight, so even unthrottled LP delays HP by a bounded
amount: ~30 ms here). ``wait_max``, ``knee`` and ``p`` are fitted to a real
sweep (LP throughput vs. HP P95 at fixed limits, plus the unthrottled
contention run) by ``benchmarks/sim_fit.py``; the fit, the data it came from
and the side-by-side plot are in ``benchmarks/results/``.

**LP under a throttle.** LP's demand comes from its mode and the unthrottled
throughput measured in the contention run. Measured here: the ``mixed`` job
alternates reads and writes, so it moves reads and writes at the same rate
and the tighter of the two limits (``wbps``, half of ``rbps`` in the SLO's
range) paces both; ``read`` / ``write`` jobs are capped by their own limit.
What LP moves under ``io.max`` is the limit times an efficiency fitted from
the sweep (measured / limit).

**Noise.** The real windowed P95 wobbles tick to tick (a few % to ~15 %, in
the baseline too: CPU scheduling of the HP service). Every latency carries a
multiplicative AR(1) factor (``jitter_sigma``, ``jitter_tau_seconds``)
fitted to that wobble.

**HP arrivals.** Poisson at the schedule's rate; each request's latency is
drawn from the state of the disk during the step it arrives in.

**Measurement path.** Every request lands in a cumulative histogram with the
HP service's real bucket edges (``LATENCY_BUCKETS_SECONDS``); "Prometheus"
scrapes the cumulative counts every ``scrape_interval_seconds``;
:meth:`Node.window` returns the per-second rate of each counter over the
scrapes inside a trailing window, extrapolated as Prometheus' ``rate()``
does (:func:`prometheus_rate`), which is what ``histogram_quantile(q,
rate(..[w]))`` sees, so the controller reads the P95 with the real bucket
resolution and lag, and HP's request rate as the real sensor reads it: at
a series' start (every counter starts at 0 when the schedule does) the rate
climbs over one window, as it does when the real load generator starts.
Each scrape also records LP's byte counters and the ``io.max`` in force
(the writer's limit gauge), so :meth:`Node.lp_utilisation` reads LP's use
of its limit as the sensor's PromQL does.

Not measured, assumed (so nobody reads more into the sim): how the knee moves
with HP's request rate (only 200 requests/s was measured; the model scales
the knee by ``(hp_ref_rps / hp_rate) ** hp_knee_exponent``, 0.5 by default:
more HP traffic, an earlier knee); the unthrottled demand of a read-only or
write-only job (taken equal to the mixed job's); ``io.weight`` has no effect
in the model.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from experiments.workloads.hp_gnn import LATENCY_BUCKETS_SECONDS

__all__ = ["PlantFit", "LpDemand", "Node", "load_fit", "histogram_quantile", "prometheus_rate", "BUCKETS_SECONDS"]

#: The HP service's histogram edges: the simulated histogram has the real one's resolution.
BUCKETS_SECONDS: tuple[float, ...] = LATENCY_BUCKETS_SECONDS


def histogram_quantile(q: float, cumulative: np.ndarray, edges: np.ndarray) -> float:
    """PromQL's ``histogram_quantile`` on cumulative counts (last = +Inf) over finite ``edges``.

    The same rules as :func:`experiments.report.histogram_quantile` (a test
    checks they agree): counts made monotonic first, linear inside the bucket, a rank in the +Inf bucket
    gives the highest finite bound, NaN without observations.
    """
    # PromQL's ensureMonotonic: buckets' rates, each extrapolated on its own, may dip below a lower bucket's.
    cumulative = np.maximum.accumulate(cumulative)
    total = float(cumulative[-1])
    if not total > 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(cumulative, rank, side="left"))
    if i >= len(edges):
        return float(edges[-1])
    lower = float(edges[i - 1]) if i > 0 else 0.0
    below = float(cumulative[i - 1]) if i > 0 else 0.0
    count = float(cumulative[i]) - below
    return lower + (float(edges[i]) - lower) * ((rank - below) / count) if count > 0 else lower


def prometheus_rate(t0: float, t1: float, samples: int, v0: Any, v1: Any, at: float, window_seconds: float) -> Any:
    """``rate(c[w])`` at ``at`` of counters (float or array) whose first and last samples in the window are ``v0`` at
    ``t0`` and ``v1`` at ``t1``, ``samples`` samples in all: Prometheus 2.x's ``extrapolatedRate``.

    The increase is stretched from the sampled span towards the window's
    edges: all the way to an edge less than 1.1 average sample gaps away, half a
    gap otherwise, and at the start never past the point where the counter
    would have been 0 (a series that begins inside the window). Then it is
    divided by the whole window. So a counter that starts inside the window
    (the load has just begun) reads low until the window is full of its
    samples, as the real sensor reads it. The sim's counters never reset, so
    resets are not handled.
    """
    sampled = t1 - t0
    increase = np.subtract(v1, v0, dtype=float)
    gap = sampled / (samples - 1)
    threshold = 1.1 * gap
    with np.errstate(divide="ignore", invalid="ignore"):
        to_zero = np.where(increase > 0, sampled * np.divide(v0, increase), np.inf)
    to_start = np.minimum(t0 - (at - window_seconds), to_zero)
    to_end = at - t1
    stretched = (sampled + np.where(to_start < threshold, to_start, gap / 2)
                 + (to_end if to_end < threshold else gap / 2))
    return increase * (stretched / sampled) / window_seconds


@dataclass(frozen=True)
class PlantFit:
    """The model's constants; :func:`load_fit` reads the ones fitted to this machine.

    base_median_ms / base_sigma: lognormal HP service time without LP.
    wait_max_ms / knee_bps / knee_exponent: the queueing delay's mean,
        ``wait_max * r**p / (1 + r**p)`` with ``r = LP bytes/s / knee``.
    hp_ref_rps / hp_knee_exponent: the HP rate the fit was measured at and
        how the knee moves with HP's rate (assumed, see the module docstring).
    demand_bps: unthrottled LP bytes/s (read + write) of the LP job.
    efficiency: LP bytes/s moved per byte/s of io.max while throttled.
    jitter_sigma / jitter_tau_seconds: AR(1) log-jitter on every latency.
    source: where the numbers came from.
    """

    base_median_ms: float = 2.0
    base_sigma: float = 0.5
    wait_max_ms: float = 10.0
    knee_bps: float = 500 * 2**20
    knee_exponent: float = 2.0
    hp_ref_rps: float = 200.0
    hp_knee_exponent: float = 0.5
    demand_bps: float = 1900 * 2**20
    efficiency: float = 1.0
    jitter_sigma: float = 0.1
    jitter_tau_seconds: float = 2.0
    source: str = "defaults (not fitted)"

    def knee_at(self, hp_rate: float) -> float:
        """The knee (LP bytes/s) at HP rate ``hp_rate``."""
        if hp_rate <= 0:
            return self.knee_bps
        return self.knee_bps * (self.hp_ref_rps / hp_rate) ** self.hp_knee_exponent

    def mean_wait_ms(self, lp_bps: Any, hp_rate: float) -> Any:
        r = np.asarray(lp_bps, dtype=float) / self.knee_at(hp_rate)
        rp = r ** self.knee_exponent
        return self.wait_max_ms * rp / (1.0 + rp)


def load_fit() -> PlantFit:
    """The fit written by ``benchmarks/sim_fit.py`` (packaged as ``experiments/templates/sim-fit.json``)."""
    raw = json.loads(resources.files("experiments").joinpath("templates/sim-fit.json").read_text())
    return PlantFit(**raw["fit"])


@dataclass(frozen=True)
class LpDemand:
    """LP's mode in one step: what it would move unthrottled, and whether reads and writes are paced together."""

    read_bps: float
    write_bps: float
    coupled: bool = False

    @staticmethod
    def for_mode(mode: str, fit: PlantFit) -> LpDemand:
        if mode == "read":
            return LpDemand(fit.demand_bps, 0.0)
        if mode == "write":
            return LpDemand(0.0, fit.demand_bps)
        if mode == "mixed":
            return LpDemand(fit.demand_bps / 2, fit.demand_bps / 2, coupled=True)
        if mode == "idle":
            return LpDemand(0.0, 0.0)
        raise ValueError(f"unknown LP mode {mode!r} (read, write, mixed, idle)")


@dataclass
class Node:
    """One simulated node: its disk, its HP and LP traffic, its limits in force and its scraped counters.

    ``rng`` is the node's own generator (seeded by the backend), so a seed fixes every draw.
    """

    fit: PlantFit
    rng: np.random.Generator
    dt_seconds: float = 0.1
    scrape_interval_seconds: float = 1.0
    rbps_limit: float | None = None
    wbps_limit: float | None = None
    now: float = 0.0
    _jitter: float = 0.0
    _buckets: np.ndarray = field(init=False)
    _lp_read_total: float = 0.0
    _lp_write_total: float = 0.0
    _requests_total: float = 0.0
    #: (time, cumulative bucket counts incl. +Inf, requests, LP read bytes, LP write bytes) per scrape.
    scrapes: list[tuple[float, np.ndarray, float, float, float]] = field(default_factory=list)
    #: Every HP request: (send time, latency seconds); the load generator's CSV is written from it.
    requests: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _next_scrape: float = 0.0
    _scrape_times: list[float] = field(default_factory=list)
    #: The io.max in force (read, write; None = max) at each scrape: the writer's limit gauge, as scraped.
    limit_scrapes: list[tuple[float | None, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._edges = np.array(BUCKETS_SECONDS)
        self._buckets = np.zeros(len(self._edges) + 1)
        self._next_scrape = self.now

    def set_limits(self, rbps: float | None, wbps: float | None) -> None:
        """The io.max in force (None = max), as the writer would apply it."""
        self.rbps_limit, self.wbps_limit = rbps, wbps

    def lp_rates(self, demand: LpDemand) -> tuple[float, float]:
        """LP bytes/s per direction this step: demand capped by the throttle (see the module docstring)."""
        eff = self.fit.efficiency
        r = demand.read_bps if self.rbps_limit is None else min(demand.read_bps, eff * self.rbps_limit)
        w = demand.write_bps if self.wbps_limit is None else min(demand.write_bps, eff * self.wbps_limit)
        if demand.coupled:
            r = w = min(r, w)
        return r, w

    def advance(self, hp_rate: float, demand: LpDemand) -> None:
        """One step of ``dt_seconds``: LP moves bytes, HP requests arrive and complete, scrapes happen."""
        f, dt = self.fit, self.dt_seconds
        # AR(1) in log space with stationary std jitter_sigma.
        a = math.exp(-dt / f.jitter_tau_seconds)
        self._jitter = a * self._jitter + f.jitter_sigma * math.sqrt(1 - a * a) * float(self.rng.standard_normal())
        read, write = self.lp_rates(demand)
        self._lp_read_total += read * dt
        self._lp_write_total += write * dt
        n = int(self.rng.poisson(hp_rate * dt)) if hp_rate > 0 else 0
        if n:
            sent = self.now + np.sort(self.rng.uniform(0.0, dt, n))
            base = f.base_median_ms * np.exp(f.base_sigma * self.rng.standard_normal(n))
            wait = self.rng.exponential(float(f.mean_wait_ms(read + write, hp_rate)), n)
            latency = (base + wait) * math.exp(self._jitter) / 1000.0
            self.requests.append((sent, latency))
            idx = np.searchsorted(self._edges, latency, side="left")
            self._buckets += np.bincount(idx, minlength=len(self._buckets))
            self._requests_total += n
        self.now = round(self.now + dt, 9)
        while self._next_scrape <= self.now + 1e-9:
            self._scrape_times.append(self._next_scrape)
            self.scrapes.append((self._next_scrape, np.cumsum(self._buckets), self._requests_total,
                                 self._lp_read_total, self._lp_write_total))
            self.limit_scrapes.append((self.rbps_limit, self.wbps_limit))
            self._next_scrape = round(self._next_scrape + self.scrape_interval_seconds, 9)

    def _window_scrapes(self, at: float, window_seconds: float) -> tuple[int, int] | None:
        """Indices of the first and last scrape in (at - w, at]; None with fewer than two."""
        times = self._scrape_times
        first = bisect.bisect_right(times, at - window_seconds + 1e-9)
        last = bisect.bisect_right(times, at + 1e-9) - 1
        return None if last - first < 1 else (first, last)

    def window(self, at: float, window_seconds: float) -> tuple[np.ndarray, float, float, float] | None:
        """``rate()`` over the scrapes in (at - w, at] of (cumulative buckets, requests, LP read bytes, LP write bytes).

        Per second, extrapolated per counter as Prometheus does (:func:`prometheus_rate`).
        None with fewer than two scrapes in the window (Prometheus' rate() is empty then).
        """
        span_idx = self._window_scrapes(at, window_seconds)
        if span_idx is None:
            return None
        first, last = span_idx
        (t0, b0, n0, r0, w0), (t1, b1, n1, r1, w1) = self.scrapes[first], self.scrapes[last]
        n = last - first + 1
        rates = [prometheus_rate(t0, t1, n, v0, v1, at, window_seconds)
                 for v0, v1 in ((n0, n1), (r0, r1), (w0, w1))]
        return prometheus_rate(t0, t1, n, b0, b1, at, window_seconds), *map(float, rates)

    def lp_utilisation(self, at: float, window_seconds: float) -> float | None:
        """LP's use of its io.max over the scrapes in (at - w, at], as the sensor's ``lp_utilisation_query`` reads it.

        Per direction with a limit scraped in the window: LP bytes/s (the
        counters' ``rate()``, :func:`prometheus_rate`) over the mean of the limit samples
        (``avg_over_time``); the larger of the two. None with fewer than two
        scrapes or no limit in the window.
        """
        span_idx = self._window_scrapes(at, window_seconds)
        if span_idx is None:
            return None
        first, last = span_idx
        (t0, _, _, r0, w0), (t1, _, _, r1, w1) = self.scrapes[first], self.scrapes[last]
        n = last - first + 1
        moved = (float(prometheus_rate(t0, t1, n, r0, r1, at, window_seconds)),
                 float(prometheus_rate(t0, t1, n, w0, w1, at, window_seconds)))
        ratios = []
        for direction in (0, 1):
            limits = [v for s in self.limit_scrapes[first:last + 1] if (v := s[direction]) is not None]
            if limits:
                ratios.append(moved[direction] / (sum(limits) / len(limits)))
        return max(ratios) if ratios else None

    @property
    def edges(self) -> np.ndarray:
        return self._edges

