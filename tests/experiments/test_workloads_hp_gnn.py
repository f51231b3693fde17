"""The HP GNN service, run as a real subprocess on a free loopback port, driven over real HTTP."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from experiments.prometheus_server import PrometheusServer, ScrapeTarget, free_port
from experiments.workloads.featurestore import FeatureStore, StoreSpec, build_store
from experiments.workloads.hp_gnn import LATENCY_BUCKET_RATIO, LATENCY_BUCKETS_SECONDS, GnnModel, Scorer
from experiments.workloads.loadgen import run_load
from tests.experiments.test_workloads_support import buckets, histogram_quantile, run_workload, scrape
from tests.experiments.test_workloads_support import scratch  # noqa: F401  (fixture)

NODES = "2048"  # 8 MiB store: built in well under a second, still one O_DIRECT read per record


@contextmanager
def running_hp_service(nodes: str = NODES) -> Iterator[str]:
    """The service as a subprocess with its own data dir; yields its base URL; stopped and cleaned up after."""
    data_dir = Path(tempfile.mkdtemp(prefix="drcio-hp-test-"))
    try:
        with run_workload("hp_gnn", "--data-dir", str(data_dir), "--port", str(free_port()), "--nodes", nodes) as hp:
            yield str(hp.wait_for_event("ready")["url"])
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def lp_job_reading(data_dir: Path) -> Iterator[str]:
    """A real LP job reading the same disk (2 threads of 1 MiB O_DIRECT reads); yields its /metrics URL.

    Beside it the HP latencies are disk-bound tens of milliseconds, as in the
    experiment, rather than a few ms dominated by CPU scheduling noise.
    """
    port = free_port()
    with run_workload("lp_batch", "--data-dir", str(data_dir), "--port", str(port), "--mode", "read",
                      "--workers", "2", "--file-size", "64M", "--block-size", "1M", "--start-now") as lp:
        lp.wait_for_event("prepared")
        yield f"http://127.0.0.1:{port}/metrics"


@pytest.fixture(scope="module")
def hp_service() -> Iterator[str]:
    with running_hp_service() as url:
        yield url


def _p95s_disagree(server_p95: float, client_p95: float) -> str | None:
    """Why the two P95s disagree, or None.

    The server's timer covers a sub-interval of the client's (it cannot see the loopback hop,
    HTTP parsing before the app runs, or the client's event loop), and ``histogram_quantile``
    interpolates inside a bucket: so the server's P95 may not exceed the client's by more than
    one bucket ratio, and the client's may exceed the server's by one bucket ratio plus that
    small unseen part."""
    unseen_seconds = 0.002  # loopback + HTTP parsing + event-loop hand-over on a shared 2-core machine
    seen = f"server P95 {server_p95 * 1e3:.2f} ms, client P95 {client_p95 * 1e3:.2f} ms"
    if server_p95 > client_p95 * LATENCY_BUCKET_RATIO:
        return f"{seen}: the server's exceeds the client's by more than a bucket"
    if client_p95 > server_p95 * LATENCY_BUCKET_RATIO + unseen_seconds:
        return f"{seen}: the client's exceeds the server's by more than a bucket and {unseen_seconds * 1e3:g} ms"
    return None


#: Measurements per comparison before it fails. A host stall outside the server's timer spoils one 4 s
#: measurement (seen once, in a full test run on 2026-11-30 on this 2-core machine: server 94.7 ms, client
#: 163.3 ms, where eight measurements in a row beside the same LP job agreed within 3.7 %); a real
#: disagreement (a timer in the wrong place, a wrong bucket ladder or query) spoils every one, and the
#: failure lists them all.
ATTEMPTS = 3


def _assert_p95s_agree_in_one_of(measure: Callable[[int], tuple[float, float]]) -> None:
    """Call ``measure(attempt)`` -> (server P95, client P95) until they agree, at most :data:`ATTEMPTS` times."""
    spoiled: list[str] = []
    for attempt in range(ATTEMPTS):
        why = _p95s_disagree(*measure(attempt))
        if why is None:
            if spoiled:
                warnings.warn(f"the P95s agreed on attempt {attempt + 1} after: {'; '.join(spoiled)}", stacklevel=2)
            return
        spoiled.append(why)
    pytest.fail(f"the P95s disagreed in all {ATTEMPTS} measurements: {'; '.join(spoiled)}")


def test_the_comparison_fails_when_every_measurement_disagrees_and_warns_when_one_was_spoiled() -> None:
    measured = iter([(0.070, 0.070)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agrees at once: no warning, no failure
        _assert_p95s_agree_in_one_of(lambda attempt: next(measured))

    calls: list[int] = []

    def always_apart(attempt: int) -> tuple[float, float]:
        calls.append(attempt)
        return 0.0947, 0.1633

    with pytest.raises(pytest.fail.Exception, match=f"disagreed in all {ATTEMPTS} measurements: server P95 94.70 ms"):
        _assert_p95s_agree_in_one_of(always_apart)
    assert calls == list(range(ATTEMPTS))

    spoiled_once = iter([(0.0947, 0.1633), (0.070, 0.0712)])
    with pytest.warns(UserWarning, match="agreed on attempt 2 after: server P95 94.70 ms, client P95 163.30 ms"):
        _assert_p95s_agree_in_one_of(lambda attempt: next(spoiled_once))


def test_latency_buckets_are_a_fine_geometric_ladder_from_0_1_ms_to_10_s() -> None:
    edges = LATENCY_BUCKETS_SECONDS
    assert edges[0] == 0.0001 and edges[-1] == 10.0
    assert {0.001, 0.01, 0.1, 1.0} <= set(edges)  # round targets sit exactly on an edge
    ratios = [b / a for a, b in zip(edges, edges[1:])]
    assert max(ratios) <= LATENCY_BUCKET_RATIO * 1.001 and LATENCY_BUCKET_RATIO < 1.2


def test_scores_are_in_0_1_vary_across_transactions_and_cost_a_bounded_number_of_reads(scratch: Path) -> None:
    spec = StoreSpec(seed=2, nodes=1024)
    build_store(scratch, spec)
    with FeatureStore(scratch, spec) as store:
        scorer = Scorer(store, GnnModel.seeded(spec.seed, spec.feature_dim), hop1=4, hop2=2)
        results = [scorer.score(tx) for tx in range(200)]
        again = scorer.score(17)
    assert all(0.0 <= r.score <= 1.0 for r in results)
    assert len({round(r.score, 6) for r in results}) > 100  # a function of the neighbourhood, not a constant
    assert all(2 <= r.reads <= 1 + 4 * (1 + 2) for r in results)
    assert again == results[17]


def test_a_scoring_request_returns_a_score_in_0_1_and_bumps_the_metrics(hp_service: str) -> None:
    before = scrape(f"{hp_service}/metrics")
    response = httpx.get(f"{hp_service}/score", params={"tx": 42}, timeout=10)
    after = scrape(f"{hp_service}/metrics")

    body = response.json()
    assert response.status_code == 200
    assert body["tx"] == 42 and 0.0 <= body["score"] <= 1.0
    assert 1 <= len(body["neighbours"]) <= 4 and body["reads"] >= 2

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert delta("gnn_request_latency_seconds_count") == 1
    assert delta("gnn_requests_total", (("status", "200"),)) == 1
    assert delta("gnn_risk_score_count") == 1
    assert delta("gnn_feature_reads_total") == body["reads"]
    assert after[("gnn_active_requests", ())] == 0


def test_the_same_transaction_gets_the_same_score_by_get_and_by_post(hp_service: str) -> None:
    by_get = httpx.get(f"{hp_service}/score", params={"tx": 7}, timeout=10).json()
    by_post = httpx.post(f"{hp_service}/score", json={"tx": 7}, timeout=10).json()
    assert by_get == by_post


@pytest.mark.parametrize("tx", ["-1", "abc", "1.5"], ids=["negative", "not-a-number", "fraction"])
def test_a_bad_transaction_id_is_a_400_that_says_what_is_wrong(hp_service: str, tx: str) -> None:
    response = httpx.get(f"{hp_service}/score", params={"tx": tx}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == f"tx must be a non-negative integer, got {tx!r}"


def test_health_names_the_store(hp_service: str) -> None:
    assert httpx.get(f"{hp_service}/health", timeout=10).json()["nodes"] == int(NODES)


@pytest.mark.serial
def test_server_and_client_p95_agree_within_the_histograms_resolution(hp_service: str, scratch: Path) -> None:
    """The open-loop client's own P95 is an independent check on the server's histogram."""
    with lp_job_reading(scratch) as lp_metrics:
        def measure(attempt: int) -> tuple[float, float]:
            before = buckets(scrape(f"{hp_service}/metrics"), "gnn_request_latency_seconds")
            result = run_load(f"{hp_service}/score", 100.0, 4.0, seed=5 + attempt, max_in_flight=64,
                              timeout_seconds=5.0)
            after = buckets(scrape(f"{hp_service}/metrics"), "gnn_request_latency_seconds")
            assert scrape(lp_metrics)[("batch_io_bytes_total", (("op", "read"),))] > 0
            assert result.count("ok") == len(result.records) >= 300
            window = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
            assert window[-1][1] == len(result.records)  # the histogram saw exactly this run's requests
            return histogram_quantile(0.95, window), float(result.summary()["p95_ms"]) / 1000.0  # type: ignore[arg-type]

        _assert_p95s_agree_in_one_of(measure)


def _query(prom: PrometheusServer, promql: str) -> float:
    body = httpx.get(f"{prom.url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success" and body["data"]["resultType"] == "vector", body
    (sample,) = body["data"]["result"]
    return float(sample["value"][1])


@pytest.mark.prometheus
def test_real_prometheus_reads_the_same_p95_as_the_client_with_the_controllers_query(scratch: Path) -> None:
    """Scraped by the real Prometheus, queried the way the controller does (histogram_quantile
    over the summed bucket rates), the service's P95 agrees with the client's own."""
    with lp_job_reading(scratch):
        def measure(attempt: int) -> tuple[float, float]:
            # A fresh service and Prometheus each attempt, so the window holds this attempt's requests alone.
            with running_hp_service() as hp:
                target = ScrapeTarget("hp-gnn", hp.removeprefix("http://"))
                with PrometheusServer([target], scrape_interval_seconds=0.5) as prom:
                    count = 'gnn_request_latency_seconds_count{job="hp-gnn"}'
                    prom.wait_for_samples(count)
                    result = run_load(f"{hp}/score", 100.0, 4.0, seed=9 + attempt, max_in_flight=64,
                                      timeout_seconds=5.0)
                    deadline = time.monotonic() + 10  # bounded: until a scrape after the last request
                    while _query(prom, count) < len(result.records) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    assert _query(prom, count) == len(result.records)
                    # The window reaches back past Prometheus' first scrape (all zeros), so it holds exactly this run.
                    server_p95 = _query(prom, 'histogram_quantile(0.95, sum by (le) '
                                              '(rate(gnn_request_latency_seconds_bucket{job="hp-gnn"}[1m])))')
            return server_p95, float(result.summary()["p95_ms"]) / 1000.0  # type: ignore[arg-type]

        _assert_p95s_agree_in_one_of(measure)


def test_sigterm_stops_the_service_cleanly() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="drcio-hp-test-"))
    try:
        with run_workload("hp_gnn", "--data-dir", str(data_dir), "--port", str(free_port()),
                          "--nodes", "64") as hp:
            hp.wait_for_event("ready")
            hp.proc.send_signal(signal.SIGTERM)
            assert hp.proc.wait(timeout=15) == 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_setup_only_builds_the_store_and_exits(scratch: Path) -> None:
    with run_workload("hp_gnn", "--data-dir", str(scratch), "--setup-only", "--nodes", "64") as hp:
        setup = hp.wait_for_event("setup")
        assert hp.proc.wait(timeout=15) == 0
    assert setup["built"] is True and setup["nodes"] == 64
    assert (scratch / "manifest.json").exists()


def test_a_missing_port_is_a_usage_error(scratch: Path) -> None:
    with run_workload("hp_gnn", "--data-dir", str(scratch)) as hp:
        assert hp.proc.wait(timeout=15) == 2
