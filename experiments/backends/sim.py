"""The ``sim`` backend: the real controller loop and policies against a seeded model of the plant.

Used by ``run-experiment --backend sim`` (no root, no cgroups, no disk
traffic) and by ``benchmarks/control_quality.py`` through :func:`simulate`.

What is real and what is modelled:

* **Real:** the SLO document each scenario gets (:func:`experiments.slo.slo_document`,
  validated by the controller's own loader), :class:`controller.loop.Controller`
  and its :meth:`~controller.loop.Controller.step` (policy, level -> targets,
  the push body, the decision log, the controller's metrics), the policies.
  There is no second loop: only the sensor, the pusher and the clock are swapped.
* **Modelled** (:mod:`experiments.plant`): the disk, HP arrivals, LP under
  ``io.max``, and the measurement path (histogram buckets, scrape interval,
  rate window). :class:`SimSensor` answers the controller from the scraped
  histogram the way Prometheus would; :class:`SimPusher` applies each push's
  ``io.max`` to every simulated node as the writer would (the push is
  validated by the wire models on the way, since it is a real
  :class:`~writer.api.TargetsPush`).
* **Clock:** simulated unix seconds from a fixed epoch, advanced in steps of
  ``dt_seconds``; the controller is stepped every ``interval`` of simulated time.

Deterministic: the same seed and inputs give byte-identical output files.
It writes the same files as the local backend: per scenario ``client.csv``
(the load generator's columns), ``slo.yaml``, ``decisions.jsonl``, and the
exported series and histogram frames.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import yaml

from controller.config import SloConfig, parse_config
from controller.decision_log import DecisionLog
from controller.loop import Controller
from controller.push import InForce, PushResult, StaticWriters
from controller.sensor import CLIPPED_FACTOR, Reading
from experiments.export import HISTOGRAM_COLUMNS, SERIES_COLUMNS, Export
from experiments.model import LP_GROUP, ScenarioRun, ScenarioSpec, SloWiring, Tick, load_facts
from experiments.plant import LpDemand, Node, PlantFit, histogram_quantile, load_fit
from experiments.schedules import Phase, Schedule
from experiments.slo import slo_document, validate_slo
from experiments.workloads.loadgen import CSV_COLUMNS
from policies import Policy, SensorStatus
from writer.api import CgroupResult, TargetsPush

__all__ = ["SimConfig", "SimBackend", "SimResult", "SimSensor", "SimPusher", "simulate", "steady_schedule"]

#: Simulated time starts here (unix seconds, 2027-01-15): fixed, so output files are reproducible.
EPOCH = 1_800_000_000.0
_HP_JOB = "hp-gnn"


@dataclass(frozen=True)
class SimConfig:
    """Settings of the simulated plant.

    seed: fixes every random draw (arrivals, service times, jitter).
    nodes: simulated nodes; each has its own disk, HP share and LP job, one
        writer each; the HP SLO is over all nodes' requests (as one service).
    hp_rate_per_second: HP requests/s of the service for the steady scenarios, spread evenly over the nodes
        (as a schedule's rates are).
    lp_mode: LP's mode in the steady scenarios (``mixed`` as the local medium level).
    dt_seconds: the plant's time step. 0.1 s: ten steps per scrape, fine
        enough that a limit change lands within a tenth of a controller interval.
    scrape_interval_seconds / export_window_seconds: as the local backend's Prometheus.
    scrape_offset_seconds: scrapes happen this long after each whole second
        of the scenario, so a controller tick never coincides with a scrape.
    schedule_name: the load schedule the planned dynamic scenarios follow, for :meth:`SimBackend.describe`.
    """

    seed: int = 1
    nodes: int = 1
    hp_rate_per_second: float = 200.0
    lp_mode: str = "mixed"
    dt_seconds: float = 0.1
    scrape_interval_seconds: float = 1.0
    export_window_seconds: float = 5.0
    scrape_offset_seconds: float = 0.5
    fit: PlantFit | None = None
    base_slo: dict[str, Any] = field(default_factory=dict)
    schedule_name: str | None = None

    def __post_init__(self) -> None:
        errors = []
        if self.nodes < 1:
            errors.append(f"nodes must be >= 1, got {self.nodes}")
        if not self.hp_rate_per_second >= 0:
            errors.append(f"the HP rate must be >= 0, got {self.hp_rate_per_second}")
        if not 0 < self.dt_seconds <= self.scrape_interval_seconds:
            errors.append(f"dt must be in (0, scrape interval], got {self.dt_seconds}")
        if errors:
            raise ValueError("; ".join(errors))


def steady_schedule(duration_seconds: float, hp_rate: float, lp_mode: str) -> Schedule:
    """The one-phase schedule of a steady scenario."""
    return Schedule("steady", (Phase(duration_seconds, hp_rate, lp_mode),))  # type: ignore[arg-type]


class SimSensor:
    """Reads an SLO from the simulated nodes' scraped histograms, as ``histogram_quantile(q, rate(..[w]))`` would."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes

    def read(self, slo: SloConfig, at: float) -> Reading:
        windows = [n.window(at, slo.window_seconds) for n in self.nodes]
        present = [w for w in windows if w is not None]
        if not present:
            return Reading(SensorStatus.NO_DATA, None, error="no HP latency samples in the window")
        buckets = np.sum([w[0] for w in present], axis=0)
        rate = float(sum(w[1] for w in present))
        if rate < slo.min_rate:
            return Reading(SensorStatus.NO_DATA, None, request_rate=rate,
                           error=f"HP request rate {rate:.3g}/s is below min_rate {slo.min_rate}/s")
        value = histogram_quantile(slo.quantile, buckets, self.nodes[0].edges)
        if math.isnan(value):
            return Reading(SensorStatus.NO_DATA, None, request_rate=rate, error="no HP latency samples in the window")
        used = self._lp_utilisation(slo, at)
        if value == math.inf:
            return Reading(SensorStatus.OK, slo.target_seconds * CLIPPED_FACTOR, request_rate=rate, clipped=True,
                           lp_utilisation=used)
        return Reading(SensorStatus.OK, value, request_rate=rate, lp_utilisation=used)

    def _lp_utilisation(self, slo: SloConfig, at: float) -> float | None:
        """The highest LP use of its limit over the nodes, when the SLO's policy asks for it (as the real sensor)."""
        if not slo.uses_lp_utilisation:
            return None
        found = [u for u in (n.lp_utilisation(at, slo.window_seconds) for n in self.nodes) if u is not None]
        return max(found) if found else None


def writer_url(index: int) -> str:
    """The (never contacted) writer URL of simulated node ``index``; it passes the SLO file's URL check."""
    return f"http://sim-node-{index}.invalid:9100"


def _node_index(url: str) -> int:
    return int(url.split("sim-node-", 1)[1].split(".", 1)[0])


class SimPusher:
    """Applies each push's LP ``io.max`` to the simulated node behind each writer URL (:func:`writer_url`)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes
        #: Per writer URL, each group's level in the last push (what a real writer's ``/status`` reports).
        self.held: dict[str, dict[str, float]] = {}

    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        levels = {g.name: g.level for g in body.groups if g.level is not None}
        for url in writers:
            self.held[url] = levels
        results = []
        lp = next((g for g in body.groups if g.name == LP_GROUP), None)
        for url in writers:
            node = self.nodes[_node_index(url)]
            if lp is not None:
                node.set_limits(lp.io_max.rbps, lp.io_max.wbps)
            results.append(PushResult(url, "ok", 200, node=f"sim-node-{_node_index(url)}", results=(
                CgroupResult(group=LP_GROUP, cgroup="sim/lp", outcome="applied"),)))
        return results

    def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
        """The levels of the last push, as a writer whose lease never runs out holds them."""
        return [InForce(url, dict(self.held[url]), pushed=True) if url in self.held else InForce(url)
                for url in writers]


@dataclass
class SimResult:
    """One simulated scenario: the export frames, the HP requests and the controller's decisions.

    ``decisions``: (time, level, rbps, wbps, observed_ms) per controller tick (empty without a controller).
    """

    start: float
    end: float
    series: pd.DataFrame
    histogram: pd.DataFrame
    requests: pd.DataFrame
    decisions: pd.DataFrame


def _lp_demand(schedule: Schedule, t: float, fit: PlantFit, lp: bool) -> LpDemand:
    return LpDemand.for_mode(schedule.lp_mode_at(t) if lp else "idle", fit)


def simulate(
    schedule: Schedule,
    config: SimConfig,
    *,
    slo: dict[str, Any] | None,
    lp: bool = True,
    decision_log: DecisionLog | None = None,
    start: float = EPOCH,
    policies: Mapping[str, Policy] | None = None,
    restart_at: Sequence[float] = (),
) -> SimResult:
    """Play ``schedule`` on fresh nodes, with the controller of the SLO document ``slo`` (None = no controller).

    The controller ticks at ``start`` (before any LP I/O, as the local backend
    waits for the first decision) and every ``interval`` after it.
    ``policies`` (SLO name -> policy object) replaces the policies the
    controller would build from ``slo`` (benchmarks and tests use it to run a
    policy the SLO file cannot name). ``restart_at``: seconds into the
    schedule at which the controller restarts, as a restarted process would:
    its next tick takes over (:meth:`Controller.take_over`, by the SLO's
    ``start_level``) from the levels the simulated writers hold, with
    policies built anew from ``slo`` (replacing any given in ``policies``)
    and no tick missed (a real process takes about a second to start).
    """
    fit = config.fit or load_fit()
    rng = np.random.default_rng(config.seed)
    nodes = [Node(fit, np.random.default_rng(rng.integers(2**63)), dt_seconds=config.dt_seconds,
                  scrape_interval_seconds=config.scrape_interval_seconds, now=start)
             for _ in range(config.nodes)]
    for n in nodes:
        n._next_scrape = start + config.scrape_offset_seconds  # see SimConfig.scrape_offset_seconds
    controller = None
    interval = math.inf
    clock = [start]  # simulated time, read by the controller as its monotonic clock
    if slo is not None:
        cfg = parse_config(slo, source="sim")
        interval = cfg.interval_seconds
        controller = Controller(cfg, sensor=SimSensor(nodes), pusher=SimPusher(nodes),
                                writers=StaticWriters([writer_url(i) for i in range(len(nodes))]),
                                decision_log=decision_log, policies=policies,
                                monotonic=lambda: clock[0])  # the loop's dt comes from simulated time
    duration = schedule.duration_seconds
    steps = int(round(duration / config.dt_seconds))
    decisions: list[tuple[float, float, float, float, float]] = []
    next_tick = start
    restarts = sorted(start + t for t in restart_at)
    share = 1.0 / len(nodes)  # the schedule's HP rate is the service's, spread evenly over the nodes
    for k in range(steps + 1):
        now = start + k * config.dt_seconds
        clock[0] = now
        if controller is not None and now >= next_tick - 1e-9:
            if restarts and now >= restarts[0] - 1e-9:
                restarts.pop(0)
                controller.request_take_over()
            result = controller.step(now)
            g = result.groups[0]
            seen = result.records[0]["latency_seconds"]
            decisions.append((now, g.level, _limit(g.target.io_max.rbps), _limit(g.target.io_max.wbps),
                              math.nan if seen is None else 1000.0 * seen))
            next_tick += interval
        if k == steps:
            break
        t = k * config.dt_seconds
        rate = schedule.hp_rate_at(t)
        demand = _lp_demand(schedule, t, fit, lp)
        for n in nodes:
            n.advance(rate * share, demand)
    # One more scrape after the end, as the local backend waits for one.
    for n in nodes:
        for _ in range(int(math.ceil(config.scrape_interval_seconds / config.dt_seconds)) + 1):
            n.advance(schedule.hp_rate_at(duration) * share, _lp_demand(schedule, duration, fit, lp))
    end = start + duration
    dec = pd.DataFrame(decisions, columns=["time", "level", "rbps", "wbps", "observed_ms"])
    series, histogram = _export(nodes, start, end, config.export_window_seconds, dec, controller)
    requests = _requests(nodes, start, end)
    return SimResult(start, end, series, histogram, requests, dec)


def _limit(value: int | None) -> float:
    return math.nan if value is None else float(value)


def _export(nodes: Sequence[Node], start: float, end: float, window: float, dec: pd.DataFrame,
            controller: Controller | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The export's two frames at a 1 s step, computed as the PromQL of :class:`experiments.export.SeriesQueries`."""
    edges = nodes[0].edges
    stamps = [start + i for i in range(int(math.ceil(end - start)) + 1)]
    rows = []
    hist_rows: list[tuple[float, float, float]] = []
    le = [*map(float, edges), math.inf]
    target_ms = math.nan
    if controller is not None:
        target_ms = 1000.0 * controller.config.slos[0].target_seconds
    times = dec["time"].to_numpy() if not dec.empty else np.array([])
    for ts in stamps:
        windows = [w for w in (n.window(ts, window) for n in nodes) if w is not None]
        row: dict[str, float] = {c: math.nan for c in SERIES_COLUMNS}
        row.update(timestamp=ts, elapsed_seconds=ts - start)
        if windows:
            buckets = np.sum([w[0] for w in windows], axis=0)
            for q, col in ((0.5, "hp_p50_ms"), (0.95, "hp_p95_ms"), (0.99, "hp_p99_ms")):
                row[col] = 1000.0 * histogram_quantile(q, buckets, edges)
            row["hp_request_rate"] = float(sum(w[1] for w in windows))
            read, write = float(sum(w[2] for w in windows)), float(sum(w[3] for w in windows))
            row.update(lp_bytes_per_second=read + write, lp_read_bytes_per_second=read, lp_write_bytes_per_second=write)
        if len(times):
            i = int(np.searchsorted(times, ts + 1e-9, side="right")) - 1
            if i >= 0:
                d = dec.iloc[i]
                row.update(throttle_level=float(d["level"]), io_max_rbps=float(d["rbps"]), io_max_wbps=float(d["wbps"]),
                           controller_p95_ms=float(d["observed_ms"]), slo_target_ms=target_ms)
        scraped = [next((s for s in reversed(n.scrapes) if s[0] <= ts + 1e-9), None) for n in nodes]
        if all(s is not None for s in scraped):
            cum = np.sum([s[1] for s in scraped if s is not None], axis=0)
            hist_rows.extend((ts, b, float(c)) for b, c in zip(le, cum))
        rows.append(row)
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    histogram = pd.DataFrame(hist_rows, columns=HISTOGRAM_COLUMNS)
    return series, histogram


def _requests(nodes: Sequence[Node], start: float, end: float) -> pd.DataFrame:
    parts = [r for n in nodes for r in n.requests]
    if not parts:
        return pd.DataFrame({"sent": pd.Series(dtype=float), "latency": pd.Series(dtype=float)})
    sent = np.concatenate([p[0] for p in parts])
    latency = np.concatenate([p[1] for p in parts])
    order = np.argsort(sent, kind="stable")
    frame = pd.DataFrame({"sent": sent[order], "latency": latency[order]})
    return frame[(frame["sent"] >= start) & (frame["sent"] < end)].reset_index(drop=True)


def _client_csv(requests: pd.DataFrame, start: float, path: Path) -> None:
    """The load generator's CSV columns, from the simulated requests (every request succeeds)."""
    n = len(requests)
    sent = (requests["sent"] - start).round(6)
    frame = pd.DataFrame({
        "index": range(n), "tx": range(n), "scheduled_s": sent, "sent_s": sent,
        "latency_s": requests["latency"].round(7), "latency_from_schedule_s": requests["latency"].round(7),
        "outcome": "ok", "status_code": 200, "error": "", "sent_unix_s": requests["sent"].round(6),
    }, columns=list(CSV_COLUMNS))
    frame.to_csv(path, index=False)


class SimBackend:
    """The Backend protocol (:mod:`experiments.model`) over :func:`simulate`; scenarios follow each other in simulated time."""

    #: Every scenario draws the same random numbers (``run_scenario``): a rerun repeats the run.
    repeatable = True

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._clock = EPOCH
        self._results: dict[str, SimResult] = {}

    def describe(self) -> dict[str, str]:
        fit = self.config.fit or load_fit()
        spread = "" if self.config.nodes == 1 else f", spread over {self.config.nodes} nodes"
        hp, lp = load_facts(f"{self.config.hp_rate_per_second:g} requests/s{spread}, open loop (Poisson)",
                            self.config.lp_mode, self.config.schedule_name)
        return {
            "backend": f"sim (seeded model, seed {self.config.seed}, {self.config.nodes} node(s); the real controller "
                       "loop and policies)",
            "host": f"{platform.node()} (simulation; no disk traffic)",
            "disk under test": f"modelled: knee {fit.knee_bps / 2**20:.0f} MiB/s of LP at {fit.hp_ref_rps:g} HP "
                               f"requests/s, fitted to {fit.source}",
            "HP load": hp,
            "LP job": f"{lp} (modelled unthrottled demand {fit.demand_bps / 2**20:.0f} MiB/s)",
        }

    def wiring(self) -> SloWiring:
        return SloWiring(prometheus_url="http://sim-prometheus.invalid:9090", writer_url=writer_url(0),
                         token_file=Path("/nonexistent/sim-token"), hp_job=_HP_JOB, devices="auto")

    def schedule_for(self, spec: ScenarioSpec) -> Schedule:
        if spec.schedule is not None:
            return spec.schedule
        return steady_schedule(spec.duration_seconds, self.config.hp_rate_per_second, self.config.lp_mode)

    def run_scenario(self, spec: ScenarioSpec, *, target_ms: float, raw_dir: Path, tick: Tick) -> ScenarioRun:
        schedule = self.schedule_for(spec)
        tick(0, spec.duration_seconds, "simulating")
        slo = None
        log = None
        if spec.controlled:
            slo = slo_document(spec, self.config.base_slo, target_ms=target_ms, wiring=self.wiring())
            slo["writers"] = {"static": [writer_url(i) for i in range(self.config.nodes)]}
            validate_slo(slo, str(raw_dir / "slo.yaml"))
            (raw_dir / "slo.yaml").write_text(yaml.safe_dump(slo, sort_keys=False))
            log = DecisionLog(raw_dir / "decisions.jsonl")
        # Every scenario draws the same random numbers (common random numbers): scenarios, sweep steps and
        # oracle probes then differ only in what they control, not in their luck.
        try:
            result = simulate(schedule, self.config, slo=slo, lp=spec.lp, decision_log=log, start=self._clock)
        finally:
            if log is not None:
                log.close()
        _client_csv(result.requests, result.start, raw_dir / "client.csv")
        self._results[spec.name] = result
        self._clock = math.ceil(result.end) + 60.0
        tick(spec.duration_seconds, spec.duration_seconds, "simulated")
        notes = {"backend": "sim", "seed": str(self.config.seed)}
        if spec.schedule is not None:
            notes["schedule"] = spec.schedule.name
        return ScenarioRun(spec.name, result.start, result.end, raw_dir / "client.csv", raw_dir, notes)

    def export(self, run: ScenarioRun) -> Export:
        r = self._results[run.name]
        return Export(series=r.series, histogram=r.histogram, start=r.start, end=r.end, step_seconds=1.0)

    def pause(self, seconds: float, tick: Tick) -> None:
        """Nothing to settle in a model; simulated time already leaves a gap between scenarios."""

    def __enter__(self) -> SimBackend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._results.clear()
