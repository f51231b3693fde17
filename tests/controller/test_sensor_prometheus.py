"""The sensor against the real Prometheus server, scraping an exporter driven from a known distribution.

One Prometheus serves the module (:func:`scraped`); every test reads its own job
(its own exporter or failing target), so no test sees another's series.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.config import PrometheusConfig, SloConfig
from controller.sensor import PrometheusSensor, quantile_query, rate_query
from policies import SensorStatus
from tests.controller.conftest import (
    BUCKET_WIDTH,
    ScrapedJobs,
    exponential_inverse_cdf,
    scraped_jobs,
    serving_text_target,
)

pytestmark = pytest.mark.prometheus

#: One job per test that reads an exporter's series (idle until its test drives it), one failing target.
LATENCY_JOBS = ("hp-gnn-p95", "hp-gnn-idle", "hp-gnn-nan", "hp-gnn-absent", "hp-gnn-sparse")
FAILING_JOB = "hp-gnn-500"
#: Scraped every 4 s, longer than a 3 s window: the window holds one sample or none.
SPARSE_JOB, SPARSE_INTERVAL = "hp-gnn-sparse", 4.0
#: An exporter breaking the histogram's rules: its count grows at 100/s, its buckets stay at 0.
BROKEN_JOB = "hp-gnn-broken"
_STARTED = time.monotonic()


def _broken_histogram() -> str:
    count = int((time.monotonic() - _STARTED) * 100)
    return ("# TYPE gnn_request_latency_seconds histogram\n"
            'gnn_request_latency_seconds_bucket{le="0.1"} 0\n'
            'gnn_request_latency_seconds_bucket{le="+Inf"} 0\n'
            "gnn_request_latency_seconds_sum 0\n"
            f"gnn_request_latency_seconds_count {count}\n")


@pytest.fixture(scope="module")
def scraped() -> Iterator[ScrapedJobs]:
    with scraped_jobs(latency=LATENCY_JOBS, failing=[FAILING_JOB], texts={BROKEN_JOB: _broken_histogram},
                      intervals={SPARSE_JOB: SPARSE_INTERVAL}) as jobs:
        yield jobs


def slo(**overrides: Any) -> SloConfig:
    raw: dict[str, Any] = {
        "name": "gnn-p95",
        "metric": "gnn_request_latency_seconds",
        "labels": {"job": "hp-gnn"},
        "quantile": 0.95,
        "window": "5s",
        "target": "100ms",
        "policy": {"kind": "static", "level": 0.5},
        "throttle": {"selector": {"group-id": "lp"}, "rbps": {"min": "10M", "max": "max"}},
    }
    raw.update(overrides)
    return SloConfig.model_validate(raw)


def sensor_for(url: str, timeout: float = 1.0) -> PrometheusSensor:
    return PrometheusSensor(PrometheusConfig.model_validate({"url": url, "timeout": f"{timeout}s", "retries": 0}))


def wait_for_status(sensor: PrometheusSensor, s: SloConfig, status: SensorStatus, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    reading = sensor.read(s, time.time())
    while reading.status is not status and time.monotonic() < deadline:
        time.sleep(0.25)
        reading = sensor.read(s, time.time())
    return reading


def test_the_query_is_histogram_quantile_over_the_rate_of_the_buckets() -> None:
    q = quantile_query(slo(labels={"job": 'hp"gnn', "ns": "a\\b"}))
    assert q == (
        'histogram_quantile(0.95, sum by (le) (rate(gnn_request_latency_seconds_bucket{job="hp\\"gnn",ns="a\\\\b"}[5000ms])))'
    )
    assert rate_query(slo()) == 'sum(rate(gnn_request_latency_seconds_count{job="hp-gnn"}[5000ms]))'


def test_measured_p95_matches_the_distributions_p95_within_a_bucket(scraped: ScrapedJobs) -> None:
    mean = 0.030
    true_p95 = -mean * math.log(0.05)  # 89.9 ms
    scraped.exporters["hp-gnn-p95"].drive(exponential_inverse_cdf(mean), per_second=1000)
    sensor = sensor_for(scraped.url)
    s = slo(labels={"job": "hp-gnn-p95"})
    reading = wait_for_status(sensor, s, SensorStatus.OK)
    assert reading.status is SensorStatus.OK, reading
    # Let the 5 s window fill with steady traffic before judging the value.
    time.sleep(5.5)
    reading = sensor.read(s, time.time())
    assert reading.status is SensorStatus.OK, reading
    assert reading.latency_seconds is not None
    assert abs(reading.latency_seconds - true_p95) <= BUCKET_WIDTH, (reading.latency_seconds, true_p95)
    assert reading.request_rate is not None and reading.request_rate > 500


def test_no_traffic_is_no_data_not_a_zero(scraped: ScrapedJobs) -> None:
    # The histogram exists but nothing is observed: the rate is 0, below min_rate.
    scraped.prometheus.wait_for_samples('gnn_request_latency_seconds_count{job="hp-gnn-idle"}')
    reading = sensor_for(scraped.url).read(slo(labels={"job": "hp-gnn-idle"}), time.time())
    assert reading.status is SensorStatus.NO_DATA
    assert reading.latency_seconds is None


def test_nan_from_histogram_quantile_is_no_data(scraped: ScrapedJobs) -> None:
    # With min_rate 0 the rate check passes and histogram_quantile over zero rates answers NaN.
    scraped.prometheus.wait_for_samples('rate(gnn_request_latency_seconds_count{job="hp-gnn-nan"}[5s])')
    reading = sensor_for(scraped.url).read(slo(labels={"job": "hp-gnn-nan"}, min_rate=0.0), time.time())
    assert reading.status is SensorStatus.NO_DATA
    assert reading.error == "no HP latency samples in the window"


def test_nan_from_histogram_quantile_while_requests_are_counted_is_a_sensor_error(scraped: ScrapedJobs) -> None:
    # The count says requests were served, the buckets say none were: a broken exporter, not an idle service.
    scraped.prometheus.wait_for_samples(f'rate(gnn_request_latency_seconds_count{{job="{BROKEN_JOB}"}}[5s]) > 0')
    reading = sensor_for(scraped.url).read(slo(labels={"job": BROKEN_JOB}), time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR and reading.reason == "bad_answer", reading
    assert reading.error is not None and "NaN while the request rate is" in reading.error


def test_a_window_holding_fewer_than_two_scrapes_is_a_sensor_error_not_no_data(scraped: ScrapedJobs) -> None:
    # rate() needs two samples; with one it is empty while the series is there. Until 2026-11-30 that read as
    # no_data, on which the plain PID and AIMD open LP up: forever, where the scrape interval >= the window.
    scraped.exporters[SPARSE_JOB].drive(exponential_inverse_cdf(0.03), per_second=200)
    sensor, s = sensor_for(scraped.url), slo(labels={"job": SPARSE_JOB}, window="3s")
    readings = [sensor.read(s, time.time())]
    deadline = time.monotonic() + 3 * SPARSE_INTERVAL
    while readings[-1].reason != "too_few_samples" and time.monotonic() < deadline:
        time.sleep(0.5)
        readings.append(sensor.read(s, time.time()))
    assert all(r.status is SensorStatus.SENSOR_ERROR for r in readings), readings  # one sample, or none: absent
    last = readings[-1]
    assert last.reason == "too_few_samples", readings
    assert last.error is not None and "fewer than two samples in the 3 s window" in last.error
    assert "twice the scrape interval" in last.error


def test_an_infinite_request_rate_is_a_sensor_error(scraped: ScrapedJobs) -> None:
    s = slo(metric=None, labels={}, query="vector(0.05)", rate_query="vector(1) / vector(0)")
    reading = sensor_for(scraped.url).read(s, time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR and reading.reason == "bad_answer", reading
    assert reading.error is not None and "returned inf" in reading.error


@pytest.mark.parametrize("body", [b"{}", b"[]", b'{"status": "success", "data": null}'])
def test_a_200_that_is_not_a_query_answer_is_a_sensor_error(body: bytes) -> None:
    # What a proxy's page or a wrong URL path can answer: prometheus-api-client reads data.result from it.
    with serving_text_target(body.decode) as target:
        reading = sensor_for(f"http://{target.address}").read(slo(), time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR and reading.reason == "bad_answer", reading
    assert reading.error is not None and "answered 200 without data.result" in reading.error


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        pytest.param({"metric": "no_such_latency_seconds"}, "no_such_latency_seconds_count", id="unknown-metric"),
        pytest.param({"labels": {"job": "hp-gnn-absnet"}}, 'job="hp-gnn-absnet"', id="label-typo"),
        pytest.param({"labels": {"job": "hp-gnn-absent", "handler": "/score"}}, 'handler="/score"',
                     id="label-not-on-the-series"),
    ],
)
def test_an_absent_series_is_a_sensor_error_naming_what_is_missing(
    scraped: ScrapedJobs, overrides: dict[str, Any], missing: str
) -> None:
    # Before issue 9 these were no_data, and both policies opened LP up on them.
    scraped.prometheus.wait_for_samples('gnn_request_latency_seconds_count{job="hp-gnn-absent"}')
    reading = sensor_for(scraped.url).read(slo(**{"labels": {"job": "hp-gnn-absent"}, **overrides}), time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR, reading
    assert reading.reason == "absent"
    assert reading.error is not None and missing in reading.error and "no series" in reading.error


def test_a_raw_query_with_an_empty_answer_is_a_sensor_error(scraped: ScrapedJobs) -> None:
    scraped.prometheus.wait_for_samples("up")
    s = slo(metric=None, labels={}, query="histogram_quantile(0.95, sum by (le) (rate(nothing_bucket[5s])))")
    reading = sensor_for(scraped.url).read(s, time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR and reading.reason == "absent", reading


def test_an_hp_scrape_answering_500_is_a_sensor_error_naming_up(scraped: ScrapedJobs) -> None:
    scraped.prometheus.wait_for_samples(f'up{{job="{FAILING_JOB}"}} == 0')
    reading = sensor_for(scraped.url).read(slo(labels={"job": FAILING_JOB}), time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR, reading
    assert reading.reason == "scrape_down"
    assert reading.error is not None and f'up{{job="{FAILING_JOB}"}} == 0' in reading.error


def test_a_bad_raw_query_is_a_sensor_error(scraped: ScrapedJobs) -> None:
    s = slo(metric=None, labels={}, query="histogram_quantile(0.95, sum by (le) (rate(")
    reading = sensor_for(scraped.url).read(s, time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR
    assert reading.reason == "http_error"


def test_a_raw_query_returning_many_series_is_refused(scraped: ScrapedJobs) -> None:
    scraped.prometheus.wait_for_samples("up")
    s = slo(metric=None, labels={}, query='label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")')
    reading = sensor_for(scraped.url).read(s, time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR
    assert reading.error is not None and "2 series" in reading.error


def test_prometheus_down_is_a_sensor_error_with_the_reason(dead_writer: str) -> None:
    reading = sensor_for(dead_writer).read(slo(), time.time())
    assert reading.status is SensorStatus.SENSOR_ERROR
    assert reading.reason == "unreachable"
    assert reading.error is not None and "Connection refused" in reading.error
