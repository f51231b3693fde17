"""The batched sensor against the real Prometheus: one request a tick, the same readings as one query at a time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.config import PrometheusConfig, SloConfig
from controller.sensor import PrometheusSensor
from controller.sensor_batch import BatchedPrometheusSensor, batch_query
from policies import SensorStatus
from tests.controller.conftest import LatencyExporter, exponential_inverse_cdf

pytestmark = pytest.mark.prometheus


def slo(name: str, **overrides: Any) -> SloConfig:
    raw: dict[str, Any] = {
        "name": name,
        "metric": "gnn_request_latency_seconds",
        "labels": {"job": "hp-gnn"},
        "window": "5s",
        "target": "100ms",
        "policy": {"kind": "static", "level": 0.5},
        "throttle": {"selector": {"group-id": "lp"}, "rbps": {"min": "10M", "max": "max"}},
    }
    raw.update(overrides)
    return SloConfig.model_validate(raw)


class CountingSensor(PrometheusSensor):
    requests = 0

    def _instant(self, query: str, at: float) -> list[dict[str, Any]]:
        self.requests += 1
        return super()._instant(query, at)


SLOS = [
    slo("p95"),
    slo("p50", quantile=0.5),
    slo("quiet", min_rate=1e9),  # traffic far below min_rate: no_data
    slo("typo", labels={"job": "hp-gmn"}),  # absent series: what the per-query sensor says, the batch says
    slo("two-series", metric=None, query="gnn_request_latency_seconds_count or vector(1)"),  # refused: two series
]


def test_one_request_per_tick_reads_what_one_query_at_a_time_reads(
    latency_exporter: LatencyExporter, prometheus_for: Any
) -> None:
    latency_exporter.drive(exponential_inverse_cdf(0.03), per_second=500)
    prom = prometheus_for(latency_exporter)
    prom.wait_for_samples('rate(gnn_request_latency_seconds_count[5s]) > 0')
    config = PrometheusConfig.model_validate({"url": prom.url, "timeout": "2s", "retries": 0})
    single, batched = CountingSensor(config), BatchedPrometheusSensor(config, SLOS)
    time.sleep(1.0)  # readiness: a few more scrapes inside the window
    at = round(time.time(), 3)

    alone = [single.read(s, at) for s in SLOS]
    together = [batched.read(s, at) for s in SLOS]

    assert together == alone
    assert [r.status for r in together] == [
        SensorStatus.OK, SensorStatus.OK, SensorStatus.NO_DATA, SensorStatus.NO_DATA, SensorStatus.SENSOR_ERROR
    ]
    assert single.requests == 7 and batched.requests == 1  # 2 + 2 + 1 (rate too low) + 1 (rate absent) + 1 (raw query)
    # The next tick (a new evaluation time) asks again, once.
    [batched.read(s, at + 1.0) for s in SLOS]
    assert batched.requests == 2


def test_a_batch_prometheus_refuses_falls_back_to_one_query_at_a_time(
    latency_exporter: LatencyExporter, prometheus_for: Any
) -> None:
    latency_exporter.drive(exponential_inverse_cdf(0.03), per_second=500)
    prom = prometheus_for(latency_exporter)
    prom.wait_for_samples('rate(gnn_request_latency_seconds_count[5s]) > 0')
    config = PrometheusConfig.model_validate({"url": prom.url, "timeout": "2s", "retries": 0})
    slos = [slo("p95"), slo("broken", metric=None, query="histogram_quantile(0.9, ")]
    sensor = BatchedPrometheusSensor(config, slos)
    time.sleep(1.0)  # readiness: a few more scrapes inside the window
    at = round(time.time(), 3)

    good, broken = (sensor.read(s, at) for s in slos)

    assert good.status is SensorStatus.OK
    assert broken.status is SensorStatus.SENSOR_ERROR and broken.reason == "http_error" and "broken" not in (good.error or "")
    assert sensor.requests == 1 + 3  # the failed batch, then the good SLO's two queries and the broken one


def test_the_batch_labels_each_query_apart() -> None:
    assert batch_query(["up", "sum(x)"]) == (
        'label_replace((up), "drcio_query", "0", "", "") or label_replace((sum(x)), "drcio_query", "1", "", "")'
    )
