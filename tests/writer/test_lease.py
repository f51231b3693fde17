"""Lease and fail-safe: a fake clock runs the lease out; each mode's effect on files, /status, metrics."""

from __future__ import annotations

import httpx
import pytest

from tests.writer.conftest import TOKEN, FakeClock, FakeTree, WriterUnderTest, make_writer, push_body, serving
from writer.api import TargetsPush
from writer.cgroups import UNLIMITED, Limits, read_io_max
from writer.lease import Failsafe, Lease
from writer.server import build_app

MiB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------- the lease itself


@pytest.mark.parametrize(
    ("last", "incoming", "expected"),
    [pytest.param(None, 0, "new", id="first-push"), pytest.param(3, 4, "new", id="higher"),
     pytest.param(3, 3, "replay", id="equal"), pytest.param(3, 2, "stale", id="lower")],
)
def test_generations_are_classified_against_the_last_accepted(last: int | None, incoming: int, expected: str) -> None:
    lease = Lease(initial_ttl_seconds=5, clock=FakeClock())
    if last is not None:
        lease.renew(last, 5)
    assert lease.check(incoming) == expected


def test_the_file_ttl_runs_from_start_and_a_push_ttl_takes_over() -> None:
    clock = FakeClock()
    lease = Lease(initial_ttl_seconds=30, clock=clock)
    clock.advance(29)
    assert not lease.expired()
    lease.renew(1, 5)
    clock.advance(5)
    assert not lease.expired() and lease.state().seconds_left == 0
    clock.advance(0.5)
    assert lease.expired() and lease.state().expired


def test_renewing_with_a_stale_generation_is_refused() -> None:
    lease = Lease(initial_ttl_seconds=5, clock=FakeClock())
    lease.renew(2, 5)
    with pytest.raises(ValueError, match="older"):
        lease.renew(1, 5)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [pytest.param("static", Limits(rbps=200 * MiB, wbps=50 * MiB), id="static"),
     pytest.param("release", UNLIMITED, id="release"), pytest.param("hold", None, id="hold")],
)
def test_each_failsafe_mode_means(mode: str, expected: Limits | None) -> None:
    assert Failsafe(mode).limits_in_failsafe() == expected  # type: ignore[arg-type]


# ---------------------------------------------------------------- expiry through the reconciler


def _expire_after_push(tree: FakeTree, mode: str) -> WriterUnderTest:
    tree.group("drcio-demo/lp")
    tree.group("drcio-demo/hp")
    w = make_writer(tree, failsafe=Failsafe(mode))  # type: ignore[arg-type]
    w.reconciler.push(TargetsPush.model_validate(push_body(1, ttl=2.0)))
    w.clock.advance(1.5)
    assert w.reconciler.mode == "following_push"
    w.clock.advance(1.0)
    w.reconciler.reconcile()
    return w


def _in_force(w: WriterUnderTest) -> dict[str, Limits]:
    return read_io_max(w.tree.hierarchy, w.tree.root / "drcio-demo/lp")


@pytest.mark.parametrize("mode", ["static", "release", "hold"])
def test_an_expired_lease_says_so_in_status_and_metrics(fake_tree: FakeTree, mode: str) -> None:
    w = _expire_after_push(fake_tree, mode)
    with serving(build_app(w.state)) as url:
        s = httpx.get(f"{url}/status", headers=AUTH).json()
        text = httpx.get(f"{url}/metrics").text
    assert s["mode"] == "failsafe"
    assert s["failsafe"]["active"] is True and s["failsafe"]["mode"] == mode
    assert s["lease"]["expired"] is True and s["lease"]["generation"] == 1
    assert any("-> failsafe" in e["event"] for e in s["events"])
    assert "drcio_lease_expired 1.0" in text and "drcio_failsafe_active 1.0" in text


def test_static_failsafe_writes_the_configured_limits_on_the_last_devices(fake_tree: FakeTree) -> None:
    w = _expire_after_push(fake_tree, "static")
    assert _in_force(w) == {"254:0": Limits(rbps=200 * MiB, wbps=50 * MiB)}
    labels = {"group": "lp", "workload": "lp-batch", "device": "254:0"}
    assert w.metric("drcio_io_max_bytes_per_second", {**labels, "direction": "read"}) == 200 * MiB
    assert w.metric("drcio_io_max_bytes_per_second", {**labels, "direction": "write"}) == 50 * MiB


def test_release_failsafe_lifts_every_limit(fake_tree: FakeTree) -> None:
    w = _expire_after_push(fake_tree, "release")
    assert _in_force(w) == {}
    assert w.metric("drc_io_cgroups_with_limits") == 0


def test_hold_failsafe_leaves_the_last_limits_alone(fake_tree: FakeTree) -> None:
    w = _expire_after_push(fake_tree, "hold")
    assert _in_force(w) == {"254:0": Limits(rbps=10 * MiB)}


def test_a_new_push_ends_the_failsafe(fake_tree: FakeTree) -> None:
    w = _expire_after_push(fake_tree, "static")
    w.reconciler.push(TargetsPush.model_validate(push_body(2, ttl=2.0)))
    assert w.reconciler.mode == "following_push"
    assert _in_force(w) == {"254:0": Limits(rbps=10 * MiB)}
    assert w.metric("drcio_failsafe_active") == 0


def test_before_the_first_push_the_writer_holds_then_fails_safe_after_the_file_ttl(fake_v2: FakeTree) -> None:
    d = fake_v2.group("drcio-demo/lp", **{"io.max": "254:0 rbps=1234 wbps=max riops=max wiops=max\n"})
    w = make_writer(fake_v2, initial_ttl=30.0)
    before = fake_v2.snapshot()
    [res] = w.reconciler.reconcile()
    assert res.outcome == "unchanged" and fake_v2.snapshot() == before  # read, not rewritten
    assert w.reconciler.status()["mode"] == "awaiting_first_push"
    w.clock.advance(31)
    w.reconciler.reconcile()
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=200 * MiB, wbps=50 * MiB)}  # failsafe.devices = auto
