"""Turn exported scenario data into summary.csv, PNG plots and report.md.

Called by the scenario runner (``experiments.scenarios``) after every
scenario (so an interrupted run still leaves a report of what finished) and
by ``run-experiment --report-only``. Everything here is a pure function of
:class:`ScenarioResult` values (frames in, frames / files out): no processes,
no Prometheus, so the tests feed it synthetic frames.

Definitions the report states and the README quotes:

* **Measured period**: a scenario's series after its warm-up.
* **p50/p95/p99_ms**: quantiles over the whole measured period, from the
  difference of the cumulative HP histogram between its ends, interpolated
  within a bucket exactly like PromQL's ``histogram_quantile``.
* **client_p95_ms**: P95 of the load generator's own latencies (requests sent
  in the measured period and answered ok); an independent check on the
  server's histogram. **client_requests** counts every request scheduled in
  the period, those dropped at the in-flight cap included, and
  **client_errors** those not answered ok (errors, timeouts, drops).
* **slo_attainment**: the fraction of evaluation intervals (one per series
  step, 1 s = the controller's interval; each with the P95 over the trailing
  export window) in the measured period, excluding the first
  :data:`SKIPPED_INTERVALS`, whose P95 met the target. An interval without a
  P95 counts as missed, unless HP sent nothing at all in it (a quiet spell of
  a load schedule: nothing to protect).
* **lp_mbps**: mean LP throughput (read + write) in the measured period, in
  MiB/s (2^20 bytes/s, the unit of the throttle sizes ``200M``).
* **oracle**: the best fixed level from the same range (see :func:`oracle_row`):
  bisected (probes ``oracle-N``) when the run had an ``oracle`` scenario,
  else the sweep level with the highest ``lp_mbps`` whose ``p95_ms`` meets
  the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from experiments.convergence import SETTLE_BAND, step_table
from experiments.schedules import Schedule

__all__ = [
    "SUMMARY_COLUMNS",
    "SKIPPED_INTERVALS",
    "HOST_DRIFT_FACTOR",
    "LEVEL_DISAGREEMENT",
    "SUPERSEDED",
    "disagreeing_levels",
    "host_warnings",
    "MIB",
    "ScenarioResult",
    "TargetChoice",
    "histogram_quantile",
    "period_buckets",
    "bucket_bounds",
    "slo_attainment",
    "phase_table",
    "auto_target_ms",
    "summarize",
    "oracle_row",
    "write_plots",
    "write_report",
]

MIB = 1024.0 * 1024.0
#: A fixed level "meets the SLO" for the bisected oracle when its attainment reaches this: the bar drcio is held to.
ORACLE_ATTAINMENT = 0.95
SKIPPED_INTERVALS = 3
SUMMARY_COLUMNS = [
    "scenario",
    "kind",
    "level",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "client_p95_ms",
    "client_requests",
    "client_errors",
    "hp_rps",
    "lp_mbps",
    "rbps_limit_mbps",
    "wbps_limit_mbps",
    "mean_level",
    "slo_target_ms",
    "slo_attainment",
    "source",
    "io_pressure_pct",
    "cpu_pressure_pct",
]
_MAIN_ORDER = ["baseline", "contention", "static-max", "static-weight", "drcio"]
#: The kind of an oracle probe that missed the target far more often than a higher level had (by more than
#: :data:`LEVEL_DISAGREEMENT`) and was run again (``experiments.scenarios.run_plan``): shown in the table, left out
#: of the oracle and of the disagreement check.
SUPERSEDED = "superseded"
_ROW_ORDER = ["baseline", "contention", "static-max", "static-weight", "sweep", "probe", SUPERSEDED, "drcio", "dynamic"]


@dataclass
class ScenarioResult:
    """What one finished scenario left: its exported frames and how to read them.

    series: the export's series frame (``experiments.export.SERIES_COLUMNS``).
    histogram: the export's cumulative histogram frame (timestamp, le, count).
    client: the load generator's requests: ``timestamp`` (send time, unix s),
        ``latency_ms``, ``ok`` (bool).
    kind: baseline | contention | static-max | static-weight | sweep | drcio | dynamic | probe (an oracle
        probe) | superseded (an oracle probe run again, see :data:`SUPERSEDED`).
    level: the fixed level of a sweep step, else None.
    lp: whether the LP batch job ran (a baseline's LP throughput is 0, not unknown).
    """

    name: str
    kind: str
    series: pd.DataFrame
    histogram: pd.DataFrame
    client: pd.DataFrame
    warmup_seconds: float
    lp: bool
    level: float | None = None
    #: Facts recorded by the backend, e.g. ``io_pressure_pct`` (host PSI during the scenario).
    notes: dict[str, str] = field(default_factory=dict)
    #: Load steps (start s, end s, what) of the scenario: its start, and each phase of a load schedule.
    steps: list[tuple[float, float, str]] = field(default_factory=list)
    #: The load schedule the scenario followed, if any (its phases label the report's per-phase table).
    schedule: Schedule | None = None


@dataclass(frozen=True)
class TargetChoice:
    """The SLO target every scenario is judged by, and how it was chosen (stated in the report)."""

    target_ms: float
    how: str


def histogram_quantile(q: float, buckets: pd.Series) -> float:
    """PromQL's ``histogram_quantile`` over cumulative counts indexed by upper bound (``le``).

    Needs a ``+Inf`` bucket; linear interpolation within the bucket holding
    the rank; a rank in the ``+Inf`` bucket returns the highest finite bound.
    NaN when there are no observations.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    b = buckets.sort_index()
    if len(b) < 2 or not math.isinf(float(b.index[-1])):
        return math.nan
    counts = np.maximum.accumulate(b.to_numpy(dtype=float))  # as Prometheus: force monotonic
    bounds = b.index.to_numpy(dtype=float)
    total = counts[-1]
    if not total > 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(counts, rank, side="left"))
    if i >= len(counts) - 1:
        return float(bounds[-2])
    if i == 0 and bounds[0] <= 0:
        return float(bounds[0])
    start, end, count = 0.0, float(bounds[i]), float(counts[i])
    if i > 0:
        start = float(bounds[i - 1])
        count -= counts[i - 1]
        rank -= counts[i - 1]
    return start + (end - start) * (rank / count) if count > 0 else start


