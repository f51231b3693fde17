"""The policy contract's helpers: observations, fail-safe tracking, range checks."""

from __future__ import annotations

import math

import pytest

from policies import FailSafe, FailSafeTracker, Observation, PolicyConfigError, SensorStatus, clamp_level
from policies.base import range_problem, raise_problems


@pytest.mark.parametrize(
    ("status", "latency"),
    [
        pytest.param(SensorStatus.OK, None, id="ok-without-latency"),
        pytest.param(SensorStatus.OK, math.nan, id="ok-with-nan"),
        pytest.param(SensorStatus.OK, -0.1, id="ok-negative"),
        pytest.param(SensorStatus.NO_DATA, 0.1, id="no-data-with-latency"),
        pytest.param(SensorStatus.SENSOR_ERROR, 0.0, id="error-with-latency"),
    ],
)
def test_observation_refuses_a_latency_that_does_not_match_its_status(status: SensorStatus, latency: float | None) -> None:
    with pytest.raises(ValueError):
        Observation(status, latency, 0.1, 5.0)


def test_fail_safe_tracker_holds_then_engages_then_clears() -> None:
    tracker = FailSafeTracker(FailSafe(after=2, level=0.1))
    assert [tracker.on_failure(0.6) for _ in range(3)] == [0.6, 0.6, 0.1]
    assert tracker.engaged
    tracker.on_success()
    assert not tracker.engaged and tracker.failures == 0


def test_clamp_level_refuses_nan() -> None:
    assert clamp_level(1.5) == 1.0 and clamp_level(-2) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        clamp_level(math.nan)


@pytest.mark.parametrize(
    ("value", "bounds", "expected"),
    [
        pytest.param(0.5, {"ge": 0, "le": 1}, None, id="inside"),
        pytest.param(0, {"ge": 0, "le": 1}, None, id="int-on-closed-edge"),
        pytest.param(0, {"gt": 0, "le": 1}, "x must be in (0, 1], got 0", id="open-edge"),
        pytest.param(1, {"ge": 0, "lt": 1}, "x must be in [0, 1), got 1", id="open-upper-edge"),
        pytest.param(-1, {"ge": 0}, "x must be >= 0, got -1", id="lower-only"),
        pytest.param(0, {"gt": 0}, "x must be > 0, got 0", id="strict-lower-only"),
        pytest.param(3, {"le": 2}, "x must be <= 2, got 3", id="upper-only"),
        pytest.param(math.inf, {}, "x must be finite, got inf", id="infinite"),
        pytest.param(True, {"ge": 0}, "x must be a number >= 0, got True (bool)", id="bool"),
        pytest.param("1", {"ge": 0}, "x must be a number >= 0, got '1' (str)", id="string"),
        pytest.param([1], {"ge": 0}, "x must be a number >= 0, got [1] (list)", id="list"),
    ],
)
def test_range_problem_names_the_field_and_what_is_allowed(value: object, bounds: dict[str, float], expected: str | None) -> None:
    assert range_problem("x", value, **bounds) == expected


def test_raise_problems_lists_every_problem_and_keeps_them_apart() -> None:
    raise_problems("p", [None, None])  # nothing wrong: no error
    with pytest.raises(PolicyConfigError) as info:
        raise_problems("p", ["a is bad", None, "b is bad"])
    assert str(info.value) == "p: a is bad; b is bad"
    assert info.value.problems == ("a is bad", "b is bad")
    assert PolicyConfigError("plain").problems == ("plain",)


@pytest.mark.parametrize("rate", [pytest.param(-1.0, id="negative"), pytest.param(math.nan, id="nan"),
                                  pytest.param(math.inf, id="inf")])
def test_observation_refuses_a_request_rate_that_is_not_a_rate(rate: float) -> None:
    with pytest.raises(ValueError):
        Observation(SensorStatus.OK, 0.05, 0.1, 5.0, request_rate_per_second=rate)


@pytest.mark.parametrize("used", [pytest.param(-0.1, id="negative"), pytest.param(math.nan, id="nan"),
                                  pytest.param(math.inf, id="inf")])
def test_observation_refuses_an_lp_utilisation_that_is_not_a_ratio(used: float) -> None:
    with pytest.raises(ValueError, match="lp_utilisation"):
        Observation(SensorStatus.OK, 0.05, 0.1, 5.0, lp_utilisation=used)
