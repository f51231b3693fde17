"""Fixtures for the controller's integration tests: a latency exporter the test
drives from a known distribution, a real Prometheus scraping it, and the real
writer app on loopback recording what it was pushed (the writer's own tests are
in tests/writer)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from starlette.datastructures import Headers

from experiments.prometheus_server import PrometheusServer, ScrapeTarget, free_port
from tests.writer.conftest import FakeTree, WriterUnderTest, make_tree, make_writer, serving
from writer.server import build_app

#: 5 ms buckets up to 250 ms: the resolution the sensor's P95 is checked against.
BUCKET_WIDTH = 0.005
BUCKETS = tuple(round(BUCKET_WIDTH * i, 6) for i in range(1, 51))
SCRAPE_INTERVAL = 0.5


@dataclass
class LatencyExporter:
    """An HP-like exporter whose ``gnn_request_latency_seconds`` the test fills.

    ``drive(inverse_cdf, per_second)`` starts a thread that observes a
    stratified sample of the distribution (quantiles at evenly spaced
    probabilities, so the histogram holds the distribution itself, without
    sampling noise) every 100 ms until ``stop()``.
    """

    port: int
    registry: CollectorRegistry
    histogram: Histogram
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def drive(self, inverse_cdf: Callable[[float], float], per_second: int = 1000) -> None:
        per_tick = max(1, per_second // 10)

        def run() -> None:
            # Bounded: at most 10 minutes of ticks even if a test forgets to stop. Ticks on a fixed 100 ms
            # grid (a late one runs at once), so the rate holds on a busy host, as in test_export.
            began = time.monotonic()
            for k in range(6000):
                if self._stop.wait(max(0.0, began + 0.1 * (k + 1) - time.monotonic())):
                    return
                for i in range(per_tick):
                    # Stride through (0, 1) so every tick is spread over the whole distribution.
                    p = ((k * 0.6180339887 + i / per_tick) % 1.0) or 0.5 / per_tick
                    self.histogram.observe(inverse_cdf(p))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextmanager
def serving_latency_exporter() -> Iterator[LatencyExporter]:
    """A :class:`LatencyExporter` on a free loopback port, stopped and closed on exit."""
    registry = CollectorRegistry()
    hist = Histogram(
        "gnn_request_latency_seconds", "HP request latency", buckets=BUCKETS, registry=registry
    )
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    exp = LatencyExporter(port=port, registry=registry, histogram=hist)
    try:
        yield exp
    finally:
        exp.stop()
        server.shutdown()
        server.server_close()


@pytest.fixture
def latency_exporter() -> Iterator[LatencyExporter]:
    with serving_latency_exporter() as exp:
        yield exp


@pytest.fixture
def prometheus_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: a real Prometheus on loopback scraping the given exporters (job ``hp-gnn``)."""
    started: list[PrometheusServer] = []

    def make(*exporters: LatencyExporter, port: int = 0, start: bool = True) -> PrometheusServer:
        server = PrometheusServer(
            targets=[ScrapeTarget(job="hp-gnn", address=e.address) for e in exporters],
            scrape_interval_seconds=SCRAPE_INTERVAL,
            port=port or free_port(),
        )
        started.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for s in started:
            s.stop()


@dataclass
class ScrapedJobs:
    """One real Prometheus scraping one target per job, shared by the tests of a module.

    Each test reads only the series of its own job (its own exporter, or its
    own failing target), so what one test does to its exporter (driving
    traffic) is invisible to the others; the shared part is the server, which
    saves each test the ~5 s Prometheus 2.42 takes from start to first scrape
    (its scrape manager applies new targets on a 5 s ticker).
    """

    prometheus: PrometheusServer
    exporters: dict[str, LatencyExporter]
    failing: dict[str, ServedTarget]
    texts: dict[str, ServedTarget] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.prometheus.url


@contextmanager
def scraped_jobs(*, latency: Sequence[str] = (), failing: Sequence[str] = (),
                 texts: Mapping[str, Callable[[], str]] | None = None,
                 intervals: Mapping[str, float] | None = None) -> Iterator[ScrapedJobs]:
    """Start an idle :class:`LatencyExporter` per ``latency`` job, a 500-answering target per ``failing`` job and
    a target answering ``texts[job]()`` per ``texts`` job, and a real Prometheus scraping each under its job name
    (every ``SCRAPE_INTERVAL``, or ``intervals[job]``); return once every job has been scraped."""
    intervals = intervals or {}
    with ExitStack() as stack:
        exporters = {job: stack.enter_context(serving_latency_exporter()) for job in latency}
        targets = {job: stack.enter_context(serving_failing_target()) for job in failing}
        served = {job: stack.enter_context(serving_text_target(body)) for job, body in (texts or {}).items()}
        addresses = {**{j: e.address for j, e in exporters.items()}, **{j: t.address for j, t in targets.items()},
                     **{j: t.address for j, t in served.items()}}
        server = PrometheusServer(
            targets=[ScrapeTarget(job=job, address=a, scrape_interval_seconds=intervals.get(job))
                     for job, a in addresses.items()],
            scrape_interval_seconds=SCRAPE_INTERVAL,
        )
        stack.callback(server.stop)
        server.start()
        for job in addresses:
            server.wait_for_samples(f'up{{job="{job}"}}')
        yield ScrapedJobs(server, exporters, targets, served)


