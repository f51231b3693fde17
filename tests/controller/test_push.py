"""Pushes over real HTTP: concurrent, one deadline per writer, one bad writer never blocks the others."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler
from typing import Any

from controller.push import DryRunPusher, HttpPusher, KubernetesWriterDirectory, StaticWriters
from tests.controller.conftest import HP_CGROUP, LP_CGROUP, PUSH_TOKEN, RecordedWriter, serving_handler
from writer.api import GroupTarget, IoMax, TargetsPush


def body(generation: int = 1) -> TargetsPush:
    return TargetsPush(
        generation=generation,
        lease_ttl_seconds=30,
        groups=[GroupTarget(name="lp", selector={"group-id": "lp"}, io_max=IoMax(rbps=10 * 1024**2), level=0.0)],
    )


def test_a_push_reaches_the_writer_with_the_bearer_token(recorded_writer: RecordedWriter) -> None:
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=2) as pusher:
        (result,) = pusher.push([recorded_writer.url], body(7))
    assert result.outcome == "ok" and result.status_code == 200 and result.node == "node-a"
    lp = str(recorded_writer.tree.root / LP_CGROUP)
    assert [(r.group, r.cgroup, r.outcome) for r in result.results] == [("lp", lp, "applied")]
    assert recorded_writer.bodies[0]["generation"] == 7
    assert recorded_writer.bodies[0]["groups"][0]["io_max"]["rbps"] == 10 * 1024**2
    assert recorded_writer.headers[0]["Authorization"] == f"Bearer {PUSH_TOKEN}"
    # The limit landed on the LP cgroup (the push's devices default to auto: the fake tree's one disk).
    assert recorded_writer.lp_io_max_lines() == ["254:0 rbps=10485760 wbps=max riops=max wiops=max"]
    assert recorded_writer.tree.read(HP_CGROUP, "io.max") == ""


def test_a_push_with_the_wrong_token_is_refused_and_writes_nothing(recorded_writer: RecordedWriter) -> None:
    before = recorded_writer.tree.snapshot()
    with HttpPusher(token="not-" + PUSH_TOKEN, timeout_seconds=2) as pusher:
        (result,) = pusher.push([recorded_writer.url], body(7))
    assert result.outcome == "unauthorized" and result.status_code == 401 and result.results == ()
    assert recorded_writer.tree.snapshot() == before
    assert recorded_writer.pushes("unauthorized") == 1 and recorded_writer.pushes("accepted") == 0


def _answer(handler: BaseHTTPRequestHandler, node: str) -> None:
    """A writer's 200 answer to a push that matched nothing on ``node``."""
    answer = json.dumps({"node": node, "generation": 1, "results": []}).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(answer)))
    handler.end_headers()
    handler.wfile.write(answer)