def period_buckets(histogram: pd.DataFrame, start: float, end: float) -> pd.Series:
    """Cumulative counts per ``le`` observed between ``start`` and ``end`` (unix s).

    The difference between the last sample at or before ``end`` and the last
    sample at or before ``start`` (the first sample if none is that early).
    """
    if histogram.empty:
        return pd.Series(dtype="float64")
    wide = histogram.pivot_table(index="timestamp", columns="le", values="count", aggfunc="max").sort_index()
    wide = wide.ffill()
    upto_end = wide[wide.index <= end]
    if upto_end.empty:
        return pd.Series(dtype="float64")
    before = wide[wide.index <= start]
    first = before.iloc[-1] if not before.empty else wide.iloc[0]
    delta = (upto_end.iloc[-1] - first).clip(lower=0).fillna(0.0)
    delta.index = delta.index.astype(float)
    return delta


def bucket_bounds(buckets: pd.Series, value: float) -> tuple[float, float]:
    """The (lower, upper] edges of the bucket ``value`` falls in: the resolution of a quantile there."""
    edges = sorted(float(x) for x in buckets.index if math.isfinite(float(x)))
    lower = 0.0
    for edge in edges:
        if value <= edge:
            return lower, edge
        lower = edge
    return lower, math.inf


def _measured(series: pd.DataFrame, warmup_seconds: float) -> pd.DataFrame:
    return series[series["elapsed_seconds"] >= warmup_seconds]


def _counted(series: pd.DataFrame, warmup_seconds: float) -> pd.DataFrame:
    """The intervals ``slo_attainment`` counts: after warm-up, minus the first three, HP not scheduled quiet."""
    rows = _measured(series, warmup_seconds).sort_values("elapsed_seconds").iloc[SKIPPED_INTERVALS:]
    # A scheduled quiet spell (HP sent nothing: rate exactly 0) has nothing to protect and does not count;
    # an interval without a P95 while HP had traffic, or without a rate at all, counts as missed.
    return rows[~rows["hp_request_rate"].eq(0.0)]


def _met(rows: pd.DataFrame, target_ms: float) -> pd.Series:
    return rows["hp_p95_ms"].le(target_ms) & rows["hp_p95_ms"].notna()


def slo_attainment(series: pd.DataFrame, target_ms: float, warmup_seconds: float) -> float:
    """Fraction of intervals after warm-up (minus the first three) whose ``hp_p95_ms`` met ``target_ms``."""
    rows = _counted(series, warmup_seconds)
    if rows.empty:
        return math.nan
    return float(_met(rows, target_ms).mean())


def auto_target_ms(baseline_p95_ms: float, multiple: float, bucket_edges_seconds: Sequence[float]) -> float:
    """``multiple`` x the baseline P95, rounded up to the next histogram bucket edge.

    Rounding to an edge makes "P95 <= target" exact for ``histogram_quantile``
    (no interpolation inside the bucket holding the target).
    """
    if not (math.isfinite(baseline_p95_ms) and baseline_p95_ms > 0):
        raise ValueError(f"the baseline P95 must be a positive number to derive a target, got {baseline_p95_ms!r}")
    raw = multiple * baseline_p95_ms
    edges_ms = sorted(1000.0 * e for e in bucket_edges_seconds if math.isfinite(e) and e > 0)
    for edge in edges_ms:
        if edge >= raw - 1e-9:
            return round(edge, 6)
    return round(raw, 3)


def _mean(series: pd.Series) -> float:
    values = series.dropna()
    return float(values.mean()) if not values.empty else math.nan


