"""Pushes over real HTTP: concurrent, one deadline per writer, one bad writer never blocks the others."""

from __future__ import annotations

import time
from typing import Any

from controller.push import DryRunPusher, HttpPusher, KubernetesWriterDirectory, StaticWriters
from tests.controller.conftest import PushRecorder
from writer.api import GroupTarget, IoMax, TargetsPush


def body(generation: int = 1) -> TargetsPush:
    return TargetsPush(
        generation=generation,
        lease_ttl_seconds=30,
        groups=[GroupTarget(name="lp", selector={"group-id": "lp"}, io_max=IoMax(rbps=10 * 1024**2), level=0.0)],
    )


def test_a_push_reaches_the_writer_with_the_bearer_token(push_recorder: PushRecorder) -> None:
    (result,) = HttpPusher(token="s3cret", timeout_seconds=2).push([push_recorder.url], body(7))
    assert result.outcome == "ok" and result.status_code == 200 and result.node == "recorder"
    assert [r.outcome for r in result.results] == ["applied"]
    assert push_recorder.bodies[0]["generation"] == 7
    assert push_recorder.bodies[0]["groups"][0]["io_max"]["rbps"] == 10 * 1024**2
    assert push_recorder.headers[0]["Authorization"] == "Bearer s3cret"


def test_a_dead_and_a_hanging_writer_do_not_stop_the_healthy_one(
    push_recorder: PushRecorder, dead_writer: str, hanging_writer: str
) -> None:
    started = time.monotonic()
    results = HttpPusher(token="t", timeout_seconds=0.5).push([dead_writer, hanging_writer, push_recorder.url], body())
    elapsed = time.monotonic() - started
    outcomes = {r.writer: r.outcome for r in results}
    assert outcomes == {dead_writer: "unreachable", hanging_writer: "timeout", push_recorder.url: "ok"}
    assert len(push_recorder.bodies) == 1
    # Concurrent, bounded by the one deadline (not the sum of them); generous slack for a loaded CI box.
    assert elapsed < 0.5 * 4


def test_the_dry_run_pusher_sends_nothing(push_recorder: PushRecorder) -> None:
    pusher = DryRunPusher()
    (result,) = pusher.push([push_recorder.url], body())
    assert result.outcome == "dry_run"
    assert push_recorder.bodies == [] and len(pusher.bodies) == 1


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

    def list_namespaced_endpoint_slice(self, namespace: str, label_selector: str) -> Any:
        self.calls.append((namespace, label_selector))
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