def test_a_dead_and_a_hanging_writer_do_not_stop_the_healthy_one(dead_writer: str) -> None:
    # Overlap is proven, not timed: the hanging writer waits (bounded, well inside the pusher's
    # deadline) for the healthy writer to receive its push. That only happens if the pushes are
    # in flight together; a sequential pusher would reach the healthy writer only after the
    # hanging one timed out, so the hanging handler would see no overlap.
    timeout = 5.0
    healthy_received = threading.Event()
    release = threading.Event()  # ends the hanging handler once the pusher has given up on it
    overlapped: list[bool] = []
    healthy_bodies: list[dict[str, Any]] = []

    class Hanging(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            overlapped.append(healthy_received.wait(timeout=timeout - 1))
            release.wait(timeout=3 * timeout)  # never answers: the pusher times it out

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Healthy(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            healthy_bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            healthy_received.set()
            _answer(self, "healthy")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving_handler(Hanging) as hanging_port, serving_handler(Healthy) as healthy_port:
        hanging, healthy = f"http://127.0.0.1:{hanging_port}", f"http://127.0.0.1:{healthy_port}"
        try:
            with HttpPusher(token="t", timeout_seconds=timeout) as pusher:
                results = pusher.push([dead_writer, hanging, healthy], body())
        finally:
            release.set()
    outcomes = {r.writer: r.outcome for r in results}
    assert outcomes == {dead_writer: "unreachable", hanging: "timeout", healthy: "ok"}
    assert len(healthy_bodies) == 1
    assert overlapped == [True], "the healthy push arrived only after the hanging one was given up: not concurrent"


def test_the_dry_run_pusher_sends_nothing(recorded_writer: RecordedWriter) -> None:
    before = recorded_writer.tree.snapshot()
    pusher = DryRunPusher()
    (result,) = pusher.push([recorded_writer.url], body())
    assert result.outcome == "dry_run"
    assert recorded_writer.bodies == [] and len(pusher.bodies) == 1
    assert recorded_writer.tree.snapshot() == before and recorded_writer.lp_io_max() == ""


def test_static_writers_are_listed_as_given() -> None:
    assert StaticWriters(["http://a:1", "http://b:2"]).writers() == ["http://a:1", "http://b:2"]


class _Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class FakeDiscoveryApi:
    """Boundary fake of kubernetes.client.DiscoveryV1Api: recorded EndpointSlice shapes."""

    def __init__(self, slices: list[Any] | Exception) -> None:
        self.slices = slices
        self.calls: list[tuple[str, str]] = []
        self.timeouts: list[float] = []

    def list_namespaced_endpoint_slice(self, namespace: str, label_selector: str, _request_timeout: float) -> Any:
        self.calls.append((namespace, label_selector))
        self.timeouts.append(_request_timeout)
        if isinstance(self.slices, Exception):
            raise self.slices
        return _Obj(items=self.slices)


def endpoint(addr: str, ready: bool | None) -> Any:
    return _Obj(addresses=[addr], conditions=None if ready is None else _Obj(ready=ready))


def test_kubernetes_writers_are_the_ready_endpoints_of_the_service() -> None:
    api = FakeDiscoveryApi(
        [_Obj(endpoints=[endpoint("10.0.0.1", True), endpoint("10.0.0.2", False)]), _Obj(endpoints=[endpoint("fd00::3", None)])]
    )
    d = KubernetesWriterDirectory(namespace="drcio-system", service="drcio-writer", port=9100, api=api)
    assert d.writers() == ["http://10.0.0.1:9100", "http://[fd00::3]:9100"]
    assert api.calls == [("drcio-system", "kubernetes.io/service-name=drcio-writer")]


def test_a_failed_endpoint_listing_keeps_the_last_known_writers() -> None:
    api = FakeDiscoveryApi([_Obj(endpoints=[endpoint("10.0.0.1", True)])])
    d = KubernetesWriterDirectory(namespace="n", service="s", port=1, api=api)
    assert d.writers() == ["http://10.0.0.1:1"]
    api.slices = RuntimeError("apiserver down")
    assert d.writers() == ["http://10.0.0.1:1"]


def test_an_api_server_that_never_answers_the_listing_costs_one_deadline_not_the_loop() -> None:
    # The real kubernetes client against a loopback socket that accepts and never answers (a half-open
    # connection to the API server): the client's own default waits forever.
    from kubernetes import client

    with socket.create_server(("127.0.0.1", 0)) as silent:
        config = client.Configuration(host=f"http://127.0.0.1:{silent.getsockname()[1]}")
        api = client.DiscoveryV1Api(client.ApiClient(config))
        d = KubernetesWriterDirectory(namespace="n", service="s", port=1, api=api, timeout_seconds=0.5)
        found: list[list[str]] = []
        listing = threading.Thread(target=lambda: found.append(d.writers()), daemon=True)
        listing.start()
        listing.join(timeout=10.0)  # without a deadline this thread would wait forever
        assert not listing.is_alive() and found == [[]]
    fake = FakeDiscoveryApi([])
    KubernetesWriterDirectory(namespace="n", service="s", port=1, api=fake, timeout_seconds=1.5).writers()
    assert fake.timeouts == [1.5]


# -- at scale: connection reuse, bounded concurrency (behaviour; the timings live in benchmarks/scale.py) --


def test_a_steady_tick_reuses_the_connections_the_first_one_opened(tmp_path: Any) -> None:
    from tests.writer.conftest import make_tree, make_writer, serving
    from writer.server import build_app

    writers = []
    with ExitStack() as stack:
        for i in range(3):
            (tmp_path / f"w{i}").mkdir()
            tree = make_tree(tmp_path / f"w{i}", 2)
            tree.group("drcio-demo/lp")
            w = make_writer(tree, token=None)
            writers.append(stack.enter_context(serving(build_app(w.state))))
        with HttpPusher(token=None, timeout_seconds=2) as pusher:
            first = pusher.push(writers, body(1))
            assert pusher.connections_opened == 3
            second = pusher.push(writers, body(2))
            assert pusher.connections_opened == 3  # the real writer keeps them alive between ticks
    assert [r.outcome for r in first + second] == ["ok"] * 6


def test_no_more_than_max_in_flight_pushes_are_outstanding_at_once() -> None:
    from http.server import ThreadingHTTPServer

    changed = threading.Condition()
    state = {"now": 0, "peak": 0}
    # Each request is held open until a second one is in flight too (no timing involved): with
    # max_in_flight=2 the six requests pass in pairs, and a pusher that sent one at a time would
    # break the barrier (after its timeout, well inside the pusher's) and never reach a peak of 2.
    pair = threading.Barrier(2, timeout=2)

    class Slow(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            with changed:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                changed.notify_all()
            try:
                pair.wait()
            except threading.BrokenBarrierError:
                pass  # no partner arrived: answer anyway, the peak tells
            with changed:
                # The upper bound: the pair stays open a moment, so a third request - if the
                # pusher let one go - is counted before they leave (at once when it does).
                changed.wait_for(lambda: state["now"] > 2, timeout=0.2)
                state["now"] -= 1
            _answer(self, "slow")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Slow) for _ in range(6)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
        with HttpPusher(token=None, timeout_seconds=5, max_in_flight=2) as pusher:
            results = pusher.push(urls, body())
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    assert [r.outcome for r in results] == ["ok"] * 6
    assert state["peak"] == 2


def test_the_pusher_takes_its_tls_setting_as_an_argument(recorded_writer: RecordedWriter) -> None:
    ctx = ssl.create_default_context()
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=2, verify=ctx) as pusher:
        (result,) = pusher.push([recorded_writer.url], body())  # plain http: the context is unused, and harmless
    assert pusher.verify is ctx and result.outcome == "ok"
    assert recorded_writer.lp_io_max() == "254:0 rbps=10485760 wbps=max riops=max wiops=max"


def test_kubernetes_writers_are_named_by_their_node_for_sharding() -> None:
    ep = _Obj(addresses=["10.0.0.1"], conditions=None, node_name="node-a")
    d = KubernetesWriterDirectory(namespace="n", service="s", port=9100, api=FakeDiscoveryApi([_Obj(endpoints=[ep])]))
    (url,) = d.writers()
    assert d.node_of(url) == "node-a"
    assert d.node_of("http://10.9.9.9:9100") == "10.9.9.9:9100"


def test_garbage_collection_is_back_on_after_a_push_and_stays_off_if_it_was(recorded_writer: RecordedWriter) -> None:
    import gc

    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=2) as pusher:
        (first,) = pusher.push([recorded_writer.url], body(1))
        assert gc.isenabled()
        gc.disable()
        try:
            (second,) = pusher.push([recorded_writer.url], body(2))
            assert not gc.isenabled()
        finally:
            gc.enable()
    assert [first.outcome, second.outcome] == ["ok", "ok"]  # both pushes went through, with gc on and off
    assert recorded_writer.pushes("accepted") == 2
