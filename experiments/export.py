"""Export the experiment's time series from a Prometheus into pandas / CSV.

Called by the scenario runner (``experiments.scenarios``) after every
scenario, with the scenario's time range, and by ``export-metrics`` against
any Prometheus. Both go through :func:`export_range`, so a user who scrapes
the same components elsewhere (a cluster's kube-prometheus-stack) gets the
same columns the local experiment writes.

Two frames come out of one export:

* the **series** frame, one row per ``step`` (default 1 s, the controller's
  interval), columns in :data:`SERIES_COLUMNS`: HP P50/P95/P99 over a
  trailing ``window``, the HP request rate, LP bytes/s (total, read, write),
  the controller's level for the LP group, the ``io.max`` in force, and the
  controller's own view (observed P95, target). A series that does not exist
  in this Prometheus (no controller in the baseline) is a column of NaN, never
  left out, so every CSV has the same header.
* the **histogram** frame: the cumulative ``gnn_request_latency_seconds``
  bucket counts per ``le`` and timestamp (long format). The report computes
  whole-period quantiles from it exactly as ``histogram_quantile`` does, and
  knows the bucket edges (the resolution of every server-side quantile).

The quantiles use ``rate(...[window])`` at every step: overlapping windows,
which is what a controller with that window sees at each tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

__all__ = [
    "SERIES_COLUMNS",
    "HISTOGRAM_COLUMNS",
    "ExportError",
    "SeriesQueries",
    "Export",
    "export_range",
    "write_export",
]

#: Columns of the series CSV, in order. Latencies in ms, throughput in bytes/s.
SERIES_COLUMNS = [
    "timestamp",
    "elapsed_seconds",
    "hp_p50_ms",
    "hp_p95_ms",
    "hp_p99_ms",
    "hp_request_rate",
    "lp_bytes_per_second",
    "lp_read_bytes_per_second",
    "lp_write_bytes_per_second",
    "throttle_level",
    "io_max_rbps",
    "io_max_wbps",
    "controller_p95_ms",
    "slo_target_ms",
]
HISTOGRAM_COLUMNS = ["timestamp", "le", "count"]

#: Prometheus refuses range queries of more than 11 000 points per series.
_MAX_POINTS = 10_000


class ExportError(RuntimeError):
    """Prometheus could not be queried or answered something unusable; the message says which query and why."""


def _matcher(*parts: str) -> str:
    inner = ",".join(p for p in parts if p)
    return "{" + inner + "}" if inner else ""


@dataclass(frozen=True)
class SeriesQueries:
    """Which PromQL produces each column.

    window_seconds: the trailing window of every ``rate``. 5 s = five scrapes
        at the 1 s scrape interval: enough requests for a P95 at the load
        levels' rates, short enough to show a violation within seconds.
    hp_matcher / lp_matcher / group_matcher: extra label matchers (PromQL
        syntax without braces, e.g. ``job="hp-gnn"``) selecting the HP service,
        the LP batch job and the LP group among the controller's and writer's
        series. Empty = every series of that name.
    """

    window_seconds: float = 5.0
    hp_matcher: str = ""
    lp_matcher: str = ""
    group_matcher: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_seconds) and self.window_seconds >= 1):
            raise ValueError(f"window_seconds must be >= 1, got {self.window_seconds!r}")

    @property
    def window(self) -> str:
        return f"{int(round(self.window_seconds * 1000))}ms"

    def series(self) -> dict[str, str]:
        """Column name -> PromQL, for every column of :data:`SERIES_COLUMNS` that comes from Prometheus."""
        w = self.window
        hp = _matcher(self.hp_matcher)
        buckets = f"sum by (le) (rate(gnn_request_latency_seconds_bucket{hp}[{w}]))"
        group = _matcher(self.group_matcher)

        def lp(op: str = "") -> str:
            return f"sum(rate(batch_io_bytes_total{_matcher(self.lp_matcher, op)}[{w}]))"

        def leaders(selector: str) -> str:
            # Every replica steps its policies and exports what it decided; only the leader's is in force.
            return f"({selector} and on (job, instance) (drcio_controller_leader == 1))"

        def io_max(direction: str) -> str:
            # The tightest limit over the group's devices; unlimited keys are not exported by the writer.
            return f"min(drcio_io_max_bytes_per_second{_matcher(self.group_matcher, direction)})"

        return {
            "hp_p50_ms": f"1000 * histogram_quantile(0.5, {buckets})",
            "hp_p95_ms": f"1000 * histogram_quantile(0.95, {buckets})",
            "hp_p99_ms": f"1000 * histogram_quantile(0.99, {buckets})",
            "hp_request_rate": f"sum(rate(gnn_requests_total{hp}[{w}]))",
            "lp_bytes_per_second": lp(),
            "lp_read_bytes_per_second": lp('op="read"'),
            "lp_write_bytes_per_second": lp('op="write"'),
            # Several SLOs may govern one group; the most restrictive level is the one in force.
            "throttle_level": f"min{leaders(f'drcio_controller_level{group}')}",
            "io_max_rbps": io_max('direction="read"'),
            "io_max_wbps": io_max('direction="write"'),
            "controller_p95_ms": f"1000 * max{leaders('drcio_controller_observed_latency_seconds')}",
            "slo_target_ms": f"1000 * max{leaders('drcio_controller_target_latency_seconds')}",
        }

    def histogram(self) -> str:
        return f"sum by (le) (gnn_request_latency_seconds_bucket{_matcher(self.hp_matcher)})"


@dataclass
class Export:
    """One exported time range: the series frame and the cumulative histogram frame."""

    series: pd.DataFrame
    histogram: pd.DataFrame
    start: float
    end: float
    step_seconds: float


def _step_for(start: float, end: float, step_seconds: float) -> float:
    points = (end - start) / step_seconds
    return step_seconds if points <= _MAX_POINTS else math.ceil((end - start) / _MAX_POINTS)


def _query_range(
    prom: PrometheusConnect, url: str, query: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    try:
        result = prom.custom_query_range(
            query,
            start_time=datetime.fromtimestamp(start, tz=timezone.utc),
            # The client rounds to a second: rounded up, the range still holds the grid's last point.
            end_time=datetime.fromtimestamp(math.ceil(end), tz=timezone.utc),
            step=f"{step:g}",  # seconds as a number: Prometheus' duration syntax has no fractions ("1.5s")
        )
    except requests.exceptions.RequestException as exc:
        raise ExportError(f"cannot reach Prometheus at {url}: {exc.__class__.__name__}: {exc}") from exc
    except PrometheusApiClientException as exc:
        raise ExportError(f"Prometheus at {url} refused the query {query!r}: {exc}") from exc
    if not isinstance(result, list):
        raise ExportError(f"Prometheus at {url} answered {query!r} with {type(result).__name__}, expected a matrix")
    return result


def _values(series: dict[str, Any]) -> pd.Series:
    pairs = series.get("values", [])
    index = pd.Index([float(t) for t, _ in pairs], name="timestamp")
    return pd.Series([float(v) for _, v in pairs], index=index, dtype="float64")


def export_range(
    url: str,
    start: float,
    end: float,
    *,
    queries: SeriesQueries | None = None,
    step_seconds: float = 1.0,
    timeout_seconds: float = 30.0,
) -> Export:
    """Query ``[start, end]`` (unix seconds) from the Prometheus at ``url``.

    Raises :class:`ExportError` when Prometheus is unreachable or refuses a
    query; a query that simply matches nothing yields a NaN column.
    """
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise ExportError(f"export range must have end > start, got start={start!r} end={end!r}")
    if not step_seconds > 0:
        raise ExportError(f"step must be > 0 seconds, got {step_seconds!r}")
    queries = queries or SeriesQueries()
    step = _step_for(start, end, step_seconds)
    # Align to whole steps so every query returns the same timestamps, starting on a whole second:
    # prometheus_api_client sends start and end rounded to seconds, and Prometheus' grid is start + i * step.
    start = math.floor(math.floor(start / step) * step)
    points = math.ceil((end - start) / step - 1e-9)
    end = start + points * step
    # One quick retry rides out a blip; the client's default (several, with back-off) makes a
    # wrong URL take many seconds to report.
    retry = Retry(total=1, backoff_factor=0.1, status_forcelist=(502, 503, 504), allowed_methods=None)
    prom = PrometheusConnect(url=url, disable_ssl=True, timeout=int(max(1, timeout_seconds)), retry=retry)
    index = pd.Index([start + i * step for i in range(points + 1)], name="timestamp")

    frame = pd.DataFrame(index=index)
    for column, promql in queries.series().items():
        result = _query_range(prom, url, promql, start, end, step)
        # Aggregated queries return at most one series; take the first if a user's PromQL returns more.
        values = _values(result[0]) if result else pd.Series(dtype="float64")
        # Nearest within a tenth of a step: a fractional step's timestamps are not exact binary fractions.
        frame[column] = values.reindex(index, method="nearest", tolerance=step / 10) if len(values) else math.nan
    frame = frame.reset_index()
    frame.insert(1, "elapsed_seconds", frame["timestamp"] - start)
    series = frame[SERIES_COLUMNS]

    rows: list[pd.DataFrame] = []
    for hist in _query_range(prom, url, queries.histogram(), start, end, step):
        le = hist.get("metric", {}).get("le")
        if le is None:
            continue
        values = _values(hist)
        rows.append(pd.DataFrame({"timestamp": values.index, "le": float(le), "count": values.to_numpy()}))
    histogram = (
        pd.concat(rows, ignore_index=True).sort_values(["timestamp", "le"], ignore_index=True)
        if rows
        else pd.DataFrame({c: pd.Series(dtype="float64") for c in HISTOGRAM_COLUMNS})
    )
    return Export(series=series, histogram=histogram, start=start, end=end, step_seconds=step)


def write_export(export: Export, series_csv: Path, histogram_csv: Path | None = None) -> None:
    """Write the series (and optionally the histogram) as CSV, creating parent directories."""
    series_csv.parent.mkdir(parents=True, exist_ok=True)
    export.series.to_csv(series_csv, index=False)
    if histogram_csv is not None:
        histogram_csv.parent.mkdir(parents=True, exist_ok=True)
        export.histogram.to_csv(histogram_csv, index=False)
