"""Taking over: a controller that starts, or is elected leader, starts its policies from the level in force.

The writers are the real writer app over real HTTP (``recorded_writer``); the
sensor is scripted (the readings are not what is under test). Being elected is
the elector's ``on_elected`` calling :meth:`Controller.request_take_over` before
``is_leader`` turns true: most tests do that by hand, the fail-over test through
the CLI's own wiring (``build_elector``) on a fake Lease API.
"""

from __future__ import annotations

import logging
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from controller.cli import build_elector
from controller.config import ControllerConfig, parse_config
from controller.leader import ElectionConfig, LeaderElector, LeaderGatedPusher, push_gate
from controller.loop import Controller, levels_in_force
from controller.metrics import ControllerMetrics
from controller.push import HttpPusher, InForce, StaticWriters
from controller.sensor import Reading
from policies import SensorStatus
from tests.controller.conftest import PUSH_TOKEN, RecordedWriter, serving_handler
from tests.controller.fake_lease_api import FakeLeaseApi
from tests.controller.test_loop import ScriptedSensor

TARGET = 0.1
#: The HP latency at 60 % of the target: headroom, so AIMD keeps opening and a PID at setpoint 0.4 holds.
HEADROOM = Reading(SensorStatus.OK, 0.06, request_rate=200.0)


def config(writers: list[str], policy: dict[str, Any], **top: Any) -> ControllerConfig:
    return parse_config({
        "interval": "1s",
        "prometheus": {"url": "http://127.0.0.1:1", "timeout": "500ms", "retries": 0},
        "writers": {"static": writers, "timeout": "1s"},
        "failsafe": {"after": 2, "level": 0.2},
        "slos": [{
            "name": "gnn-p95", "metric": "gnn_request_latency_seconds", "labels": {"job": "hp-gnn"},
            "window": "3s", "target": "100ms", "policy": policy,
            "throttle": {"selector": {"group-id": "lp"}, "rbps": {"min": "10M", "max": "1G"}},
        }],
        **top,
    })


def controller(cfg: ControllerConfig, pusher: Any, reading: Reading = HEADROOM) -> Controller:
    return Controller(cfg, sensor=ScriptedSensor([reading]), pusher=pusher,
                      writers=StaticWriters(cfg.writers.static or []))


def leave_level_in_force(writer: RecordedWriter, level: float) -> None:
    """A first controller (a static policy at ``level``) pushes once, as the one before a restart or fail-over."""
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as pusher:
        tick = controller(config([writer.url], {"kind": "static", "level": level}), pusher).step(1.7e9)
    assert tick.records[0]["level"] == level and [p.outcome for p in tick.pushes] == ["ok"]


def test_a_new_leader_starts_from_the_level_in_force_not_where_its_standby_policy_drifted(
    recorded_writer: RecordedWriter,
) -> None:
    leave_level_in_force(recorded_writer, 0.35)
    in_force = recorded_writer.lp_io_max()
    leader = False
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        standby = controller(config([recorded_writer.url], {"kind": "aimd", "increase": 0.1, "decrease": 0.5}),
                             LeaderGatedPusher(http, lambda: leader))
        for i in range(20):  # it steps on readings of a plant the leader drives: AIMD sees headroom, opens and opens
            (rec,) = standby.step(1.7e9 + 1 + i).records
        assert rec["level"] == 1.0 and len(recorded_writer.bodies) == 1 and recorded_writer.lp_io_max() == in_force
        standby.request_take_over()  # on_elected, before is_leader() turns true
        leader = True
        tick = standby.step(1.7e9 + 30)
    # From 0.35, one AIMD step up (+0.1) on the reading's headroom; not from the 1.0 the standby reached.
    assert tick.records[0]["level"] == pytest.approx(0.45) and [p.outcome for p in tick.pushes] == ["ok"]
    assert recorded_writer.bodies[-1]["groups"][0]["level"] == pytest.approx(0.45)
    assert recorded_writer.lp_io_max() not in (in_force, "254:0 rbps=max")