def _summary_row(result: ScenarioResult, target_ms: float) -> dict[str, object]:
    measured = _measured(result.series, result.warmup_seconds)
    start = float(result.series["timestamp"].min()) + result.warmup_seconds
    end = float(result.series["timestamp"].max())
    buckets = period_buckets(result.histogram, start, end)
    quantile = {q: 1000.0 * histogram_quantile(q, buckets) if not buckets.empty else math.nan for q in (0.5, 0.95, 0.99)}
    client = result.client[result.client["timestamp"] >= start] if not result.client.empty else result.client
    ok = client[client["ok"].astype(bool)] if not client.empty else client
    client_p95 = float(ok["latency_ms"].quantile(0.95)) if not ok.empty else math.nan
    lp_mbps = _mean(measured["lp_bytes_per_second"]) / MIB if result.lp else 0.0
    return {
        "scenario": result.name,
        "kind": result.kind,
        "level": result.level if result.level is not None else math.nan,
        "p50_ms": quantile[0.5],
        "p95_ms": quantile[0.95],
        "p99_ms": quantile[0.99],
        "client_p95_ms": client_p95,
        "client_requests": int(len(client)),
        "client_errors": int(len(client) - len(ok)),
        "hp_rps": _mean(measured["hp_request_rate"]),
        "lp_mbps": lp_mbps,
        "rbps_limit_mbps": _mean(measured["io_max_rbps"]) / MIB,
        "wbps_limit_mbps": _mean(measured["io_max_wbps"]) / MIB,
        "mean_level": _mean(measured["throttle_level"]),
        "slo_target_ms": target_ms,
        "slo_attainment": slo_attainment(result.series, target_ms, result.warmup_seconds),
        "source": "",
        "io_pressure_pct": _note_number(result.notes, "io_pressure_pct"),
        "cpu_pressure_pct": _note_number(result.notes, "cpu_pressure_pct"),
    }


def _note_number(notes: dict[str, str], key: str) -> float:
    try:
        return float(notes[key])
    except (KeyError, ValueError):
        return math.nan


def oracle_row(summary: pd.DataFrame) -> dict[str, object] | None:
    """The ``oracle`` row: the best fixed level, from the bisection's probes when there are any, else from the sweep.

    Bisection (rows of kind ``probe``): the probe with the most LP throughput
    whose attainment reaches :data:`ORACLE_ATTAINMENT`; ``source`` names it and
    the bracket (the lowest missing probe above it), i.e. the oracle's
    uncertainty. Sweep: the sweep row with the most LP throughput whose
    whole-period P95 meets the target (a grid: off by up to a grid step).
    """
    probes = summary[summary["kind"] == "probe"]
    if not probes.empty:
        met = probes[probes["slo_attainment"] >= ORACLE_ATTAINMENT]
        if met.empty:
            return None
        best = met.sort_values(["lp_mbps", "p95_ms"], ascending=[False, True]).iloc[0].to_dict()
        above = probes[(probes["level"] > best["level"]) & (probes["slo_attainment"] < ORACLE_ATTAINMENT)]
        if above.empty:
            bracket = "no probe above it missed the SLO"
        else:
            upper = above.sort_values("level").iloc[0]
            spread = float(upper["lp_mbps"]) / float(best["lp_mbps"]) - 1 if float(best["lp_mbps"]) > 0 else math.inf
            bracket = f"next miss {upper['scenario']} at level {float(upper['level']):.3f}: uncertainty +{100 * spread:.1f} %"
        best.update(scenario="oracle", kind="oracle", source=f"bisection: {best['scenario']} ({bracket})")
        return best
    sweep = summary[(summary["kind"] == "sweep") & (summary["p95_ms"] <= summary["slo_target_ms"])]
    if sweep.empty:
        return None
    best = sweep.sort_values(["lp_mbps", "p95_ms"], ascending=[False, True]).iloc[0].to_dict()
    best.update(scenario="oracle", kind="oracle", source=str(best["scenario"]))
    return best


def summarize(results: Sequence[ScenarioResult], target: TargetChoice) -> pd.DataFrame:
    """One row per scenario (main scenarios first, sweep by level) plus the ``oracle`` row when one exists."""
    rows = [_summary_row(r, target.target_ms) for r in results]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    order = {k: i for i, k in enumerate(_ROW_ORDER)}
    summary["_order"] = [order.get(k, len(order)) for k in summary["kind"]]
    summary = summary.sort_values(["_order", "level"], kind="stable").drop(columns="_order").reset_index(drop=True)
    oracle = oracle_row(summary)
    if oracle is not None:
        summary = pd.concat([summary, pd.DataFrame([oracle], columns=SUMMARY_COLUMNS)], ignore_index=True)
    return summary


# --------------------------------------------------------------------------- plots


#: Margins of every plot, in inches: room for the y tick labels and label (left), a title (top), the x tick
#: labels and label (bottom) and, between stacked axes, the next one's title. Fixed rather than
#: matplotlib's constrained layout, which took about half of a report's plotting time.
_MARGIN_IN = {"left": 0.85, "right": 0.2, "top": 0.4, "bottom": 0.55, "gap": 0.45}


def _new_axes(rows: int, *, width: float = 10.0, row_height: float = 2.6) -> tuple[Figure, list[Axes]]:
    """A figure with ``rows`` axes stacked, sharing x."""
    height = max(3.0, row_height * rows)
    fig = Figure(figsize=(width, height))
    m = _MARGIN_IN
    axes_height = (height - m["top"] - m["bottom"] - (rows - 1) * m["gap"]) / rows
    fig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width, top=1 - m["top"] / height,
                        bottom=m["bottom"] / height, hspace=m["gap"] / axes_height)
    return fig, list(fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])


