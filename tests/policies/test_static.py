"""The static policy: a fixed level, whatever the sensor says."""

from __future__ import annotations

import pytest

from policies import FailSafe, PolicyConfigError, StaticParams, StaticPolicy
from tests.policies.plant import no_data, ok, sensor_error


@pytest.mark.parametrize(
    "observation",
    [
        pytest.param(ok(0.0), id="idle"),
        pytest.param(ok(10.0), id="deep-violation"),
        pytest.param(no_data(), id="no-data"),
        pytest.param(sensor_error(), id="sensor-error"),
    ],
)
def test_static_policy_answers_its_level_whatever_it_sees(observation) -> None:  # type: ignore[no-untyped-def]
    policy = StaticPolicy(StaticParams(level=0.3), failsafe=FailSafe(after=0, level=0.9))
    assert [policy.step(observation) for _ in range(5)] == [0.3] * 5
    assert policy.level == 0.3
    assert policy.terms == {"static_level": 0.3}


def test_static_policy_reports_the_initial_level_until_its_first_step_and_after_reset() -> None:
    policy = StaticPolicy(StaticParams(level=0.3), initial_level=0.2)
    assert policy.level == 0.2
    policy.step(ok(0.05))
    assert policy.level == 0.3
    policy.reset()
    assert policy.level == 0.2


@pytest.mark.parametrize(
    ("level", "message"),
    [
        pytest.param(-0.1, "level must be in [0, 1], got -0.1", id="negative"),
        pytest.param(1.01, "level must be in [0, 1], got 1.01", id="above-one"),
        pytest.param("30%", "level must be a number in [0, 1], got '30%' (str)", id="string"),
        pytest.param(float("nan"), "level must be in [0, 1], got nan", id="nan"),
    ],
)
def test_static_params_refuse_a_level_outside_zero_one(level: object, message: str) -> None:
    with pytest.raises(PolicyConfigError, match="static policy: ") as info:
        StaticParams(level=level)  # type: ignore[arg-type]
    assert message in str(info.value)
