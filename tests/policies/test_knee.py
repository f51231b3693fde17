"""The knee policy: fast search, knee memory, probing past the knee only under load, hold on no data."""

from __future__ import annotations

import pytest

from policies import (
    FailSafe,
    KneeParams,
    KneePolicy,
    Observation,
    PolicyConfigError,
    SensorStatus,
    build_policy,
    parse_params,
)
from tests.policies.plant import TARGET_SECONDS, no_data, ok, sensor_error

T = TARGET_SECONDS


def fresh(level: float = 0.2, **params: float) -> KneePolicy:
    return KneePolicy(KneeParams(**params), failsafe=FailSafe(after=2, level=0.1), initial_level=level)


def test_it_searches_fast_while_latency_is_low_but_not_past_the_unloaded_ceiling() -> None:
    p = fresh(0.2)
    levels = [p.step(ok(0.3 * T)) for _ in range(20)]
    assert levels[0] == pytest.approx(0.23)
    assert max(levels) == pytest.approx(0.45, abs=0.031)  # floor-level latency: no evidence that LP loads HP


def test_a_violation_cuts_in_proportion_and_becomes_the_knee() -> None:
    p = fresh(0.6)
    p.step(ok(0.3 * T))
    level = p.step(ok(2.0 * T))
    assert level == pytest.approx(0.6 - 0.03 - 0.1 * 1.0, abs=1e-9)
    assert p.knee == pytest.approx(level)


def test_at_the_knee_with_idle_lp_it_holds_instead_of_opening_up() -> None:
    p = fresh(0.6)
    p.step(ok(0.3 * T))
    knee = p.step(ok(1.2 * T))
    levels = [p.step(ok(0.3 * T)) for _ in range(50)]  # LP idle: latency at its floor
    assert max(levels) <= knee + 1e-9
    assert levels[-10:] == [p.knee] * 10


def test_under_load_with_headroom_it_probes_past_the_knee() -> None:
    p = fresh(0.6)
    p.step(ok(0.2 * T))  # the floor
    knee = p.step(ok(1.2 * T))
    for _ in range(30):  # loaded (well above the floor) but under the aim
        level = p.step(ok(0.5 * T))
    assert level > knee + 0.05 and p.knee == pytest.approx(level)


def test_a_stall_far_above_the_target_cuts_once_per_window_and_at_most_max_cut() -> None:
    """Measured on the local backend: one 0.5 s host stall (P95 ~10x the target for a whole 5 s window)
    cut every tick to the floor and made the floor the knee for good."""
    p = fresh(0.45)  # at the unloaded ceiling: the low reading below holds it there
    assert p.step(ok(0.3 * T, dt=1.0)) == 0.45
    levels = [p.step(ok(10 * T, dt=1.0)) for _ in range(5)]  # a 5 s window holds the stall for five 1 s ticks
    assert levels == [pytest.approx(0.45 - 0.15)] * 5
    assert p.knee == pytest.approx(0.30)


def test_a_violation_that_outlasts_the_window_cuts_again() -> None:
    p = fresh(0.6)
    p.step(ok(0.3 * T, dt=1.0))
    levels = [p.step(ok(2.0 * T, dt=1.0)) for _ in range(11)]
    first = 0.6 - 0.13
    assert levels[0] == pytest.approx(first) and levels[4] == pytest.approx(first)  # within the hold
    assert levels[5] == pytest.approx(first - 0.13) and levels[10] == pytest.approx(first - 0.26)


def test_no_hp_traffic_holds_and_the_return_restarts_lower() -> None:
    p = fresh(0.5)
    p.step(ok(0.65 * T))
    held = p.level
    assert all(p.step(no_data()) == held for _ in range(30))
    assert p.step(ok(0.65 * T)) <= held - 0.04 + 1e-9


def test_sensor_failure_holds_then_falls_back() -> None:
    p = fresh(0.5)
    assert [p.step(sensor_error()) for _ in range(3)] == [0.5, 0.5, 0.1]
    assert p.terms["failsafe_engaged"] == 1.0


