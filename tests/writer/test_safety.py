"""What the writer trusts (issue 9): /status behind the token, replays must match, the lease TTL
is capped, weights are reset, the controller's fail-safe is taken within the writer's bounds."""

from __future__ import annotations

import pytest

from tests.writer.conftest import FakeTree, WriterUnderTest, make_writer, push_body
from writer.api import TargetsPush
from writer.cgroups import Limits, read_io_max, read_weight
from writer.lease import Failsafe

MiB = 1024 * 1024


def test_status_needs_the_token_while_health_and_metrics_stay_open(writer_v2: WriterUnderTest) -> None:
    assert writer_v2.get("/status", token=None).status_code == 401
    assert writer_v2.get("/status", token="wrong").status_code == 401
    assert writer_v2.get("/status").status_code == 200
    assert writer_v2.get("/health", token=None).status_code == 200
    metrics = writer_v2.get("/metrics", token=None)
    assert metrics.status_code == 200
    # What /metrics may reveal is documented (writer.server); cgroup paths and selectors are not in it.
    assert "drcio-demo/lp" not in metrics.text and "group-id" not in metrics.text


def test_a_replayed_generation_with_a_different_body_is_409_and_writes_nothing(writer_v2: WriterUnderTest) -> None:
    assert writer_v2.put(push_body(7)).status_code == 200
    before = writer_v2.tree.snapshot()
    r = writer_v2.put(push_body(7, io_max={"rbps": 1 * MiB}))
    assert r.status_code == 409 and "different body" in r.text
    assert writer_v2.tree.snapshot() == before
    assert writer_v2.put(push_body(7)).status_code == 200  # the same body again is an idempotent replay


def test_the_writer_caps_the_lease_ttl_a_push_asks_for(fake_v2: FakeTree) -> None:
    fake_v2.group("drcio-demo/lp")
    w = make_writer(fake_v2, max_ttl=300.0)
    w.reconciler.push(TargetsPush.model_validate(push_body(1, ttl=86_400.0)))  # "hold off the fail-safe for a day"
    status = w.reconciler.status()
    assert status["lease"]["ttl_seconds"] == 300.0  # type: ignore[index]
    assert any("capped" in str(e["event"]) for e in status["events"])  # type: ignore[attr-defined]
    w.clock.advance(300.5)
    assert w.reconciler.mode == "failsafe"


def test_the_weight_is_reset_when_its_group_disappears_from_the_push(fake_tree: FakeTree) -> None:
    d = fake_tree.group("drcio-demo/lp")
    w = make_writer(fake_tree)
    default = read_weight(fake_tree.hierarchy, d)
    w.reconciler.push(TargetsPush.model_validate(push_body(1, io_weight=20)))
    assert read_weight(fake_tree.hierarchy, d) != default
    w.reconciler.push(TargetsPush.model_validate({**push_body(2), "groups": []}))
    assert read_io_max(fake_tree.hierarchy, d) == {}
    assert read_weight(fake_tree.hierarchy, d) == default


def test_the_weight_is_reset_when_the_release_failsafe_takes_over(fake_tree: FakeTree) -> None:
    d = fake_tree.group("drcio-demo/lp")
    w = make_writer(fake_tree, failsafe=Failsafe("release"))
    default = read_weight(fake_tree.hierarchy, d)
    w.reconciler.push(TargetsPush.model_validate(push_body(1, ttl=2.0, io_weight=20)))
    assert read_weight(fake_tree.hierarchy, d) != default
    w.clock.advance(2.5)
    w.reconciler.reconcile()
    assert read_io_max(fake_tree.hierarchy, d) == {}
    assert read_weight(fake_tree.hierarchy, d) == default


@pytest.mark.parametrize(
    ("pushed", "applied"),
    [
        pytest.param({"rbps": 20 * MiB, "wbps": 5 * MiB}, Limits(rbps=20 * MiB, wbps=5 * MiB), id="tighter-than-static-taken"),
        pytest.param({"rbps": 900 * MiB}, Limits(rbps=200 * MiB, wbps=50 * MiB), id="looser-than-static-capped"),
        pytest.param({"rbps": 1, "wbps": 2, "riops": 1}, Limits(rbps=MiB, wbps=MiB, riops=10), id="below-the-floor-raised"),
        pytest.param(None, Limits(rbps=200 * MiB, wbps=50 * MiB), id="none-pushed-static"),
    ],
)
def test_on_expiry_the_pushed_failsafe_applies_within_the_writers_bounds(
    fake_tree: FakeTree, pushed: dict[str, int] | None, applied: Limits
) -> None:
    d = fake_tree.group("drcio-demo/lp")
    w = make_writer(fake_tree)  # static fail-safe 200M/50M, floors 1M and 10 IOPS
    w.reconciler.push(TargetsPush.model_validate(push_body(1, ttl=2.0, failsafe=pushed)))
    assert read_io_max(fake_tree.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}
    w.clock.advance(2.5)
    w.reconciler.reconcile()
    assert read_io_max(fake_tree.hierarchy, d) == {"254:0": applied}
