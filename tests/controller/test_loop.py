"""The loop: one tick end to end, faults of Prometheus and writers, and the fixed-rate schedule."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from controller.config import ControllerConfig, SloConfig, parse_config
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.push import HttpPusher, StaticWriters
from controller.sensor import PrometheusSensor, Reading
from experiments.prometheus_server import free_port
from policies import FailSafe, Observation, SensorStatus
from policies.registry import build_policy, parse_params
from tests.controller.conftest import PUSH_TOKEN, LatencyExporter, RecordedWriter, exponential_inverse_cdf


def config(prom_url: str, writers: list[str], **overrides: Any) -> ControllerConfig:
    raw: dict[str, Any] = {
        "interval": "1s",
        "prometheus": {"url": prom_url, "timeout": "500ms", "retries": 0},
        "writers": {"static": writers, "timeout": "500ms"},
        "failsafe": {"after": 2, "level": 0.2},
        "slos": [
            {
                "name": "gnn-p95",
                "metric": "gnn_request_latency_seconds",
                "labels": {"job": "hp-gnn"},
                "window": "3s",
                "target": "100ms",
                "policy": {"kind": "aimd", "increase": 0.1, "decrease": 0.5},
                "throttle": {"selector": {"group-id": "lp"}, "rbps": {"min": "10M", "max": "max"}},
            }
        ],
    }
    raw.update(overrides)
    return parse_config(raw)


def controller(cfg: ControllerConfig, *, initial_level: float, metrics: ControllerMetrics) -> Controller:
    slo = cfg.slos[0]
    policy = build_policy(
        parse_params(slo.policy.kind, slo.policy.params), failsafe=FailSafe(after=2, level=0.2), initial_level=initial_level
    )
    return Controller(
        cfg,
        sensor=PrometheusSensor(cfg.prometheus),
        pusher=HttpPusher(token=PUSH_TOKEN, timeout_seconds=0.5),
        writers=StaticWriters(cfg.writers.static or []),
        policies={slo.name: policy},
        metrics=metrics,
    )


def step_until(c: Controller, status: str, limit: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        (rec,) = c.step(time.time()).records
        if rec["status"] == status or time.monotonic() > deadline:
            return rec
        time.sleep(0.3)


@pytest.mark.prometheus
def test_loop_holds_then_fails_safe_while_prometheus_is_down_and_recovers_when_it_returns(
    latency_exporter: LatencyExporter, prometheus_for: Any, recorded_writer: RecordedWriter,
    request: pytest.FixtureRequest,
) -> None:
    port = free_port()
    prom = prometheus_for(latency_exporter, port=port, start=False)  # down at start
    metrics = ControllerMetrics()
    c = controller(config(f"http://127.0.0.1:{port}", [recorded_writer.url]), initial_level=0.9, metrics=metrics)
    assert isinstance(c.pusher, HttpPusher)
    request.addfinalizer(c.pusher.close)

    ticks = [c.step(time.time()) for _ in range(4)]
    levels = [t.records[0] for t in ticks]
    assert [r["status"] for r in levels] == ["sensor_error"] * 4
    assert [r["level"] for r in levels] == [0.9, 0.9, 0.2, 0.2]  # hold for `after` ticks, then fail-safe
    assert [r["failsafe"] for r in levels] == [False, False, True, True]
    assert metrics.registry.get_sample_value(
        "drcio_controller_sensor_errors_total", {"slo": "gnn-p95", "reason": "unreachable"}
    ) == 4
    # Every tick still pushed (the writers' lease is renewed with the fail-safe decision), and the
    # writer took each one: the fail-safe limit is the one in force on the LP cgroup.
    assert [p.outcome for t in ticks for p in t.pushes] == ["ok"] * 4
    assert len(recorded_writer.bodies) == 4
    failsafe = recorded_writer.bodies[-1]["groups"][0]
    assert failsafe["level"] == 0.2
    assert failsafe["io_max"]["rbps"] < recorded_writer.bodies[0]["groups"][0]["io_max"]["rbps"]  # tighter than at 0.9
    assert recorded_writer.lp_io_max() == f"254:0 rbps={failsafe['io_max']['rbps']} wbps=max riops=max wiops=max"

    latency_exporter.drive(exponential_inverse_cdf(0.010))  # P95 ~30 ms, well under the 100 ms target
    prom.start()
    rec = step_until(c, "ok")
    assert rec["status"] == "ok" and rec["latency_seconds"] < 0.1
    assert rec["failsafe"] is False and rec["level"] > 0.2  # additive increase from the fail-safe level
    assert metrics.registry.get_sample_value("drcio_controller_slo_status", {"slo": "gnn-p95", "status": "ok"}) == 1

    # Down mid-run: hold, then fail-safe, then recover again.
    level_before = rec["level"]
    prom.stop()
    down = [c.step(time.time()).records[0] for _ in range(3)]
    assert [r["level"] for r in down] == [level_before, level_before, 0.2]
    assert metrics.registry.get_sample_value("drcio_controller_observed_latency_seconds", {"slo": "gnn-p95"}) is None
    prom.start()
    assert step_until(c, "ok")["status"] == "ok"
    gens = [b["generation"] for b in recorded_writer.bodies]
    assert gens == sorted(gens) and len(set(gens)) == len(gens)
    # ... as the writer saw them: every push a new generation, none refused as stale.
    assert recorded_writer.pushes("accepted") == len(gens) and recorded_writer.pushes("stale") == 0
    last = recorded_writer.bodies[-1]["groups"][0]
    assert recorded_writer.lp_io_max() == f"254:0 rbps={last['io_max']['rbps']} wbps=max riops=max wiops=max"


class ScriptedSensor:
    """Boundary stand-in for Prometheus in schedule tests: replays readings, may raise once."""

    def __init__(self, readings: list[Reading | Exception]) -> None:
        self.readings = readings
        self.times: list[float] = []

    def read(self, slo: SloConfig, at: float) -> Reading:
        self.times.append(at)
        item = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        if isinstance(item, Exception):
            raise item
        return item


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + 1.7e9

    def wait(self, seconds: float) -> None:
        self.now += seconds


def test_the_schedule_is_drift_free_and_a_failed_tick_does_not_stop_the_loop(
    recorded_writer: RecordedWriter, request: pytest.FixtureRequest
) -> None:
    cfg = config("http://127.0.0.1:1", [recorded_writer.url])
    ok = Reading(SensorStatus.OK, 0.05)
    sensor = ScriptedSensor([ok, RuntimeError("boom"), ok, ok])
    clock = FakeClock()
    pusher = HttpPusher(token=PUSH_TOKEN, timeout_seconds=1)
    request.addfinalizer(pusher.close)
    c = Controller(cfg, sensor=sensor, pusher=pusher, writers=StaticWriters([recorded_writer.url]))
    original_step = c.step

    def slow_step(now: float) -> Any:
        clock.now += 0.3  # each tick takes 0.3 s of (fake) time
        return original_step(now)

    c.step = slow_step  # type: ignore[method-assign]
    ticks = c.run(threading.Event(), wall_clock=clock.wall, monotonic=clock.monotonic, wait=clock.wait, max_ticks=4)
    assert ticks == 4
    starts = [t - 1.7e9 for t in sensor.times]
    assert starts == pytest.approx([1000.0, 1001.0, 1002.0, 1003.0])  # anchored, not 1.3 s apart
    assert len(recorded_writer.bodies) == 3  # the tick whose sensor raised pushed nothing; the others did
    assert recorded_writer.pushes("accepted") == 3


def test_an_overrunning_tick_skips_slots_instead_of_bunching() -> None:
    cfg = config("http://127.0.0.1:1", [])
    sensor = ScriptedSensor([Reading(SensorStatus.OK, 0.05)])
    clock = FakeClock()
    c = Controller(cfg, sensor=sensor, pusher=HttpPusher(token=None, timeout_seconds=1), writers=StaticWriters([]))
    original_step = c.step
    durations = iter([2.5, 0.1, 0.1])

    def step(now: float) -> Any:
        clock.now += next(durations)
        return original_step(now)

    c.step = step  # type: ignore[method-assign]
    c.run(threading.Event(), wall_clock=clock.wall, monotonic=clock.monotonic, wait=clock.wait, max_ticks=3)
    assert [t - 1.7e9 for t in sensor.times] == pytest.approx([1000.0, 1003.0, 1004.0])


def test_a_stop_event_ends_the_loop() -> None:
    cfg = config("http://127.0.0.1:1", [])
    stop = threading.Event()
    sensor = ScriptedSensor([Reading(SensorStatus.NO_DATA, None)])
    c = Controller(cfg, sensor=sensor, pusher=HttpPusher(token=None, timeout_seconds=1), writers=StaticWriters([]))
    clock = FakeClock()

    def wait(seconds: float) -> None:
        clock.wait(seconds)
        if len(sensor.times) == 2:
            stop.set()

    assert c.run(stop, wall_clock=clock.wall, monotonic=clock.monotonic, wait=wait) == 2


class JumpingClock:
    """Wall time that steps forward an hour after the third tick; monotonic time that does not."""

    def __init__(self) -> None:
        self.mono = 500.0
        self.ticks = 0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return 1.7e9 + self.mono + (3600.0 if self.ticks >= 3 else 0.0)


def _levels_across_a_wall_clock_jump(readings: list[Reading], jump: bool) -> list[float]:
    cfg = config("http://127.0.0.1:1", [])
    raw_policy = {"kind": "pid", "kp": 0.2, "ki": 0.2, "kd": 0.0}
    policy = build_policy(parse_params("pid", {k: v for k, v in raw_policy.items() if k != "kind"}), initial_level=0.3)
    clock = JumpingClock()
    c = Controller(
        cfg, sensor=ScriptedSensor(list(readings)), pusher=HttpPusher(token=None, timeout_seconds=1),
        writers=StaticWriters([]), policies={cfg.slos[0].name: policy}, monotonic=clock.monotonic,
    )
    levels = []
    for _ in range(6):
        levels.append(c.step(clock.wall() if jump else 1.7e9 + clock.mono).records[0]["level"])
        clock.mono += 1.0
        clock.ticks += 1
    return levels


@pytest.mark.parametrize(
    "reading",
    [pytest.param(Reading(SensorStatus.OK, 0.05), id="ok-under-target"), pytest.param(Reading(SensorStatus.NO_DATA, None), id="no-data")],
)
def test_a_wall_clock_jumping_an_hour_changes_nothing_dt_comes_from_the_monotonic_clock(reading: Reading) -> None:
    steady = _levels_across_a_wall_clock_jump([reading], jump=False)
    jumped = _levels_across_a_wall_clock_jump([reading], jump=True)
    assert jumped == pytest.approx(steady)
    # and the steps are small: 1 s of integral (or of no-data ramp), not an hour's worth
    assert max(b - a for a, b in zip(jumped, jumped[1:])) < 0.2
    assert jumped[-1] < 1.0


class RecordingPolicy:
    """Holds one level and keeps every observation it was given."""

    def __init__(self) -> None:
        self.seen: list[Observation] = []

    def step(self, observation: Observation) -> float:
        self.seen.append(observation)
        return 0.5

    def reset(self) -> None:
        self.seen.clear()

    @property
    def level(self) -> float:
        return 0.5

    @property
    def terms(self) -> dict[str, float]:
        return {}


def test_the_policy_sees_the_hp_request_rate_the_sensor_measured_and_none_when_it_measured_none() -> None:
    cfg = config("http://127.0.0.1:1", [])
    policy = RecordingPolicy()
    sensor = ScriptedSensor([Reading(SensorStatus.OK, 0.05, request_rate=180.0),
                             Reading(SensorStatus.NO_DATA, None, request_rate=0.2),
                             Reading(SensorStatus.SENSOR_ERROR, None)])
    c = Controller(cfg, sensor=sensor, pusher=HttpPusher(token=None, timeout_seconds=1), writers=StaticWriters([]),
                   policies={cfg.slos[0].name: policy})
    for k in range(3):
        c.step(1.7e9 + k)
    assert [o.request_rate_per_second for o in policy.seen] == [180.0, 0.2, None]


def test_a_rate_that_is_infinite_or_negative_reaches_the_policy_as_none_and_the_tick_goes_on() -> None:
    cfg = config("http://127.0.0.1:1", [])
    policy = RecordingPolicy()
    sensor = ScriptedSensor([Reading(SensorStatus.OK, 0.05, request_rate=float("inf")),
                             Reading(SensorStatus.OK, 0.05, request_rate=-3.0)])
    c = Controller(cfg, sensor=sensor, pusher=HttpPusher(token=None, timeout_seconds=1), writers=StaticWriters([]),
                   policies={cfg.slos[0].name: policy})
    for k in range(2):
        c.step(1.7e9 + k)
    assert [o.request_rate_per_second for o in policy.seen] == [None, None]


def test_the_policy_sees_lp_utilisation_and_the_metric_is_absent_when_none_was_measured() -> None:
    cfg = config("http://127.0.0.1:1", [])
    policy = RecordingPolicy()
    sensor = ScriptedSensor([Reading(SensorStatus.OK, 0.05, lp_utilisation=0.97),
                             Reading(SensorStatus.OK, 0.05, lp_utilisation=float("nan")),
                             Reading(SensorStatus.OK, 0.05)])
    c = Controller(cfg, sensor=sensor, pusher=HttpPusher(token=None, timeout_seconds=1), writers=StaticWriters([]),
                   policies={cfg.slos[0].name: policy})
    gauge = []
    for k in range(3):
        c.step(1.7e9 + k)
        gauge.append(c.metrics.registry.get_sample_value("drcio_controller_lp_utilisation", {"slo": cfg.slos[0].name}))
    assert [o.lp_utilisation for o in policy.seen] == [0.97, None, None]  # NaN from a malformed answer: None
    assert gauge == [0.97, None, None]
