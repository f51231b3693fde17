"""The AIMD policy: the AIMD rules, closed loop on both plants, cliff memory, parameters."""

from __future__ import annotations

import dataclasses

import pytest

from policies import AimdParams, AimdPolicy, PolicyConfigError
from tests.policies.plant import TARGET_SECONDS, CliffPlant, LinearPlant, Trace, ok, run

YAML = AimdParams(increase=0.05, decrease=0.5)  # the SLO file's example, as is
CLASSIC = dataclasses.replace(YAML, min_probe=1.0)  # memory off


def latency_at_slack(slack: float) -> float:
    return TARGET_SECONDS * (1.0 - slack)


# --- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slack", "expected"),
    [
        pytest.param(0.9, 0.45, id="idle-adds-increase"),
        pytest.param(0.11, 0.45, id="just-beyond-headroom-adds-increase"),
        pytest.param(0.1, 0.4, id="at-headroom-holds"),
        pytest.param(0.0, 0.4, id="at-target-holds"),
        pytest.param(-0.01, 0.2, id="violation-halves"),
        pytest.param(-5.0, 0.2, id="deep-violation-halves-too"),
    ],
)
def test_aimd_adds_under_target_holds_near_it_and_multiplies_on_violation(slack: float, expected: float) -> None:
    policy = AimdPolicy(YAML, initial_level=0.4)
    assert policy.step(ok(latency_at_slack(slack))) == pytest.approx(expected)


def test_aimd_keeps_cutting_while_the_violation_persists() -> None:
    policy = AimdPolicy(YAML, initial_level=0.8)
    levels = [policy.step(ok(0.3)) for _ in range(3)]
    assert levels == pytest.approx([0.4, 0.2, 0.1])


@pytest.mark.parametrize(
    ("slack", "start", "expected"),
    [
        pytest.param(0.9, 0.68, 0.7, id="capped-at-max-level"),
        pytest.param(-1.0, 0.3, 0.2, id="floored-at-min-level"),
    ],
)
def test_aimd_stays_within_its_level_bounds(slack: float, start: float, expected: float) -> None:
    policy = AimdPolicy(dataclasses.replace(YAML, min_level=0.2, max_level=0.7), initial_level=start)
    for _ in range(5):
        level = policy.step(ok(latency_at_slack(slack)))
    assert level == pytest.approx(expected)


def test_aimd_terms_say_what_the_step_did() -> None:
    policy = AimdPolicy(YAML, initial_level=0.4)
    policy.step(ok(0.01))
    assert policy.terms["increase"] == pytest.approx(0.05) and policy.terms["decrease"] == 0.0
    assert policy.terms["ceiling_memory"] == 0.0
    policy.step(ok(0.2))
    assert policy.terms["decrease"] == pytest.approx(0.225) and policy.terms["increase"] == 0.0
    assert policy.terms["ceiling_memory"] == pytest.approx(0.45)


# --- closed loop, linear plant ------------------------------------------------------------


def test_aimd_brings_latency_under_target_after_a_violation_and_keeps_it_there() -> None:
    trace = run(AimdPolicy(YAML), LinearPlant(), 40)
    assert trace.latencies[0] > TARGET_SECONDS
    assert trace.first_step_under() is not None and trace.first_step_under() <= 2  # type: ignore[operator]
    assert all(v <= TARGET_SECONDS for v in trace.latencies[3:]), trace.latencies


def test_aimd_gives_the_allowance_back_when_lp_load_goes_away() -> None:
    plant = LinearPlant()
    policy = AimdPolicy(YAML)
    assert run(policy, plant, 40).levels[-1] < 0.6
    plant.lp_load = False
    trace = run(policy, plant, 40)
    assert trace.levels == sorted(trace.levels)
    assert trace.levels[-1] == 1.0
    assert policy.ceiling is None  # the cliff it remembered is gone, and so is the memory


# --- closed loop, cliff plant -------------------------------------------------------------


def _violations(trace: Trace, start: int, stop: int) -> int:
    return sum(1 for v in trace.latencies[start:stop] if v > TARGET_SECONDS)


def _swing(trace: Trace, start: int, stop: int) -> float:
    window = trace.levels[start:stop]
    return max(window) - min(window)