@pytest.mark.parametrize(("start_level", "expected"), [("in-force", 0.35), ("failsafe", 0.2), (0.6, 0.6)])
def test_a_restarted_controller_starts_where_start_level_says(
    recorded_writer: RecordedWriter, start_level: str | float, expected: float
) -> None:
    leave_level_in_force(recorded_writer, 0.35)
    # A PID aiming at 40 % slack, reading exactly 40 %: no error, so the level is where it started.
    pid = {"kind": "pid", "setpoint": 0.4}
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        c = controller(config([recorded_writer.url], pid, start_level=start_level), http)
        c.request_take_over()  # what the CLI does without leader election
        (rec,) = c.step(1.7e9 + 10).records
    assert rec["level"] == pytest.approx(expected)
    assert recorded_writer.bodies[-1]["groups"][0]["level"] == pytest.approx(expected)


def test_a_writer_in_fail_safe_holds_at_most_the_fail_safe_level(recorded_writer: RecordedWriter) -> None:
    leave_level_in_force(recorded_writer, 0.35)
    recorded_writer.writer.clock.advance(3600)  # the lease ran out: the writer applies its fail-safe
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        (report,) = http.read_in_force([recorded_writer.url], 5.0)
        c = controller(config([recorded_writer.url], {"kind": "pid", "setpoint": 0.4}), http)
        assert c.take_over() == {"gnn-p95": 0.2}
    assert report.failsafe_active and report.levels == {"lp": 0.35}


def test_writers_that_refuse_or_do_not_answer_count_for_nothing(
    recorded_writer: RecordedWriter, dead_writer: str, caplog: pytest.LogCaptureFixture
) -> None:
    leave_level_in_force(recorded_writer, 0.8)
    with HttpPusher(token="wrong", timeout_seconds=1) as http:
        reports = http.read_in_force([recorded_writer.url, dead_writer], 5.0)
        c = controller(config([recorded_writer.url, dead_writer], {"kind": "pid", "setpoint": 0.4}), http)
        with caplog.at_level(logging.INFO, logger="controller.loop"):
            levels = c.take_over()
    assert [r.error is not None for r in reports] == [True, True]
    assert "HTTP 401" in (reports[0].error or "") and reports[0].levels == {}
    assert levels == {"gnn-p95": 0.2}
    assert "gnn-p95 0.200 (in force on 0 of 2 writer(s)" in caplog.text


def test_a_tick_during_which_the_replica_is_elected_pushes_nothing(recorded_writer: RecordedWriter) -> None:
    leave_level_in_force(recorded_writer, 0.35)
    leader = False

    class ElectedMidTick(ScriptedSensor):
        def read(self, slo: Any, at: float) -> Reading:
            nonlocal leader
            if at == 1.7e9 + 5:  # the elector thread, while this tick's policies already ran on the old state
                standby.request_take_over()
                leader = True
            return super().read(slo, at)

    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        cfg = config([recorded_writer.url], {"kind": "aimd", "increase": 0.1, "decrease": 0.5})
        standby = Controller(cfg, sensor=ElectedMidTick([HEADROOM]), pusher=LeaderGatedPusher(http, lambda: leader),
                             writers=StaticWriters([recorded_writer.url]))
        for i in range(5):
            standby.step(1.7e9 + i)
        tick = standby.step(1.7e9 + 5)  # from the fail-safe 0.2 it drifted up by 0.1 a tick, before the election
        assert tick.records[0]["level"] == pytest.approx(0.8) and tick.pushes == []
        assert len(recorded_writer.bodies) == 1
        (rec,) = standby.step(1.7e9 + 6).records
    assert rec["level"] == pytest.approx(0.45) and recorded_writer.bodies[-1]["groups"][0]["level"] == pytest.approx(0.45)