def test_the_registry_builds_it_and_bad_parameters_are_all_reported() -> None:
    assert isinstance(build_policy(parse_params("knee", {"setpoint": 0.25})), KneePolicy)
    with pytest.raises(PolicyConfigError) as err:
        parse_params("knee", {"setpoint": 1.5, "search_step": 0, "smoothing": -1})
    assert len(err.value.problems) == 3


def test_after_a_quiet_spell_it_clamps_below_the_knee_and_does_not_search_straight_back() -> None:
    p = fresh(0.6)
    p.step(ok(0.3 * T))
    knee = p.step(ok(1.2 * T))  # a violation: the knee
    for _ in range(20):
        p.step(ok(0.3 * T))
    for _ in range(30):
        p.step(no_data())
    levels = [p.step(ok(0.3 * T)) for _ in range(10)]  # HP is back; nothing shows LP loading it yet
    assert levels[0] == pytest.approx(knee - 0.04)
    assert max(levels) <= knee - 0.04 + 1e-9  # a fast climb would reopen what HP's return may not bear


def test_a_single_low_reading_does_not_make_an_idle_disk_look_loaded() -> None:
    p = fresh(0.6)
    p.step(ok(0.45 * T))
    knee = p.step(ok(1.2 * T))
    for _ in range(10):
        p.step(ok(0.45 * T))
    p.step(ok(0.3 * T))  # one lucky window
    levels = [p.step(ok(0.45 * T)) for _ in range(30)]  # LP idle: the latency is back at its floor
    assert max(levels) <= knee + 1e-9
    assert levels[-10:] == [p.knee] * 10


def test_no_data_at_the_start_is_not_a_quiet_spell_so_the_first_measurement_searches_on() -> None:
    p = fresh(0.2)
    p.step(no_data())  # the controller's first ticks: the window has fewer than two scrapes
    p.step(no_data())
    assert p.step(ok(0.3 * T)) == pytest.approx(0.23)  # no re-entry drop below the initial level
    assert p.knee is None  # and no knee made up from it: nothing has been learned yet


def ok_at(latency_seconds: float, rate: float | None, *, dt: float = 1.0) -> Observation:
    return Observation(SensorStatus.OK, latency_seconds, T, dt, request_rate_per_second=rate)


def test_a_knee_below_the_unloaded_ceiling_caps_the_fast_search() -> None:
    p = fresh(0.45)
    p.step(ok(0.3 * T))
    knee = p.step(ok(1.2 * T))  # a violation at 0.45: the knee is below the ceiling
    levels = [p.step(ok(0.3 * T)) for _ in range(20)]  # LP idle: no evidence for more
    assert knee < 0.45 - 0.03
    assert max(levels) <= knee + 1e-9  # climbing back to the ceiling would repeat the violation


def test_the_knee_is_forgotten_once_hp_traffic_stays_well_below_the_rate_it_was_learned_at() -> None:
    p = fresh(0.45)
    p.step(ok_at(0.3 * T, 300.0))
    knee = p.step(ok_at(1.2 * T, 300.0))
    for _ in range(5):  # HP drops to a third: less than release_seconds (6 s) so far
        p.step(ok_at(0.3 * T, 100.0))
    assert p.knee == pytest.approx(knee)
    levels = [p.step(ok_at(0.3 * T, 100.0)) for _ in range(10)]
    assert p.knee is None  # released: the busy hour's limit no longer pins the level
    assert max(levels) == pytest.approx(0.45)  # back to the unloaded ceiling by the fast search


@pytest.mark.parametrize("rates", [
    pytest.param([300.0, 100.0, 100.0, 300.0] * 5, id="short-dips"),
    pytest.param([40.0, 120.0, 200.0, 280.0, 300.0] * 4, id="a-filling-window-only-rises"),
    pytest.param([250.0] * 20, id="a-mild-drop"),
    pytest.param([None] * 20, id="no-rate-measured"),
])
def test_the_knee_is_kept_through_short_dips_and_while_the_rate_holds(rates: list[float | None]) -> None:
    p = fresh(0.45)
    p.step(ok_at(0.3 * T, 300.0 if rates[0] is not None else None))
    knee = p.step(ok_at(1.2 * T, 300.0 if rates[0] is not None else None))
    for rate in rates:
        p.step(ok_at(0.3 * T, rate))
    assert p.knee == pytest.approx(knee)