def test_aimd_oscillation_on_a_cliff_decays_with_cliff_memory() -> None:
    trace = run(AimdPolicy(YAML), CliffPlant(), 300)
    early, late = (0, 50), (150, 300)
    assert _swing(trace, *late) < _swing(trace, *early) / 4
    assert _violations(trace, *late) / 150 < _violations(trace, *early) / 50 / 2
    # and it settles just under the cliff, not far below it
    assert min(trace.levels[150:]) > 0.5


def test_classic_aimd_saw_tooth_on_a_cliff_does_not_decay() -> None:
    """The reference the memory is measured against (min_probe=1)."""
    trace = run(AimdPolicy(CLASSIC), CliffPlant(), 300)
    assert _swing(trace, 150, 300) == pytest.approx(_swing(trace, 0, 50), abs=0.01)
    assert _violations(trace, 150, 300) >= 15


def test_aimd_with_memory_violates_less_than_classic_on_a_cliff() -> None:
    ours = run(AimdPolicy(YAML), CliffPlant(), 300)
    classic = run(AimdPolicy(CLASSIC), CliffPlant(), 300)
    assert _violations(ours, 0, 300) < _violations(classic, 0, 300) / 2


def test_aimd_leaves_the_remembered_cliff_behind_when_it_moves_up() -> None:
    policy = AimdPolicy(YAML)
    plant = CliffPlant()
    run(policy, plant, 200)
    assert policy.ceiling is not None
    plant.cliff = plant.unthrottled_from = 2.0  # the contention is gone
    trace = run(policy, plant, 60)
    assert trace.levels[-1] == 1.0
    assert policy.ceiling is None


def test_aimd_cuts_fully_when_the_cliff_moves_down() -> None:
    policy = AimdPolicy(YAML)
    plant = CliffPlant()
    run(policy, plant, 200)
    settled = policy.level
    plant.cliff = 0.2  # more contention: far below the remembered cliff
    trace = run(policy, plant, 30)
    assert trace.levels[0] <= settled * 0.95  # first hit near the old cliff: a soft cut ...
    assert min(trace.levels) <= 0.2  # ... but it keeps cutting until it is under the new one
    assert 0.15 < trace.levels[-1] <= 0.21  # and learns the new cliff
    assert _violations(trace, 15, 30) < _violations(trace, 0, 15)


# --- parameters ---------------------------------------------------------------------------


def test_aimd_defaults_are_the_documented_ones() -> None:
    assert dataclasses.asdict(AimdParams()) == {
        "increase": 0.05,
        "decrease": 0.5,
        "headroom": 0.1,
        "min_level": 0.0,
        "max_level": 1.0,
        "approach": 0.2,
        "min_probe": 0.125,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"increase": 0}, "increase must be in (0, 1], got 0", id="zero-increase"),
        pytest.param({"increase": 1.5}, "increase must be in (0, 1]", id="large-increase"),
        pytest.param({"decrease": 1}, "decrease must be in (0, 1), got 1", id="decrease-one"),
        pytest.param({"decrease": 0}, "decrease must be in (0, 1)", id="decrease-zero"),
        pytest.param({"decrease": "half"}, "decrease must be a number in (0, 1), got 'half' (str)", id="string"),
        pytest.param({"headroom": 1.0}, "headroom must be in [0, 1)", id="headroom-one"),
        pytest.param({"min_level": -0.1}, "min_level must be in [0, 1]", id="negative-min"),
        pytest.param({"max_level": 1.1}, "max_level must be in [0, 1]", id="max-above-one"),
        pytest.param({"min_level": 0.5, "max_level": 0.5}, "min_level must be < max_level", id="empty-range"),
        pytest.param({"approach": -0.2}, "approach must be in [0, 1)", id="negative-approach"),
        pytest.param({"min_probe": 0}, "min_probe must be in (0, 1]", id="zero-probe"),
        pytest.param({"increase": None}, "increase must be a number in (0, 1], got None", id="null"),
    ],
)
def test_aimd_params_refuse_bad_values_naming_field_and_range(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        AimdParams(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert str(info.value).startswith("aimd policy: ")