def exponential_inverse_cdf(mean: float) -> Callable[[float], float]:
    return lambda p: -mean * math.log(1.0 - p)


# -- the real writer on loopback, with a record of what the controller sent it -----------------

#: The bearer token the recorded writer is built with (the controller tests' token files say the same).
PUSH_TOKEN = "s3cret"
#: The LP cgroup of the recorded writer's fake tree; its workload carries ``group-id: lp``, what the tests' SLOs select.
LP_CGROUP = "drcio-demo/lp"
HP_CGROUP = "drcio-demo/hp"


class Recording:
    """ASGI wrapper: records each ``PUT``'s headers and JSON body, then hands the request on unchanged.

    The body is read whole here (it is small: the writer refuses more than 64 KiB)
    and replayed to the app as one message, so the app sees what the client sent.
    """

    def __init__(self, app: Any, bodies: list[Any], headers: list[Headers]) -> None:
        self.app = app
        self.bodies = bodies
        self.headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "PUT":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending it all
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        self.headers.append(Headers(scope=scope))
        try:
            self.bodies.append(json.loads(raw))
        except ValueError:
            self.bodies.append(raw)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)


@dataclass
class RecordedWriter:
    """The real writer app (``build_app`` over a real Reconciler) on a loopback port, over a fake cgroup v2 tree.

    The tree has an LP cgroup (workload ``lp-batch``, labels ``group-id: lp``) and an
    HP one (``hp-gnn``, ``group-id: hp``); the writer's token is :data:`PUSH_TOKEN`.
    ``bodies`` and ``headers`` hold every ``PUT`` it received, recorded before the app
    answered it; the answers, and what lands in the tree, are the writer's own.
    """

    url: str
    bodies: list[Any]
    headers: list[Headers]
    writer: WriterUnderTest

    @property
    def tree(self) -> FakeTree:
        return self.writer.tree

    def lp_io_max_lines(self) -> list[str]:
        """Every line the writer wrote to the LP cgroup's ``io.max``, oldest first.

        The writer appends a whole line per device (as to the kernel's file); the fake
        file keeps them all, where the kernel would keep the last one per device.
        """
        return self.tree.read(LP_CGROUP, "io.max").splitlines()

    def lp_io_max(self) -> str:
        """The LP cgroup's limit in force on the fake tree's one disk: the last line written, ``""`` before any."""
        lines = self.lp_io_max_lines()
        return lines[-1] if lines else ""

    def pushes(self, result: str) -> float | None:
        """The writer's own count of pushes with ``result`` (accepted, replay, stale, unauthorized, ...)."""
        return self.writer.metric("drcio_pushes_total", {"result": result})


@pytest.fixture
def recorded_writer(tmp_path: Path) -> Iterator[RecordedWriter]:
    """A fresh real writer per test (so generations start over), served by uvicorn on loopback."""
    root = tmp_path / "recorded-writer"  # its own directory: a test may make other fake trees in tmp_path
    root.mkdir()
    tree = make_tree(root, 2)
    tree.group(LP_CGROUP)
    tree.group(HP_CGROUP)
    writer = make_writer(tree, token=PUSH_TOKEN)
    bodies: list[Any] = []
    headers: list[Headers] = []
    with serving(Recording(build_app(writer.state), bodies, headers)) as url:
        writer.url = url
        yield RecordedWriter(url=url, bodies=bodies, headers=headers, writer=writer)


@contextmanager
def serving_handler(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve an ``http.server`` handler on a free loopback port in a thread; yield the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ServedTarget:
    """A loopback HTTP target a test serves (:func:`serving_text_target`, :func:`serving_failing_target`)."""

    address: str


@contextmanager
def serving_text_target(body: Callable[[], str], *, status: int = 200) -> Iterator[ServedTarget]:
    """A target whose every GET (``/metrics`` for a scrape) answers ``status`` with ``body()``: an exporter whose
    series a test writes by hand (e.g. one that breaks the histogram's rules), or a server that is not Prometheus."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            data = body().encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving_handler(Handler) as port:
        yield ServedTarget(address=f"127.0.0.1:{port}")


@contextmanager
def serving_failing_target() -> Iterator[ServedTarget]:
    """A scrape target whose ``/metrics`` answers 500 (an HP service failing under contention)."""
    with serving_text_target(lambda: "", status=500) as target:
        yield target


@pytest.fixture
def failing_target() -> Iterator[ServedTarget]:
    with serving_failing_target() as target:
        yield target


@pytest.fixture
def dead_writer() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"
