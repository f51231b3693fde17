"""export.py and export-metrics against a real Prometheus scraping a synthetic exporter.

The exporter serves the series the experiment exports (HP histogram and
request counter, LP byte counters, the controller's level, the writer's
io.max) with values the test sets, so the exported columns can be checked
against known rates and quantiles.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from experiments.cli import _export_command
from experiments.export import HISTOGRAM_COLUMNS, SERIES_COLUMNS, ExportError, SeriesQueries, export_range
from experiments.prometheus_server import PrometheusServer, PrometheusUnavailable, ScrapeTarget, find_prometheus, free_port

pytestmark = pytest.mark.prometheus

BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016)
LP_READ_BPS = 8 * 1024 * 1024
REQUESTS_PER_TICK = 20  # every 100 ms -> 200 requests/s


@dataclass
class Exporter:
    port: int
    stop: threading.Event
    thread: threading.Thread


def _have_prometheus() -> bool:
    try:
        find_prometheus()
    except PrometheusUnavailable:
        return False
    return True


@pytest.fixture(scope="module")
def prometheus() -> Iterator[tuple[PrometheusServer, float]]:
    if not _have_prometheus():
        pytest.skip("the Prometheus server binary is not installed (scripts/setup.sh installs it)")
    registry = CollectorRegistry()
    hist = Histogram("gnn_request_latency_seconds", "HP latency", buckets=BUCKETS, registry=registry)
    requests = Counter("gnn_requests", "HP requests", registry=registry)
    lp = Counter("batch_io_bytes", "LP bytes", ["op"], registry=registry)
    level = Gauge("drcio_controller_level", "level", ["group"], registry=registry)
    io_max = Gauge("drcio_io_max_bytes_per_second", "io.max", ["group", "workload", "device", "direction"],
                   registry=registry)
    level.labels(group="lp").set(0.25)
    Gauge("drcio_controller_leader", "leader", registry=registry).set(1)
    io_max.labels(group="lp", workload="lp-batch", device="254:0", direction="read").set(20 * 1024 * 1024)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    # A standby replica: it steps its policies too, and its level (lower here) is not the one in force.
    standby = CollectorRegistry()
    Gauge("drcio_controller_level", "level", ["group"], registry=standby).labels(group="lp").set(0.1)
    Gauge("drcio_controller_leader", "leader", registry=standby).set(0)
    standby_port = free_port()
    standby_server, _ = start_http_server(standby_port, addr="127.0.0.1", registry=standby)
    stop = threading.Event()

    def drive() -> None:
        # 90 % at 1.5 ms (bucket (1, 2] ms), 10 % at 6 ms (bucket (4, 8] ms), 8 MiB/s LP reads. Ticks fall on a
        # fixed 100 ms grid and a late one runs at once, so the rates hold on a busy host (a sleep of 0.1 s per
        # tick came out 15 % slow while the cgroup v2 guest booted beside it).
        began = time.monotonic()
        for k in range(1, 3001):  # bounded: at most 5 minutes
            if stop.wait(max(0.0, began + 0.1 * k - time.monotonic())):
                return
            for i in range(REQUESTS_PER_TICK):
                hist.observe(0.0015 if i % 10 else 0.006)
                requests.inc()
            lp.labels(op="read").inc(LP_READ_BPS / 10)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    prom = PrometheusServer([ScrapeTarget("hp-gnn", f"127.0.0.1:{port}"),
                             ScrapeTarget("drcio-controller", f"127.0.0.1:{standby_port}")], scrape_interval_seconds=1.0)
    try:
        prom.start()
        prom.wait_for_samples("gnn_requests_total")
        prom.wait_for_samples('drcio_controller_leader{job="drcio-controller"}')
        started = time.time()
        time.sleep(8)  # enough scrapes for a 5 s rate window
        yield prom, started
    finally:
        stop.set()
        thread.join(timeout=5)
        prom.stop()
        for srv in (server, standby_server):
            srv.shutdown()
            srv.server_close()


def test_export_has_every_column_and_the_rates_and_quantiles_of_the_exporter(
    prometheus: tuple[PrometheusServer, float],
) -> None:
    prom, started = prometheus
    end = time.time()
    export = export_range(prom.url, started, end, queries=SeriesQueries(window_seconds=5, group_matcher='group="lp"'))
    s = export.series
    assert list(s.columns) == SERIES_COLUMNS
    assert (s["elapsed_seconds"].diff().dropna() == 1.0).all()
    last = s.dropna(subset=["hp_p95_ms"]).iloc[-1]
    assert last["hp_request_rate"] == pytest.approx(10 * REQUESTS_PER_TICK, rel=0.15)
    assert last["lp_bytes_per_second"] == pytest.approx(LP_READ_BPS, rel=0.15)
    assert last["lp_read_bytes_per_second"] == pytest.approx(LP_READ_BPS, rel=0.15)
    assert math.isnan(last["lp_write_bytes_per_second"])  # no write series: a NaN column, not missing
    assert 1.0 < last["hp_p50_ms"] <= 2.0  # the bucket holding 90 % of requests
    assert 4.0 < last["hp_p95_ms"] <= 8.0  # the bucket holding the slow 10 %
    assert last["throttle_level"] == 0.25  # the leader's, not the standby's 0.1
    assert last["io_max_rbps"] == 20 * 1024 * 1024
    assert math.isnan(last["io_max_wbps"])
    assert list(export.histogram.columns) == HISTOGRAM_COLUMNS
    assert set(export.histogram["le"]) == {*BUCKETS, math.inf}


@pytest.mark.parametrize("step", [0.5, 1.5])
def test_a_fractional_step_from_a_fractional_start_fills_every_row(prometheus: tuple[PrometheusServer, float],
                                                                   step: float) -> None:
    # The client sends start and end rounded to whole seconds; the rows must still meet Prometheus' grid.
    prom, started = prometheus
    export = export_range(prom.url, started + 3.37, time.time() - 0.5, step_seconds=step,
                          queries=SeriesQueries(window_seconds=5, group_matcher='group="lp"'))
    s = export.series
    gaps = s["elapsed_seconds"].diff().dropna().tolist()
    assert len(gaps) >= 2 and gaps == pytest.approx([step] * len(gaps))
    assert s["hp_request_rate"].notna().all(), s[["elapsed_seconds", "hp_request_rate"]]


def test_export_metrics_cli_writes_the_same_columns(prometheus: tuple[PrometheusServer, float], tmp_path: Path) -> None:
    prom, _ = prometheus
    out, hist = tmp_path / "series.csv", tmp_path / "hist.csv"
    result = CliRunner().invoke(_export_command, ["--duration", "6", "--output", str(out), "--prometheus", prom.url,
                                                  "--histogram", str(hist)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == SERIES_COLUMNS
    assert frame["hp_p95_ms"].notna().any()
    assert list(pd.read_csv(hist).columns) == HISTOGRAM_COLUMNS


def test_export_from_an_unreachable_prometheus_says_where_and_writes_nothing(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ExportError, match=f"cannot reach Prometheus at {url}"):
        export_range(url, time.time() - 10, time.time())
    out = tmp_path / "series.csv"
    result = CliRunner().invoke(_export_command, ["--duration", "10", "--output", str(out), "--prometheus", url])
    assert result.exit_code == 1
    assert not out.exists()


def test_export_refuses_an_empty_range() -> None:
    with pytest.raises(ExportError, match="end > start"):
        export_range("http://127.0.0.1:9", 100.0, 100.0)