def test_an_election_between_the_ticks_check_and_the_push_gate_pushes_nothing(recorded_writer: RecordedWriter) -> None:
    # The narrowest interleaving: the elector's thread elects this replica after the tick checked for a pending
    # take-over and before the gate asks whether it leads. The gate (as controller.cli builds it) asks in the
    # order that sees the take-over whenever it sees the leadership.
    leave_level_in_force(recorded_writer, 0.35)
    elected = False

    def is_leader() -> bool:
        nonlocal elected
        if not elected and len(standby_ticks) == 6:
            standby.request_take_over()  # what the elector does first, then it counts as leader
            elected = True
        return elected

    standby_ticks: list[int] = []
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        cfg = config([recorded_writer.url], {"kind": "aimd", "increase": 0.1, "decrease": 0.5})
        gate = push_gate(is_leader, lambda: standby.take_over_pending)
        standby = Controller(cfg, sensor=ScriptedSensor([HEADROOM]), pusher=LeaderGatedPusher(http, gate),
                             writers=StaticWriters([recorded_writer.url]))
        for i in range(6):
            standby_ticks.append(i)
            tick = standby.step(1.7e9 + i)
        assert elected and tick.records[0]["level"] == pytest.approx(0.8) and tick.pushes == []
        assert len(recorded_writer.bodies) == 1  # the drifted 0.8 never reached the writer
        (rec,) = standby.step(1.7e9 + 6).records
    assert rec["level"] == pytest.approx(0.45) and recorded_writer.bodies[-1]["groups"][0]["level"] == pytest.approx(0.45)


def test_a_writer_no_longer_pushed_to_drops_out_of_the_push_metrics(recorded_writer: RecordedWriter,
                                                                   dead_writer: str) -> None:
    # A writer pod replaced by a rollout comes back under a new address: the old address's series must go.
    urls = [recorded_writer.url, dead_writer]

    class Listed:
        def writers(self) -> list[str]:
            return list(urls)

    metrics = ControllerMetrics()
    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        c = Controller(config(urls, {"kind": "static", "level": 0.5}), sensor=ScriptedSensor([HEADROOM]), pusher=http,
                       writers=Listed(), metrics=metrics)
        c.step(1.7e9)
        value = metrics.registry.get_sample_value
        assert value("drcio_controller_pushes_total", {"writer": dead_writer, "result": "unreachable"}) == 1
        urls.remove(dead_writer)
        c.step(1.7e9 + 1)
    assert value("drcio_controller_pushes_total", {"writer": dead_writer, "result": "unreachable"}) is None
    assert value("drcio_controller_pushes_total", {"writer": recorded_writer.url, "result": "ok"}) == 2


def test_the_level_a_take_over_starts_from_never_opens_lp_on_any_writer() -> None:
    both = [InForce("a", {"lp": 0.5, "batch": 0.9}, pushed=True), InForce("b", {"lp": 0.3, "batch": 0.9}, pushed=True)]
    assert levels_in_force(both, 0.2) == ({"lp": 0.3, "batch": 0.9}, 2)
    # A writer in fail-safe holds its fail-safe limits, or the last push's where those are tighter.
    failsafe = [InForce("a", {"lp": 0.5}, pushed=True), InForce("b", {"lp": 0.6}, failsafe_active=True, pushed=True)]
    assert levels_in_force(failsafe, 0.2) == ({"lp": 0.2}, 2)
    assert levels_in_force([InForce("a", {"lp": 0.1}, failsafe_active=True, pushed=True)], 0.2) == ({"lp": 0.1}, 1)
    # A writer without the group (a fresh one, or one whose last push lacked it) counts as fail-safe.
    fresh = [InForce("a", {"lp": 0.5}, pushed=True), InForce("b")]
    assert levels_in_force(fresh, 0.2) == ({"lp": 0.2}, 2)
    # A writer that did not answer counts for nothing; none answering leaves every group out.
    assert levels_in_force([InForce("a", {"lp": 0.5}, pushed=True), InForce("b", error="refused")], 0.2) == ({"lp": 0.5}, 1)
    assert levels_in_force([InForce("b", error="refused")], 0.2) == ({}, 0)


