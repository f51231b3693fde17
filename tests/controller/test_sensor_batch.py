"""The batched sensor against the real Prometheus: one request a tick, the same readings as one query at a time."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.config import PrometheusConfig, SloConfig
from controller.sensor import PrometheusSensor
from controller.sensor_batch import BatchedPrometheusSensor, batch_query
from policies import SensorStatus
from tests.controller.conftest import ScrapedJobs, exponential_inverse_cdf, scraped_jobs

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def scraped() -> Iterator[ScrapedJobs]:
    """One Prometheus for the module; each test drives and reads its own job's exporter."""
    with scraped_jobs(latency=["hp-gnn-batch", "hp-gnn-fallback"]) as jobs:
        yield jobs


def slo(name: str, job: str, **overrides: Any) -> SloConfig:
    raw: dict[str, Any] = {
        "name": name,
        "metric": "gnn_request_latency_seconds",
        "labels": {"job": job},
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


JOB = "hp-gnn-batch"
SLOS = [
    slo("p95", JOB),
    slo("p50", JOB, quantile=0.5),
    slo("quiet", JOB, min_rate=1e9),  # traffic far below min_rate: no_data
    slo("typo", JOB, labels={"job": "hp-gnn-bacth"}),  # absent series: a sensor error
    # refused: two series
    slo("two-series", JOB, metric=None, query=f'gnn_request_latency_seconds_count{{job="{JOB}"}} or vector(1)'),
]


def test_one_request_per_tick_reads_what_one_query_at_a_time_reads(scraped: ScrapedJobs) -> None:
    scraped.exporters[JOB].drive(exponential_inverse_cdf(0.03), per_second=500)
    prom = scraped.prometheus
    prom.wait_for_samples(f'rate(gnn_request_latency_seconds_count{{job="{JOB}"}}[5s]) > 0')
    config = PrometheusConfig.model_validate({"url": prom.url, "timeout": "2s", "retries": 0})
    single, batched = CountingSensor(config), BatchedPrometheusSensor(config, SLOS)
    time.sleep(1.0)  # readiness: a few more scrapes inside the window
    at = round(time.time(), 3)

    alone = [single.read(s, at) for s in SLOS]
    together = [batched.read(s, at) for s in SLOS]
    first_tick = batched.requests
    # The next tick (a new evaluation time): every query the sensor asked is now in the one batch.
    alone_next = [single.read(s, at - 0.5) for s in SLOS]
    together_next = [batched.read(s, at - 0.5) for s in SLOS]

    assert together == alone and together_next == alone_next
    assert [r.status for r in together] == [
        SensorStatus.OK, SensorStatus.OK, SensorStatus.NO_DATA, SensorStatus.SENSOR_ERROR, SensorStatus.SENSOR_ERROR
    ]
    assert single.requests > 2 * len(SLOS) and first_tick < single.requests / 2
    assert batched.requests - first_tick == 1


def test_a_batch_prometheus_refuses_falls_back_to_one_query_at_a_time(scraped: ScrapedJobs) -> None:
    job = "hp-gnn-fallback"
    scraped.exporters[job].drive(exponential_inverse_cdf(0.03), per_second=500)
    prom = scraped.prometheus
    prom.wait_for_samples(f'rate(gnn_request_latency_seconds_count{{job="{job}"}}[5s]) > 0')
    config = PrometheusConfig.model_validate({"url": prom.url, "timeout": "2s", "retries": 0})
    slos = [slo("p95", job), slo("broken", job, metric=None, query="histogram_quantile(0.9, ")]
    sensor = BatchedPrometheusSensor(config, slos)
    time.sleep(1.0)  # readiness: a few more scrapes inside the window
    at = round(time.time(), 3)

    good, broken = (sensor.read(s, at) for s in slos)

    assert good.status is SensorStatus.OK
    assert broken.status is SensorStatus.SENSOR_ERROR and broken.reason == "http_error"
    assert "histogram_quantile(0.9, " in (broken.error or "") and good.error is None


def test_the_batch_labels_each_query_apart() -> None:
    assert batch_query(["up", "sum(x)"]) == (
        'label_replace((up), "drcio_query", "0", "", "") or label_replace((sum(x)), "drcio_query", "1", "", "")'
    )


def test_a_prometheus_that_does_not_answer_costs_a_tick_one_deadline_not_one_per_query() -> None:
    # A blackholed Prometheus (a socket that accepts and never answers): the batch times out, and every SLO's
    # reading of that tick is the same timeout without another request. The next tick tries again.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = PrometheusConfig.model_validate({"url": url, "timeout": "0.3s", "retries": 0})
        slos = [slo(name, JOB) for name in ("a", "b", "c")]
        sensor = BatchedPrometheusSensor(config, slos)
        for tick, at in enumerate((1000.0, 1005.0), start=1):
            readings = [sensor.read(s, at) for s in slos]
            assert [(r.status, r.reason) for r in readings] == [(SensorStatus.SENSOR_ERROR, "timeout")] * 3, readings
            assert all("did not answer within 0.3s" in (r.error or "") for r in readings)
            assert sensor.requests == tick
