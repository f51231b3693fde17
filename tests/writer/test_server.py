"""The writer's HTTP API over real HTTP (uvicorn on loopback) and fake cgroup trees."""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Any

import httpx

from tests.writer.conftest import TOKEN, FakeTree, WriterUnderTest, make_writer, push_body, serving
from writer.discovery import Workload
from writer.server import build_app

MB10 = 10 * 1024 * 1024


def test_health_answers_200_while_serving(writer_v2: WriterUnderTest) -> None:
    r = writer_v2.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_a_push_writes_io_max_on_the_lp_cgroup_only(writer_any: WriterUnderTest) -> None:
    r = writer_any.put(push_body())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node"] == "node-a" and body["generation"] == 1
    assert [(x["group"], x["outcome"]) for x in body["results"]] == [("lp", "applied")]
    assert body["results"][0]["cgroup"].endswith("drcio-demo/lp")
    if writer_any.tree.hierarchy.version == 2:
        assert writer_any.tree.read("drcio-demo/lp", "io.max") == "254:0 rbps=10485760 wbps=max riops=max wiops=max\n"
        assert writer_any.tree.read("drcio-demo/hp", "io.max") == ""
    else:
        assert writer_any.tree.read("drcio-demo/lp", "blkio.throttle.read_bps_device") == "254:0 10485760\n"
        assert writer_any.tree.read("drcio-demo/hp", "blkio.throttle.read_bps_device") == ""


def test_a_replayed_generation_is_idempotent(writer_v2: WriterUnderTest) -> None:
    assert writer_v2.put(push_body(3)).status_code == 200
    before = writer_v2.tree.snapshot()
    r = writer_v2.put(push_body(3))
    assert r.status_code == 200
    assert [x["outcome"] for x in r.json()["results"]] == ["unchanged"]
    assert writer_v2.tree.snapshot() == before
    assert writer_v2.metric("drcio_pushes_total", {"result": "replay"}) == 1.0


def test_a_push_lifting_the_limit_writes_max(writer_v2: WriterUnderTest) -> None:
    writer_v2.put(push_body(1))
    r = writer_v2.put(push_body(2, io_max={}))
    assert [x["outcome"] for x in r.json()["results"]] == ["applied"]
    assert writer_v2.tree.read("drcio-demo/lp", "io.max").splitlines()[-1] == "254:0 rbps=max wbps=max riops=max wiops=max"


def test_a_weight_is_written_and_reported_inert_without_bfq_or_io_cost(writer_v2: WriterUnderTest) -> None:
    r = writer_v2.put(push_body(io_weight=50))
    assert r.json()["results"][0]["outcome"] == "applied"
    assert writer_v2.tree.read("drcio-demo/lp", "io.weight").splitlines()[-1] == "default 50"
    assert writer_v2.metric("drcio_io_weight", {"group": "lp", "workload": "lp-batch"}) == 50.0
    assert writer_v2.metric("drcio_io_weight_effective", {"group": "lp"}) == 0.0
    assert "inert" in writer_v2.get("/status").json()["weights"]["lp"]


def test_a_weight_is_effective_where_io_cost_is_enabled(writer_v2: WriterUnderTest) -> None:
    (writer_v2.tree.root / "io.cost.qos").write_text("254:0 enable=1 ctrl=auto rpct=0.00 rlat=250000\n")
    writer_v2.put(push_body(io_weight=50))
    assert writer_v2.metric("drcio_io_weight_effective", {"group": "lp"}) == 1.0
    assert writer_v2.get("/status").json()["weights"]["lp"] == "effective"


def test_status_shows_workloads_limits_read_back_lease_and_config(writer_v2: WriterUnderTest) -> None:
    writer_v2.put(push_body(7, ttl=20))
    (writer_v2.tree.root / "drcio-demo/lp/io.stat").write_text("254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")
    s = writer_v2.get("/status").json()
    assert s["mode"] == "following_push"
    assert [w["name"] for w in s["hp_workloads"]] == ["hp-gnn"]
    [lp] = s["lp_workloads"]
    assert lp["group"] == "lp" and lp["cgroup"].endswith("drcio-demo/lp")
    assert lp["io_max_in_force"] == {"254:0": {"rbps": MB10}}
    assert lp["io_bytes"] == {"254:0": {"read": 4096, "write": 0}}
    assert s["lease"]["generation"] == 7 and s["lease"]["ttl_seconds"] == 20 and not s["lease"]["expired"]
    assert s["failsafe"] == {"mode": "static", "active": False, "static_limits": {"rbps": 200 * 1024**2, "wbps": 50 * 1024**2, "riops": None, "wiops": None}}
    assert s["config"] == {"listen": "127.0.0.1:0"}
    assert TOKEN not in writer_v2.get("/status").text


def test_status_reads_limits_back_from_the_files_not_from_memory(writer_v2: WriterUnderTest) -> None:
    writer_v2.put(push_body())
    (writer_v2.tree.root / "drcio-demo/lp/io.max").write_text("254:0 rbps=1 wbps=max riops=max wiops=max\n")
    [lp] = writer_v2.get("/status").json()["lp_workloads"]
    assert lp["io_max_in_force"] == {"254:0": {"rbps": 1}}