def _log_axis(ax: Axes, which: str, scale: str = "log", **kwargs: float) -> None:
    """Make ``ax``'s ``which`` axis ("x" or "y") log (or symlog), labelled in plain numbers: 20, not 2 x 10^1.

    Matplotlib's default log labels are mathtext: harder to read for
    milliseconds and MiB/s, and slower to lay out (the report tests' five
    figures: 3.4 s with them, 2.9 s without).
    """
    (ax.set_xscale if which == "x" else ax.set_yscale)(scale, **kwargs)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def _plot_latency_axes(ax: Axes, result: ScenarioResult, target_ms: float) -> None:
    s = result.series
    for column, label in (("hp_p50_ms", "P50"), ("hp_p95_ms", "P95"), ("hp_p99_ms", "P99")):
        ax.plot(s["elapsed_seconds"], s[column], label=label, linewidth=1.2 if column == "hp_p95_ms" else 0.8)
    ax.axhline(target_ms, color="red", linestyle="--", linewidth=1, label=f"SLO {target_ms:.4g} ms")
    ax.axvspan(0, result.warmup_seconds, color="grey", alpha=0.15, label="warm-up")
    _log_axis(ax, "y")
    ax.set_ylabel("HP latency (ms)")
    title = result.name if result.level is None else f"{result.name} (level {result.level:.3f})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _latency_figure(results: Sequence[ScenarioResult], target_ms: float, path: Path) -> Path | None:
    if not results:
        return None
    fig, axes = _new_axes(len(results))
    for ax, result in zip(axes, results):
        _plot_latency_axes(ax, result, target_ms)
    axes[0].legend(loc="upper right", fontsize=8, ncol=5)
    axes[-1].set_xlabel("time since scenario start (s)")
    fig.savefig(path, dpi=110)
    return path