def test_a_malformed_status_is_an_error_that_counts_for_nothing(recorded_writer: RecordedWriter) -> None:
    class Junk(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b'{"failsafe": {"active": "maybe"}, "last_push": {"groups": [{"name": "lp", "level": 7}]}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    leave_level_in_force(recorded_writer, 0.35)
    with serving_handler(Junk) as port, HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        junk = f"http://127.0.0.1:{port}"
        good, bad = http.read_in_force([recorded_writer.url, junk], 5.0)
        c = controller(config([recorded_writer.url, junk], {"kind": "pid", "setpoint": 0.4}), http)
        assert c.take_over() == {"gnn-p95": 0.35}
    assert good.levels == {"lp": 0.35} and good.error is None
    assert bad.levels == {} and "malformed status" in (bad.error or "")


def test_a_fail_over_through_the_lease_starts_the_new_leader_from_the_level_in_force(
    recorded_writer: RecordedWriter,
) -> None:
    """Two replicas wired as the CLI wires them (``build_elector``), the Lease API faked at its boundary."""
    api, now = FakeLeaseApi(), [1000.0]

    def replica(name: str, policy: dict[str, Any], http: HttpPusher) -> tuple[Controller, LeaderElector]:
        gate: list[LeaderElector] = []  # as in the CLI: the pusher asks the elector built after it
        c = controller(config([recorded_writer.url], policy), LeaderGatedPusher(http, lambda: gate[0].is_leader()))
        election = ElectionConfig(identity=name, lease_duration_seconds=15.0, renew_deadline_seconds=10.0,
                                  retry_period_seconds=2.0)
        gate.append(build_elector(c, api, election, ControllerMetrics(), monotonic=lambda: now[0],
                                  wall=lambda: 1.8e9 + now[0]))
        return c, gate[0]

    with HttpPusher(token=PUSH_TOKEN, timeout_seconds=1) as http:
        a, a_elector = replica("a", {"kind": "static", "level": 0.35}, http)
        b, b_elector = replica("b", {"kind": "aimd", "increase": 0.1}, http)
        for i in range(10):  # a leads and pushes 0.35; b steps on the same readings and drifts open
            a_elector.try_acquire_or_renew(), b_elector.try_acquire_or_renew()
            a.step(1.7e9 + i)
            standby = b.step(1.7e9 + i)
            now[0] += 1.0
        assert a_elector.is_leader() and not b_elector.is_leader()
        assert standby.records[0]["level"] == 1.0 and standby.pushes == []
        assert {body["groups"][0]["level"] for body in recorded_writer.bodies} == {0.35}
        # a dies; b takes over the Lease once it has not changed for lease_duration.
        while not b_elector.is_leader():
            now[0] += 2.0
            b_elector.try_acquire_or_renew()
        first = b.step(1.7e9 + 100)
    assert [p.outcome for p in first.pushes] == ["ok"]
    assert first.records[0]["level"] == pytest.approx(0.45)  # from a's 0.35, one AIMD step up; not 1.0
    assert recorded_writer.bodies[-1]["groups"][0]["level"] == pytest.approx(0.45)


def test_the_read_is_bounded_by_one_interval_and_a_writer_not_read_by_then_counts_for_nothing(
    recorded_writer: RecordedWriter,
) -> None:
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            time.sleep(2.0)  # longer than the 1 s interval, shorter than the 5 s per-writer timeout

        def log_message(self, *args: Any) -> None:
            pass

    leave_level_in_force(recorded_writer, 0.35)
    with serving_handler(Slow) as port, HttpPusher(token=PUSH_TOKEN, timeout_seconds=5) as http:
        slow = f"http://127.0.0.1:{port}"
        c = controller(config([recorded_writer.url, slow], {"kind": "pid", "setpoint": 0.4}), http)
        began = time.monotonic()
        levels = c.take_over()  # the config's interval is 1 s
        took = time.monotonic() - began
        _, late = http.read_in_force([recorded_writer.url, slow], 0.5)
    assert levels == {"gnn-p95": 0.35} and took < 1.9
    assert late.error == "not read within the take-over's 0.5 s"
