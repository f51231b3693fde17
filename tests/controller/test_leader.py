"""Leader election on a Lease: at the API boundary (a fake with the API server's
concurrency rules) and on a fake clock; no sleeps."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from controller.leader import GENERATION_ANNOTATION, ElectionConfig, LeaderElector, LeaderGatedPusher
from controller.push import InForce, PushResult
from tests.controller.fake_lease_api import FakeLeaseApi, meta_of, spec_of
from writer.api import TargetsPush

DURATION, DEADLINE, RETRY = 15.0, 10.0, 2.0


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Replica:
    """One controller replica: its elector, its generation counter, what it was told."""

    def __init__(self, api: FakeLeaseApi, name: str, clock: Clock, *, wall_offset: float = 0.0) -> None:
        self.generation = 0
        self.floors: list[int] = []
        self.changes: list[bool] = []
        self.elector = LeaderElector(
            api, ElectionConfig(identity=name, lease_duration_seconds=DURATION, renew_deadline_seconds=DEADLINE,
                                retry_period_seconds=RETRY),
            generation=lambda: self.generation, on_elected=self.elected, on_change=self.changes.append,
            monotonic=clock, wall=lambda: 1.8e9 + clock() + wall_offset)

    def elected(self, floor: int) -> None:
        self.floors.append(floor)
        self.generation = max(self.generation, floor)

    def tick(self) -> bool:
        return self.elector.try_acquire_or_renew()


@pytest.fixture
def api() -> FakeLeaseApi:
    return FakeLeaseApi()


def run_rounds(clock: Clock, replicas: Sequence[Replica], seconds: float, *, alive: Sequence[bool] | None = None) -> None:
    end = clock.t + seconds
    while clock.t < end:
        for i, r in enumerate(replicas):
            if alive is None or alive[i]:
                r.tick()
        clock.t += RETRY


def test_the_first_replica_creates_the_lease_and_leads(api: FakeLeaseApi) -> None:
    clock = Clock()
    a = Replica(api, "a", clock)
    assert a.tick() is True
    assert api.holder() == "a" and a.elector.is_leader()
    lease = api.leases[("drcio-system", "drcio-controller")]
    assert spec_of(lease).lease_duration_seconds == 15 and spec_of(lease).lease_transitions == 0


def test_exactly_one_of_two_replicas_leads_and_the_other_waits(api: FakeLeaseApi) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    run_rounds(clock, [a, b], 60)
    assert a.elector.is_leader() and not b.elector.is_leader()
    assert api.holder() == "a"
    assert b.changes == []


def test_a_standby_takes_over_within_the_lease_duration_plus_one_retry_after_the_leader_dies(
    api: FakeLeaseApi,
) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    run_rounds(clock, [a, b], 20)
    last_renewal = clock.t - RETRY  # a renewed in the last round
    while not b.elector.is_leader():
        b.tick()  # a is dead: only b runs
        clock.t += RETRY
        assert clock.t - last_renewal <= DURATION + 2 * RETRY, "standby too slow"
    took_over_at = clock.t - RETRY
    assert took_over_at - last_renewal <= DURATION + RETRY
    assert took_over_at - last_renewal >= DURATION  # and never before the lease ran out
    assert api.holder() == "b"
    assert spec_of(api.leases[("drcio-system", "drcio-controller")]).lease_transitions == 1


def test_a_live_leader_is_never_displaced_even_when_the_standby_clock_is_ahead(api: FakeLeaseApi) -> None:
    clock = Clock()
    a = Replica(api, "a", clock)
    b = Replica(api, "b", clock, wall_offset=3600.0)  # its wall clock is an hour ahead
    run_rounds(clock, [a, b], 300)
    assert api.holder() == "a" and not b.elector.is_leader()


def test_a_leader_that_cannot_renew_stops_pushing_before_the_standby_may_take_over(api: FakeLeaseApi) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    run_rounds(clock, [a, b], 10)
    last_renewal = clock.t - RETRY
    pushes: list[int] = []

    class Inner:
        def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
            pushes.append(body.generation)
            return [PushResult(w, "ok") for w in writers]

        def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
            return []

    gated = LeaderGatedPusher(Inner(), a.elector.is_leader)
    body = TargetsPush(generation=1, lease_ttl_seconds=30, groups=[], controller="t")
    api.fail_next = 10**6  # the API server is unreachable for a (b is partitioned away too)
    stopped_at = None
    while clock.t - last_renewal < DURATION:
        a.tick()
        if gated.push(["http://w"], body) == [] and stopped_at is None:
            stopped_at = clock.t
        clock.t += 1.0
    assert stopped_at is not None and stopped_at - last_renewal <= DEADLINE + RETRY
    assert stopped_at - last_renewal < DURATION  # before any standby may take over
    assert a.changes == [True, False]


def test_generations_stay_monotonic_across_leaders_despite_a_slow_wall_clock(api: FakeLeaseApi) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    a.generation = 1_800_000_000_000  # ms of a's wall clock
    run_rounds(clock, [a, b], 10)
    assert (meta_of(api.leases[("drcio-system", "drcio-controller")]).annotations or {})[GENERATION_ANNOTATION] == str(a.generation)
    a.generation += int(DEADLINE * 1000)  # a pushed for up to renew_deadline after its last renewal
    last_of_a = a.generation
    b.generation = 1_799_999_000_000  # b's clock runs 1000 s behind
    run_rounds(clock, [a, b], 30, alive=[False, True])
    assert b.elector.is_leader()
    assert b.floors and b.generation > last_of_a


def test_a_conflicting_write_loses_the_round_instead_of_overwriting(api: FakeLeaseApi) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    a.tick()
    stale = api.read_namespaced_lease("drcio-controller", "drcio-system")
    a.tick()  # a renews: the stored resourceVersion moves on
    spec_of(stale).holder_identity = "b"
    with pytest.raises(Exception) as err:
        api.replace_namespaced_lease("drcio-controller", "drcio-system", stale)
    assert getattr(err.value, "status", None) == 409
    assert api.holder() == "a" and not b.tick()


def test_both_replicas_racing_to_create_the_lease_yield_one_leader(api: FakeLeaseApi) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    assert [a.tick(), b.tick()] == [True, False]


def test_timing_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        ElectionConfig(identity="a", lease_duration_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ValueError, match="identity"):
        ElectionConfig()


def test_leader_election_is_refused_with_once() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "from controller.cli import main; main()", "--config", "deploy/base/slo.yaml",
         "--once", "--leader-elect"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--leader-elect is for the long-running controller" in proc.stderr


def test_a_leader_that_shuts_down_releases_the_lease_and_the_standby_takes_over_at_once(api: FakeLeaseApi) -> None:
    clock = Clock()
    a, b = Replica(api, "a", clock), Replica(api, "b", clock)
    a.generation = 1_800_000_000_000
    run_rounds(clock, [a, b], 10)
    a.elector.release()
    assert not a.elector.is_leader() and a.changes == [True, False]
    assert b.tick() is True  # the very next round, not lease_duration later
    assert b.generation > 1_800_000_000_000


def test_the_cli_wiring_lets_only_the_leader_push(tmp_path: object) -> None:
    from controller.cli import build_controller
    from controller.config import parse_config

    config = parse_config({
        "prometheus": {"url": "http://127.0.0.1:9", "timeout": "200ms", "retries": 0},
        "writers": {"static": ["http://127.0.0.1:9100"]},
        "slos": [{"name": "s", "metric": "m", "target": "100ms", "policy": {"kind": "static", "level": 0.5},
                  "throttle": {"selector": {"group-id": "lp"}, "rbps": {"min": "1M", "max": "max"}}}],
    })
    leading = [False]
    controller = build_controller(config, dry_run=True, leader=lambda: leading[0])
    assert controller.step(1.8e9).pushes == []  # standby: computes, pushes nothing
    leading[0] = True
    assert [p.outcome for p in controller.step(1.8e9 + 5).pushes] == ["dry_run"]