def _throttle_figure(results: Sequence[ScenarioResult], path: Path) -> Path | None:
    controlled = [r for r in results if r.series["throttle_level"].notna().any() and r.kind != "sweep"]
    if not controlled:
        return None
    fig, (ax_level, ax_limit) = _new_axes(2)
    for r in controlled:
        s = r.series
        ax_level.step(s["elapsed_seconds"], s["throttle_level"], where="post", label=r.name)
        for column, style in (("io_max_rbps", "-"), ("io_max_wbps", ":")):
            if s[column].notna().any():
                ax_limit.step(s["elapsed_seconds"], s[column] / MIB, style, where="post", label=f"{r.name} {column[-4:]}")
    ax_level.set_ylabel("LP level (0 = floor, 1 = ceiling)")
    ax_level.set_ylim(-0.05, 1.05)
    ax_level.legend(fontsize=8)
    ax_level.grid(True, alpha=0.3)
    _log_axis(ax_limit, "y")
    ax_limit.set_ylabel("io.max in force (MiB/s)")
    ax_limit.set_xlabel("time since scenario start (s)")
    if ax_limit.get_legend_handles_labels()[0]:
        ax_limit.legend(fontsize=8, ncol=2)
    ax_limit.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def _lp_figure(results: Sequence[ScenarioResult], path: Path) -> Path | None:
    with_lp = [r for r in results if r.lp and r.kind != "sweep"]
    if not with_lp:
        return None
    fig, (ax,) = _new_axes(1, row_height=4.0)
    for r in with_lp:
        ax.plot(r.series["elapsed_seconds"], r.series["lp_bytes_per_second"] / MIB, label=r.name)
    _log_axis(ax, "y", "symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("LP throughput (MiB/s, read + write)")
    ax.set_xlabel("time since scenario start (s)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def _frontier_figure(summary: pd.DataFrame, target_ms: float, path: Path) -> Path | None:
    sweep = summary[summary["kind"] == "sweep"].sort_values("lp_mbps")
    if sweep.empty:
        return None
    fig, (ax,) = _new_axes(1, row_height=5.0, width=8.0)
    ax.plot(sweep["lp_mbps"], sweep["p95_ms"], "o-", color="tab:blue", label="fixed limits (sweep)")
    for _, row in sweep.iterrows():
        ax.annotate(f"{row['level']:.2f}", (row["lp_mbps"], row["p95_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    markers = {"drcio": ("*", "tab:green", 16), "static-max": ("s", "tab:orange", 8),
               "static-weight": ("D", "tab:purple", 8), "contention": ("x", "tab:red", 9), "baseline": ("P", "black", 9)}
    for kind, (marker, color, size) in markers.items():
        rows = summary[summary["kind"] == kind]
        if not rows.empty:
            ax.plot(rows["lp_mbps"], rows["p95_ms"], marker, color=color, markersize=size, linestyle="none", label=kind)
    oracle = summary[summary["kind"] == "oracle"]
    if not oracle.empty:
        ax.plot(oracle["lp_mbps"], oracle["p95_ms"], "o", markersize=16, markerfacecolor="none",
                markeredgecolor="tab:green", label=f"oracle ({oracle['source'].iloc[0]})")
    ax.axhline(target_ms, color="red", linestyle="--", linewidth=1, label=f"SLO {target_ms:.4g} ms")
    _log_axis(ax, "x", "symlog", linthresh=1.0)
    ax.set_xlim(left=0)  # throughput is never negative; symlog would otherwise show negative decades
    _log_axis(ax, "y")
    ax.set_xlabel("LP throughput (MiB/s)")
    ax.set_ylabel("HP P95 over the measured period (ms)")
    ax.set_title("Static frontier and drcio's operating point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def write_plots(results: Sequence[ScenarioResult], summary: pd.DataFrame, target_ms: float, out: Path) -> dict[str, Path]:
    """Write every plot that has data; returns name -> path of the PNGs written."""
    out.mkdir(parents=True, exist_ok=True)
    main = sorted((r for r in results if r.kind != "sweep"), key=lambda r: _MAIN_ORDER.index(r.kind) if r.kind in _MAIN_ORDER else 99)
    sweep = sorted((r for r in results if r.kind == "sweep"), key=lambda r: r.level or 0.0)
    written = {
        "latency": _latency_figure(main, target_ms, out / "latency.png"),
        "sweep-latency": _latency_figure(sweep, target_ms, out / "sweep-latency.png"),
        "throttle": _throttle_figure(results, out / "throttle.png"),
        "lp-throughput": _lp_figure(results, out / "lp-throughput.png"),
        "frontier": _frontier_figure(summary, target_ms, out / "frontier.png"),
    }
    return {k: v for k, v in written.items() if v is not None}


# --------------------------------------------------------------------------- report.md


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:  # a column with no number in it (no violation, so no reaction) stays of object dtype
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def _markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c], 3 if c in ("level", "slo_attainment", "mean_level") else 2) for c in columns) + " |")
    return "\n".join(lines)


def _row(summary: pd.DataFrame, scenario: str) -> pd.Series | None:
    rows = summary[summary["scenario"] == scenario]
    return rows.iloc[0] if not rows.empty else None


#: Baseline I/O pressure (PSI, %) above which the report warns that something else used the disk:
#: the HP service alone stalls on I/O only a few % of the time (measured 5 % on the dev VM).
BUSY_BASELINE_IO_PRESSURE_PCT = 20.0


#: HP alone before and after a run (``all`` and ``dynamic`` end with a second baseline): P95s further apart than
#: this factor mean the host itself changed during the run. Two buckets of the HP histogram (edges x1.18 apart)
#: are x1.39; on the dev VM HP alone drifted 2-4x within 20 minutes (README, local dynamic runs).
HOST_DRIFT_FACTOR = 1.5


@dataclass(frozen=True)
class _HostDrift:
    """HP alone's P95 (ms) in the first and the last baseline of a run."""

    first_ms: float
    last_ms: float

    @property
    def ratio(self) -> float:
        return self.last_ms / self.first_ms

    @property
    def steady(self) -> bool:
        return 1 / HOST_DRIFT_FACTOR <= self.ratio <= HOST_DRIFT_FACTOR


def _host_drift(summary: pd.DataFrame) -> _HostDrift | None:
    """HP alone at the start and the end of the run; None without two baselines with a P95."""
    alone = summary[summary["kind"] == "baseline"]
    if len(alone) < 2:
        return None
    first, last = float(alone.iloc[0]["p95_ms"]), float(alone.iloc[-1]["p95_ms"])
    return _HostDrift(first, last) if first > 0 and last > 0 else None


#: The oracle's probes whose attainments run the wrong way by more than this (a lower level meeting the target in a
#: smaller share of intervals than a higher one) mean the host changed between them: LP held to a lower limit cannot
#: slow HP down more. Around 95 %, a share has a binomial spread of about 1.6 points over a dynamic schedule's ~190
#: intervals and 3.9 over a steady probe's ~32, so 10 points is outside noise. (The sweep's levels are not compared:
#: 20 s each, ~12 intervals, where one interval is 8 points.)
LEVEL_DISAGREEMENT = 0.10


def disagreeing_levels(summary: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
    """The oracle's probes that disagree most: (lower level, higher level), or None.

    "Disagree": the lower level met the target in a share of intervals more
    than :data:`LEVEL_DISAGREEMENT` below the higher level's. The bisection
    takes more level for more latency, so such a pair means its oracle, and
    every comparison with it, met a host that changed between the runs.
    """
    fixed = summary[summary["kind"] == "probe"].dropna(subset=["level", "slo_attainment"])
    worst: tuple[float, pd.Series, pd.Series] | None = None
    for _, low in fixed.iterrows():
        for _, high in fixed.iterrows():
            gap = float(high["slo_attainment"]) - float(low["slo_attainment"])
            if float(low["level"]) < float(high["level"]) and gap > LEVEL_DISAGREEMENT and (worst is None or gap > worst[0]):
                worst = (gap, low, high)
    return None if worst is None else (worst[1], worst[2])


def host_warnings(summary: pd.DataFrame) -> list[str]:
    """The warnings and notes the report opens with: a busy or drifting host, probes run again or disagreeing."""
    out: list[str] = []
    base = _row(summary, "baseline")
    if base is not None and float(base["io_pressure_pct"]) > BUSY_BASELINE_IO_PRESSURE_PCT:
        out.append(f"**Warning: the host was busy.** During the baseline (HP alone) some task waited for the disk "
                   f"{float(base['io_pressure_pct']):.0f} % of the time (PSI; HP alone is normally well under "
                   f"{BUSY_BASELINE_IO_PRESSURE_PCT:.0f} %): another workload shared the disk, so the baseline, the "
                   "target derived from it and every comparison here are unreliable. Rerun on a quiet host.")
    drift = _host_drift(summary)
    if drift is not None and not drift.steady:
        out.append(f"**Warning: the host changed during the run.** HP alone had a P95 of {drift.first_ms:.2f} ms at "
                   f"the start and {drift.last_ms:.2f} ms at the end ({drift.ratio:.3f}x; within "
                   f"{HOST_DRIFT_FACTOR:g}x is taken as the same host): scenarios run at different times met "
                   "different hosts, so the comparisons between them (drcio against the fixed limits and the "
                   "oracle) are unreliable. Rerun, and compare runs made on a steady host.")
    probes = summary[summary["kind"] == "probe"]
    for _, first in summary[summary["kind"] == SUPERSEDED].iterrows():
        level, attained = float(first["level"]), float(first["slo_attainment"])
        higher = probes[probes["level"] > level].sort_values("slo_attainment", ascending=False)
        rerun = probes[probes["level"] == level]
        if higher.empty or rerun.empty:
            continue
        top, again = higher.iloc[0], rerun.iloc[0]
        said = (f"**Note: a probe of the oracle was run again.** {first['scenario']} (level {level:.3g}) met the "
                f"target in {attained:.1%} of intervals, more than {100 * LEVEL_DISAGREEMENT:g} points fewer than "
                f"{top['scenario']} at the higher level {float(top['level']):.3g} "
                f"({float(top['slo_attainment']):.1%}). LP held to a lower limit cannot have caused that")
        if float(top["slo_attainment"]) - float(again["slo_attainment"]) <= LEVEL_DISAGREEMENT:
            out.append(f"{said}, so the host stalled during it: the same level ran again as {again['scenario']} "
                       f"({float(again['slo_attainment']):.1%}), which the oracle uses.")
        else:  # the rerun disagrees too: the host was off for longer than one run, and the warning below says so
            out.append(f"{said}. The same level ran again as {again['scenario']}, which the oracle uses, and met it "
                       f"in {float(again['slo_attainment']):.1%} of intervals: still more than "
                       f"{100 * LEVEL_DISAGREEMENT:g} points fewer, so the host was off for longer than one run "
                       "(see the warning below).")
    if (pair := disagreeing_levels(summary)) is not None:
        low, high = pair
        out.append(f"**Warning: the fixed levels disagree.** {high['scenario']} (level {float(high['level']):.3g}) met "
                   f"the target in {float(high['slo_attainment']):.1%} of intervals, but {low['scenario']} at the "
                   f"lower level {float(low['level']):.3g} only in {float(low['slo_attainment']):.1%}. LP held to a "
                   "lower limit cannot have caused that: the host changed between those runs, so the best fixed "
                   "level found (which takes more level for more latency) and every comparison with it are "
                   "unreliable. Rerun on a steady host.")
    return out


def _without_oracle(summary: pd.DataFrame) -> str:
    """Why there is no oracle: the lowest fixed level tried, and how often even it met the target."""
    fixed = summary[summary["kind"].isin(["sweep", "probe"])]
    low = fixed.loc[fixed["level"].astype(float).idxmin()]
    return (f"no fixed level met the target (the lowest tried, {low['scenario']} at level {float(low['level']):.3g} "
            f"with LP at {float(low['lp_mbps']):.1f} MiB/s, met it in {float(low['slo_attainment']):.1%} of intervals)")


def _checks(summary: pd.DataFrame) -> list[str]:
    """The acceptance figures (and whether the host held still), computed, with the threshold beside each."""
    out: list[str] = []
    if (drift := _host_drift(summary)) is not None:
        out.append(f"- HP alone at the start and the end of the run: P95 {drift.first_ms:.2f} ms, then "
                   f"{drift.last_ms:.2f} ms ({drift.ratio:.3f}x; wanted within {HOST_DRIFT_FACTOR:g}x, so that "
                   f"scenarios run at different times compare like with like): {'met' if drift.steady else 'NOT met'}")
    base, cont = _row(summary, "baseline"), _row(summary, "contention")
    drcio, oracle = _row(summary, "drcio"), _row(summary, "oracle")
    if base is not None and cont is not None:
        ratio = float(cont["p95_ms"]) / float(base["p95_ms"])
        out.append(f"- contention P95 / baseline P95 = {ratio:.1f}x (wanted >= 2x): {'met' if ratio >= 2 else 'NOT met'}")
    # The verdicts against the oracle stand as computed, but not as measured, when the host moved under the run:
    # between its baselines, or between the oracle's probes.
    doubts = [why for why, holds in (("the host changed during the run", drift is not None and not drift.steady),
                                     ("the fixed levels disagree", disagreeing_levels(summary) is not None)) if holds]
    doubt = (f" (unreliable: {' and '.join(doubts)}, see the warning{'s' if len(doubts) > 1 else ''} above)"
             if doubts else "")
    if drcio is not None:
        att = float(drcio["slo_attainment"])
        out.append(f"- drcio met the target in {att:.1%} of intervals after warm-up and the first {SKIPPED_INTERVALS} "
                   f"(wanted >= 90 %): {'met' if att >= 0.9 else 'NOT met'}")
        if oracle is not None:
            share = float(drcio["lp_mbps"]) / float(oracle["lp_mbps"]) if float(oracle["lp_mbps"]) > 0 else math.nan
            out.append(f"- drcio LP throughput = {share:.1%} of the oracle's ({oracle['source']}, "
                       f"{float(oracle['lp_mbps']):.1f} MiB/s) (wanted >= 90 %): {'met' if share >= 0.9 else 'NOT met'}"
                       f"{doubt}")
        elif (summary["kind"].isin(["sweep", "probe"])).any():
            out.append(f"- {_without_oracle(summary)}, so there is no oracle to compare drcio with")
    for _, dyn in summary[summary["kind"] == "dynamic"].iterrows():
        att = float(dyn["slo_attainment"])
        out.append(f"- {dyn['scenario']}: drcio met the target in {att:.1%} of intervals (wanted >= 95 %): "
                   f"{'met' if att >= 0.95 else 'NOT met'}")
        if oracle is not None and float(oracle["lp_mbps"]) > 0:
            share = float(dyn["lp_mbps"]) / float(oracle["lp_mbps"])
            out.append(f"- {dyn['scenario']}: drcio moved {share:.1%} of the LP bytes of the best fixed level over "
                       f"the same schedule ({oracle['source']}) (wanted >= 110 %): {'met' if share >= 1.1 else 'NOT met'}"
                       f"{doubt}")
        elif oracle is None and (summary["kind"] == "probe").any():
            out.append(f"- {dyn['scenario']}: {_without_oracle(summary)} over the same schedule, so drcio's LP bytes "
                       "have no best fixed limit to be compared with (wanted >= 110 % of it): not measured in this run")
    runs = summary[summary["kind"] == "dynamic"]
    if len(runs) > 1 and oracle is not None and float(oracle["lp_mbps"]) > 0:
        # drcio before and after the oracle's probes (PlanConfig.drcio_after): their mean stands for drcio at the
        # time the probes ran, whichever way the host drifted in between (an A-B-A comparison).
        moved = [float(v) for v in runs["lp_mbps"]]
        mean = sum(moved) / len(moved)
        share = mean / float(oracle["lp_mbps"])
        apart = max(moved) / min(moved) if min(moved) > 0 else math.inf
        out.append(f"- drcio's runs before and after the oracle's probes ({', '.join(runs['scenario'])}) moved "
                   f"{' and '.join(f'{v:.1f}' for v in moved)} MiB/s ({apart:.2f}x apart) and met the target in "
                   f"{' and '.join(f'{float(v):.1%}' for v in runs['slo_attainment'])} of intervals; their mean, "
                   f"{mean:.1f} MiB/s, is {share:.1%} of the LP bytes of the best fixed level over the same schedule "
                   f"(wanted >= 110 %): {'met' if share >= 1.1 else 'NOT met'}{doubt}")
    return out


def _convergence(results: Sequence[ScenarioResult], target_ms: float) -> list[str]:
    """Per closed-loop scenario, settling and reaction for every load step (:mod:`experiments.convergence`)."""
    out: list[str] = []
    for r in results:
        if r.kind not in ("drcio", "dynamic") or not r.steps or math.isnan(target_ms):
            continue
        table = step_table(r.series, r.steps, target_ms)
        if not out:
            out += ["## Convergence", "",
                    "Per load step: `settling_intervals` until the level stays within "
                    f"{SETTLE_BAND:g} of where the phase ends; `slo_settling_intervals` until the P95 meets the "
                    "target for the rest of the phase; `worst_reaction_intervals` from a violation's onset to a "
                    "tighter limit in force (-1: none came). The issue's bar: settled within 10 intervals.", ""]
        out += [f"### {r.name}", "", _markdown_table(table, list(table.columns)), ""]
    return out


def phase_table(results: Sequence[ScenarioResult], summary: pd.DataFrame, target_ms: float) -> pd.DataFrame:
    """drcio's runs and the oracle's fixed levels phase by phase, over the schedule they all followed.

    One row per phase of the schedule (``phase``: what LP and HP do; ``seconds``: when). For each dynamic run
    (drcio), then the oracle's probe and the lowest probe above it that missed the SLO (the oracle's
    bracket), three columns: the mean level and LP's MiB/s over the phase's 1 s rows after the warm-up, as the
    summary's ``mean_level`` and ``lp_mbps`` are taken over the run's (so the phases' MiB/s, weighted by their
    rows, give the run's), and ``missed`` = intervals over the target / intervals counted, counted as
    ``slo_attainment`` counts them (so a run's ``missed`` adds up to its attainment). Empty when no dynamic run
    followed a schedule.
    """
    runs = [r for r in results if r.kind == "dynamic" and r.schedule is not None]
    if not runs:
        return pd.DataFrame()
    schedule = runs[0].schedule
    assert schedule is not None
    oracle = summary[summary["scenario"] == "oracle"]
    if not oracle.empty:
        probes = summary[summary["kind"] == "probe"]
        level = float(oracle["level"].iloc[0])
        chosen = probes[(probes["level"] == level) & (probes["lp_mbps"] == float(oracle["lp_mbps"].iloc[0]))]
        above = probes[(probes["level"] > level) & (probes["slo_attainment"] < ORACLE_ATTAINMENT)].sort_values("level")
        names = [*chosen["scenario"].iloc[:1], *above["scenario"].iloc[:1]]
        runs += [r for name in names for r in results if r.name == name and r.schedule == schedule]
    bounds = [(a, b) for a, b, _ in schedule.segments()]
    table: dict[str, list[str]] = {
        "phase": [p.label for p in schedule.phases],
        "seconds": [f"{a:g}-{b:g}" for a, b in bounds],
    }
    spans = [*bounds[:-1], (bounds[-1][0], math.inf)]  # the row at the schedule's end belongs to its last phase
    for r in runs:
        measured = _measured(r.series, r.warmup_seconds)
        counted = _counted(r.series, r.warmup_seconds)
        levels: list[str] = []
        mbps: list[str] = []
        missed: list[str] = []
        for a, b in spans:
            inside = measured[(measured["elapsed_seconds"] >= a) & (measured["elapsed_seconds"] < b)]
            judged = counted[(counted["elapsed_seconds"] >= a) & (counted["elapsed_seconds"] < b)]
            level, lp = _mean(inside["throttle_level"]), _mean(inside["lp_bytes_per_second"]) / MIB
            levels.append(f"{level:.3f}" if not math.isnan(level) else "–")
            mbps.append(f"{lp:.1f}" if not math.isnan(lp) else "–")
            missed.append(f"{int((~_met(judged, target_ms)).sum())}/{len(judged)}")
        table[f"{r.name} level"], table[f"{r.name} MiB/s"], table[f"{r.name} missed"] = levels, mbps, missed
    return pd.DataFrame(table)


def _phases(results: Sequence[ScenarioResult], summary: pd.DataFrame, target_ms: float) -> list[str]:
    """The report's per-phase section (:func:`phase_table`), when a dynamic run followed a schedule."""
    table = phase_table(results, summary, target_ms)
    if table.empty or math.isnan(target_ms):
        return []
    return ["## Per phase", "",
            "Where drcio's LP came from and where it missed, phase by phase, beside the oracle's fixed level "
            "(and the lowest level above it that missed the SLO): mean level and LP MiB/s (means of the 1 s "
            "series after the warm-up, as in the summary), and intervals over the target / intervals counted "
            "(as `slo_attainment` counts them).", "",
            _markdown_table(table, list(table.columns)), ""]


def write_report(
    out: Path,
    results: Sequence[ScenarioResult],
    target: TargetChoice,
    *,
    run_info: dict[str, str] | None = None,
    pending: Sequence[str] = (),
) -> pd.DataFrame:
    """Write ``summary.csv``, the plots and ``report.md`` into ``out``; returns the summary frame.

    ``pending`` names scenarios planned but not (yet) run, so a report from an
    interrupted run says what is missing.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, target)
    summary.to_csv(out / "summary.csv", index=False)
    plots = write_plots(results, summary, target.target_ms, out)

    lines = ["# drcio experiment report", ""]
    for key, value in (run_info or {}).items():
        lines.append(f"- **{key}**: {value}")
    lines += ["", "## SLO target", "",
              f"**{target.target_ms:.4g} ms** (HP P95). Chosen: {target.how}.", ""]
    lines += ["## Results", "", _markdown_table(summary, [
        "scenario", "level", "p50_ms", "p95_ms", "p99_ms", "client_p95_ms", "hp_rps",
        "lp_mbps", "rbps_limit_mbps", "wbps_limit_mbps", "mean_level", "slo_attainment",
        "io_pressure_pct", "cpu_pressure_pct"]), ""]
    lines += [
        "Quantiles are over each scenario's measured period (after warm-up) from the server's histogram; "
        "`client_p95_ms` is the load generator's own measurement. `slo_attainment` is the fraction of 1 s "
        f"intervals (P95 over the trailing window) after warm-up, excluding the first {SKIPPED_INTERVALS}, "
        "whose P95 met the target. `lp_mbps` is MiB/s (read + write). The `oracle` row is the best fixed "
        f"level: bisected (probes `oracle-N`, a probe meets the SLO at attainment >= {ORACLE_ATTAINMENT:.0%}; "
        "its source names the bracket, i.e. the oracle's uncertainty) or else the sweep level with the most LP "
        "throughput whose P95 meets the target. `io_pressure_pct` / `cpu_pressure_pct`: "
        "share of the scenario's wall time in which some task waited for the disk / a CPU (Linux PSI), "
        "the experiment's own processes included; high values in the baseline mean something else "
        "loaded the host during the run.", ""]
    warnings = host_warnings(summary)
    if warnings:
        lines[2:2] = [line for warning in warnings for line in (warning, "")]
    checks = _checks(summary)
    if checks:
        lines += ["## Against the acceptance figures", "", *checks, ""]
    lines += _phases(results, summary, target.target_ms)
    lines += _convergence(results, target.target_ms)
    if pending:
        lines += ["## Not run", "", "Planned but not run (interrupted or failed): " + ", ".join(pending) + ".", ""]
    captions = {
        "latency": "HP latency over time per scenario, SLO target dashed, warm-up shaded.",
        "throttle": "Throttle level and the io.max in force (controlled scenarios).",
        "lp-throughput": "LP throughput over time.",
        "frontier": "Static frontier: HP P95 against LP throughput for each fixed level of the sweep "
                    "(labels = level), with drcio's operating point and the other scenarios.",
        "sweep-latency": "HP latency over time for each sweep level.",
    }
    if plots:
        lines += ["## Plots", ""]
        for name in ("frontier", "latency", "throttle", "lp-throughput", "sweep-latency"):
            if name in plots:
                lines += [f"### {name}", "", captions[name], "", f"![{name}]({plots[name].name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return summary
