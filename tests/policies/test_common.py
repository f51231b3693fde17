"""Behaviour every closed-loop policy shares: no data, sensor failure, reset, bounds, no clock."""

from __future__ import annotations

import random
import time

import pytest

from policies import FailSafe, Observation, SensorStatus, build_policy, parse_params
from policies.base import Policy
from tests.policies.plant import TARGET_SECONDS, no_data, ok, sensor_error

YAML_EXAMPLES = {
    "pid": {"kp": 0.5, "ki": 0.1, "kd": 0.0},
    "aimd": {"increase": 0.05, "decrease": 0.5},
}
CLOSED_LOOP = pytest.mark.parametrize("kind", sorted(YAML_EXAMPLES))


def make(kind: str, *, failsafe: FailSafe = FailSafe(), initial_level: float = 1.0) -> Policy:
    return build_policy(parse_params(kind, YAML_EXAMPLES[kind]), failsafe=failsafe, initial_level=initial_level)


def level_of(policy: Policy) -> float:
    return policy.level


@CLOSED_LOOP
def test_policy_grows_the_allowance_when_there_is_no_hp_traffic(kind: str) -> None:
    policy = make(kind, initial_level=0.2)
    levels = [policy.step(no_data()) for _ in range(5)]
    assert levels == sorted(levels) and levels[0] > 0.2
    # gently: a 5 s tick adds a few percent, not the whole range
    assert levels[0] - 0.2 == pytest.approx(0.05)
    assert all(0.0 <= v <= 1.0 for v in levels)


@CLOSED_LOOP
def test_policy_stops_growing_at_full_allowance_without_hp_traffic(kind: str) -> None:
    policy = make(kind, initial_level=0.9)
    for _ in range(10):
        level = policy.step(no_data())
    assert level == 1.0


@CLOSED_LOOP
def test_policy_holds_then_falls_back_then_recovers_when_the_sensor_fails(kind: str) -> None:
    policy = make(kind, failsafe=FailSafe(after=3, level=0.2), initial_level=0.7)
    held = [policy.step(sensor_error()) for _ in range(3)]
    assert held == [0.7, 0.7, 0.7]
    assert policy.terms["failsafe_engaged"] == 0.0
    assert policy.terms["sensor_failures"] == 3.0

    fallen = [policy.step(sensor_error()) for _ in range(4)]
    assert fallen == [0.2] * 4
    assert policy.terms["failsafe_engaged"] == 1.0

    # A valid measurement with room to grow: continue upwards from the fail-safe level.
    recovered = policy.step(ok(0.02))
    assert recovered > 0.2
    assert policy.terms["failsafe_engaged"] == 0.0
    assert policy.terms["sensor_failures"] == 0.0


@CLOSED_LOOP
def test_policy_hold_restarts_after_one_valid_measurement(kind: str) -> None:
    policy = make(kind, failsafe=FailSafe(after=2, level=0.1), initial_level=0.5)
    policy.step(sensor_error())
    policy.step(sensor_error())
    level = policy.step(ok(0.095))  # a valid measurement: the failure run is over (an empty answer is not, see below)
    assert policy.step(sensor_error()) == level
    assert policy.step(sensor_error()) == level
    assert policy.step(sensor_error()) == 0.1


@CLOSED_LOOP
def test_policy_with_zero_hold_falls_back_at_the_first_failure(kind: str) -> None:
    policy = make(kind, failsafe=FailSafe(after=0, level=0.3))
    assert policy.step(sensor_error()) == 0.3


def _mixed_sequence(seed: int, length: int = 200) -> list[Observation]:
    rnd = random.Random(seed)
    seq: list[Observation] = []
    for _ in range(length):
        dt = rnd.choice([0.001, 1.0, 5.0, 60.0, 3600.0])
        kind = rnd.random()
        if kind < 0.1:
            seq.append(no_data(dt=dt))
        elif kind < 0.2:
            seq.append(sensor_error(dt=dt))
        else:
            latency = rnd.choice([0.0, 1e-6, 0.05, 0.099, 0.1, 0.101, 0.3, 10.0, 1e6])
            seq.append(ok(latency, dt=dt))
    return seq


@CLOSED_LOOP
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_policy_level_and_terms_stay_in_range_whatever_it_sees(kind: str, seed: int) -> None:
    policy = make(kind)
    for obs in _mixed_sequence(seed):
        level = policy.step(obs)
        assert 0.0 <= level <= 1.0
        assert level == level_of(policy)
        assert all(v == v and abs(v) < float("inf") for v in policy.terms.values()), policy.terms


@CLOSED_LOOP
def test_reset_policy_behaves_like_a_fresh_one(kind: str) -> None:
    used = make(kind, initial_level=0.6)
    for obs in _mixed_sequence(7, 50):
        used.step(obs)
    used.reset()
    fresh = make(kind, initial_level=0.6)
    assert level_of(used) == 0.6
    assert used.terms == fresh.terms
    replay = _mixed_sequence(8, 100)
    assert [used.step(o) for o in replay] == [fresh.step(o) for o in replay]


@CLOSED_LOOP
def test_policy_never_reads_the_clock(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("a policy read the clock")

    for name in ("monotonic", "time", "perf_counter"):
        monkeypatch.setattr(time, name, no_clock)
    policy = make(kind)
    for obs in _mixed_sequence(4, 30):
        policy.step(obs)
    policy.reset()


@CLOSED_LOOP
def test_policy_satisfies_the_policy_protocol(kind: str) -> None:
    assert isinstance(make(kind), Policy)


@CLOSED_LOOP
@pytest.mark.parametrize("initial_level", [-0.1, 1.5, float("nan")], ids=["below", "above", "nan"])
def test_policy_refuses_an_initial_level_outside_the_range(kind: str, initial_level: float) -> None:
    with pytest.raises(ValueError, match="initial_level"):
        make(kind, initial_level=initial_level)


def test_observations_carry_the_target_used_for_slack() -> None:
    obs = Observation(SensorStatus.OK, 0.05, TARGET_SECONDS, 5.0)
    assert obs.slack == pytest.approx(0.5)


@CLOSED_LOOP
def test_alternating_errors_and_empty_answers_cannot_dodge_the_fail_safe(kind: str) -> None:
    # An empty answer between failures must not reset the failure count (issue 9):
    # E N E N E N ... reaches the fail-safe after `after` errors, and N never lifts it.
    policy = make(kind, failsafe=FailSafe(after=2, level=0.2), initial_level=0.7)
    levels = []
    for _ in range(4):
        levels.append(policy.step(sensor_error()))
        levels.append(policy.step(no_data()))
    assert levels[:4] == [0.7, 0.7, 0.7, 0.7]  # held while the failures are within `after`
    assert levels[4:] == [0.2, 0.2, 0.2, 0.2]  # third error: fail-safe, and the empty answers hold it
    assert policy.terms["failsafe_engaged"] == 1.0


@CLOSED_LOOP
def test_a_consistent_run_of_empty_answers_ends_the_failure_episode(kind: str) -> None:
    policy = make(kind, failsafe=FailSafe(after=2, level=0.2), initial_level=0.7)
    for _ in range(3):
        policy.step(sensor_error())
    held = [policy.step(no_data()) for _ in range(2)]
    assert held == [0.2, 0.2]
    assert policy.step(no_data()) > 0.2  # after+1 empty answers in a row: nothing to protect, grow again
    assert policy.terms["sensor_failures"] == 0.0