def test_metrics_show_limits_pods_generation_and_bytes(writer_v2: WriterUnderTest) -> None:
    writer_v2.put(push_body(5, io_max={"rbps": MB10, "wiops": 300}))
    (writer_v2.tree.root / "drcio-demo/lp/io.stat").write_text("254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n")
    labels = {"group": "lp", "workload": "lp-batch", "device": "254:0"}
    assert writer_v2.metric("drcio_io_max_bytes_per_second", {**labels, "direction": "read"}) == MB10
    assert writer_v2.metric("drcio_io_max_bytes_per_second", {**labels, "direction": "write"}) is None  # max
    assert writer_v2.metric("drcio_io_max_iops", {**labels, "direction": "write"}) == 300
    assert writer_v2.metric("drcio_io_read_bytes_total", labels) == 100
    assert writer_v2.metric("drcio_io_write_bytes_total", labels) == 200
    assert writer_v2.metric("drc_io_low_priority_pods") == 1
    assert writer_v2.metric("drc_io_high_priority_pods") == 1
    assert writer_v2.metric("drc_io_cgroups_with_limits") == 1
    assert writer_v2.metric("drcio_push_generation") == 5
    assert writer_v2.metric("drc_io_last_update_timestamp") == 1_700_000_000.0
    assert writer_v2.metric("drcio_pushes_total", {"result": "accepted"}) == 1
    assert writer_v2.metric("drcio_lease_expired") == 0
    assert writer_v2.metric("drcio_failsafe_active") == 0
    text = writer_v2.get("/metrics").text
    assert 'drcio_io_max_bytes_per_second{device="254:0",direction="read",group="lp",workload="lp-batch"} 1.048576e+07' in text


def test_a_failing_read_leaves_samples_out_and_the_scrape_works(writer_v2: WriterUnderTest) -> None:
    writer_v2.put(push_body())
    (writer_v2.tree.root / "drcio-demo/lp/io.stat").unlink()
    r = writer_v2.get("/metrics")
    assert r.status_code == 200
    assert writer_v2.metric("drcio_io_read_bytes_total", {"group": "lp", "workload": "lp-batch", "device": "254:0"}) is None
    assert writer_v2.metric("drcio_io_max_bytes_per_second", {"group": "lp", "workload": "lp-batch", "device": "254:0", "direction": "read"}) == MB10


def test_a_group_selecting_an_hp_workload_never_writes_it(writer_v2: WriterUnderTest) -> None:
    before = writer_v2.tree.read("drcio-demo/hp", "io.max")
    r = writer_v2.put(push_body(selector={"group-id": "hp"}))
    assert r.status_code == 200
    [res] = [x for x in r.json()["results"] if x["cgroup"].endswith("hp")]
    assert res["outcome"] == "error" and "high-priority" in res["detail"]
    assert writer_v2.tree.read("drcio-demo/hp", "io.max") == before


def test_a_device_the_node_cannot_resolve_is_an_error_result_and_nothing_is_written(writer_v2: WriterUnderTest) -> None:
    before = writer_v2.tree.snapshot()
    r = writer_v2.put(push_body(devices=[{"mount": "/mnt/features"}]))
    assert r.status_code == 200
    [res] = r.json()["results"]
    assert res["outcome"] == "error" and "/mnt/features" in res["detail"]
    assert writer_v2.tree.snapshot() == before


def test_openapi_describes_the_push_body(writer_v2: WriterUnderTest) -> None:
    spec = build_app(writer_v2.state).openapi()  # not served (see test_security); the schema is the app's
    put = spec["paths"]["/v1/targets"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TargetsPush"}
    assert "GroupTarget" in spec["components"]["schemas"]


def test_unknown_paths_answer_json_errors(writer_v2: WriterUnderTest) -> None:
    r = writer_v2.get("/nope")
    assert r.status_code == 404 and r.json()["error"]


def test_a_push_during_a_long_reconcile_round_waits_off_the_event_loop(fake_v2: FakeTree) -> None:
    # A background round holds the reconciler (here: discovery stuck inside it). A push waits for the round to end,
    # and meanwhile the probes' /health and the scrapes' /metrics still answer.
    lp = fake_v2.group("drcio-demo/lp")
    entered, release = threading.Event(), threading.Event()

    class StuckDiscovery:
        def __init__(self) -> None:
            self.stuck = False

        def snapshot(self) -> list[Workload]:
            if self.stuck:
                entered.set()
                release.wait(timeout=30)
            return [Workload("lp-batch", None, None, MappingProxyType({"group-id": "lp"}), lp, "lp")]

        def start(self, on_change: Any) -> None:
            pass

        def stop(self) -> None:
            pass

    discovery = StuckDiscovery()
    w = make_writer(fake_v2, discovery=discovery)
    arrived = threading.Event()
    push_now = w.reconciler.push

    def push_noting_arrival(body: Any) -> Any:
        arrived.set()
        return push_now(body)

    w.reconciler.push = push_noting_arrival  # type: ignore[method-assign]
    with serving(build_app(w.state)) as url:
        w.url = url
        discovery.stuck = True
        round_ = threading.Thread(target=w.reconciler.reconcile, daemon=True)
        round_.start()
        assert entered.wait(timeout=10)
        discovery.stuck = False
        pushed: list[httpx.Response] = []
        push = threading.Thread(target=lambda: pushed.append(w.put(push_body(), timeout=30)), daemon=True)
        push.start()
        try:
            assert arrived.wait(timeout=10)  # the push is in the writer, waiting for the round
            assert w.get("/health").status_code == 200  # and the event loop still answers
            assert not pushed
        finally:
            release.set()
        push.join(timeout=30)
        round_.join(timeout=30)
    assert pushed and pushed[0].status_code == 200, pushed
    assert fake_v2.read("drcio-demo/lp", "io.max") == "254:0 rbps=10485760 wbps=max riops=max wiops=max\n"
