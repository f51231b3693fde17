"""The PID policy: closed loop on the simulated plant, wind-up, hand-over, shaping, parameters."""

from __future__ import annotations

import dataclasses

import pytest
from simple_pid import PID

from policies import FailSafe, Observation, PidParams, PidPolicy, PolicyConfigError, SensorStatus
from tests.policies.plant import DT_SECONDS, TARGET_SECONDS, LinearPlant, no_data, ok, run, sensor_error

YAML = PidParams(kp=0.5, ki=0.1, kd=0.0)  # the SLO file's example, as is


def latency_at_slack(slack: float) -> float:
    return TARGET_SECONDS * (1.0 - slack)


def moderate_plant() -> LinearPlant:
    """0.14 s at full LP load, under target below level 0.5: the example gains are stable on it."""
    return LinearPlant(base_seconds=0.06, span_seconds=0.08)


# --- closed loop --------------------------------------------------------------------------


def test_pid_brings_latency_under_target_after_a_violation_and_keeps_it_there() -> None:
    plant = moderate_plant()
    trace = run(PidPolicy(YAML), plant, 30)
    assert trace.latencies[0] > TARGET_SECONDS  # starts free, in violation
    assert trace.first_step_under() == 1
    assert all(v <= TARGET_SECONDS for v in trace.latencies[6:]), trace.latencies
    # and it does not over-throttle: it settles near the setpoint (90 % of the target)
    assert trace.latencies[-1] == pytest.approx(0.09, abs=0.01)


def test_pid_gives_the_allowance_back_when_lp_load_goes_away() -> None:
    plant = moderate_plant()
    policy = PidPolicy(YAML)
    settled = run(policy, plant, 30).levels[-1]
    assert settled < 0.6
    plant.lp_load = False
    trace = run(policy, plant, 10)
    assert trace.levels == sorted(trace.levels)
    assert trace.levels[-1] == 1.0


def test_pid_throttles_again_when_lp_load_returns() -> None:
    plant = moderate_plant()
    policy = PidPolicy(YAML)
    run(policy, plant, 30)
    plant.lp_load = False
    run(policy, plant, 20)
    plant.lp_load = True
    trace = run(policy, plant, 30)
    assert trace.latencies[0] > TARGET_SECONDS
    assert all(v <= TARGET_SECONDS for v in trace.latencies[6:])


def test_pid_integrates_over_the_dt_it_is_given() -> None:
    params = PidParams(kp=0.0, ki=0.1, deadband=0.0, setpoint=0.0)
    twice = PidPolicy(params, initial_level=0.0)
    twice.step(ok(latency_at_slack(0.5), dt=5.0))
    twice.step(ok(latency_at_slack(0.5), dt=5.0))
    once = PidPolicy(params, initial_level=0.0)
    once.step(ok(latency_at_slack(0.5), dt=5.0))  # the hand-over step
    once.step(ok(latency_at_slack(0.5), dt=10.0))
    assert twice.level == pytest.approx(0.5)  # 2 x 0.1 x 0.5 x 5 s
    assert once.level == pytest.approx(0.75)  # 0.25 + 0.1 x 0.5 x 10 s


# --- wind-up ------------------------------------------------------------------------------


def _plain_simple_pid(params: PidParams, start: float) -> PID:
    """What simple-pid alone does with the same gains: it only clamps the integral to [0, 1]."""
    return PID(
        Kp=params.kp,
        Ki=params.ki,
        Kd=params.kd,
        setpoint=-params.setpoint,
        sample_time=None,
        output_limits=(0.0, 1.0),
        starting_output=start,
        time_fn=lambda: 0.0,
    )


# Symmetric shaping (no dead band, no violation gain), so the plain simple-pid sees the same error.
SYMMETRIC = PidParams(kp=0.5, ki=0.05, setpoint=0.1, deadband=0.0, violation_gain=1.0)


@pytest.mark.parametrize(
    ("saturating_slack", "then_slack", "start", "reaches"),
    [
        # from 0.5, HP idles for 1000 s: the level saturates at 1; then a mild violation
        pytest.param(1.0, -0.2, 0.5, lambda level: level <= 0.5, id="idle-at-full-then-violation"),
        # from 0.6, HP is overloaded on its own for 1000 s (level 0 cannot help); then headroom
        pytest.param(-3.0, 0.3, 0.6, lambda level: level >= 0.6, id="overloaded-at-zero-then-headroom"),
    ],
)
def test_pid_does_not_wind_up_while_clamped(saturating_slack: float, then_slack: float, start: float, reaches) -> None:  # type: ignore[no-untyped-def]
    """Long saturation, then the error changes sign: we react within a step or two; plain simple-pid lags."""
    ours = PidPolicy(SYMMETRIC, initial_level=start)
    plain = _plain_simple_pid(SYMMETRIC, start)
    for _ in range(200):
        ours.step(ok(latency_at_slack(saturating_slack)))
        plain(-saturating_slack, dt=DT_SECONDS)

    def steps_until(step) -> int:  # type: ignore[no-untyped-def]
        for k in range(1, 100):
            if reaches(step()):
                return k
        return 100

    ours_steps = steps_until(lambda: ours.step(ok(latency_at_slack(then_slack))))
    plain_steps = steps_until(lambda: plain(-then_slack, dt=DT_SECONDS))
    assert ours_steps <= 2
    assert plain_steps >= ours_steps + 3


def test_pid_keeps_integrating_while_the_output_is_not_saturated() -> None:
    policy = PidPolicy(PidParams(kp=0.0, ki=0.01, deadband=0.0, setpoint=0.1), initial_level=0.5)
    levels = [policy.step(ok(latency_at_slack(0.3))) for _ in range(5)]
    assert levels == pytest.approx([0.51, 0.52, 0.53, 0.54, 0.55])
    assert policy.terms["i"] == pytest.approx(0.55)


# --- hand-over ----------------------------------------------------------------------------


AT_SETPOINT = latency_at_slack(YAML.setpoint)


def _after_start(policy: PidPolicy) -> None:
    pass


def _after_failsafe(policy: PidPolicy) -> None:
    for _ in range(5):
        policy.step(sensor_error())


def _after_no_data(policy: PidPolicy) -> None:
    for _ in range(3):
        policy.step(no_data())


def _after_reset(policy: PidPolicy) -> None:
    policy.step(ok(0.5))
    policy.reset()


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(_after_start, id="start"),
        pytest.param(_after_failsafe, id="after-failsafe"),
        pytest.param(_after_no_data, id="after-no-data"),
        pytest.param(_after_reset, id="after-reset"),
    ],
)
def test_pid_takes_over_without_a_bump(before) -> None:  # type: ignore[no-untyped-def]
    policy = PidPolicy(YAML, failsafe=FailSafe(after=1, level=0.2), initial_level=0.4)
    before(policy)
    level = policy.level
    # At the setpoint the error is zero: the level must not move at all.
    assert policy.step(ok(AT_SETPOINT)) == pytest.approx(level)
    assert policy.step(ok(AT_SETPOINT)) == pytest.approx(level)


def test_pid_hand_over_with_an_error_moves_by_one_step_from_the_level_in_force() -> None:
    policy = PidPolicy(YAML, failsafe=FailSafe(after=0, level=0.2))
    policy.step(sensor_error())
    slack = 0.5  # error 0.4, shaped 0.35 by the dead band
    level = policy.step(ok(latency_at_slack(slack)))
    assert level == pytest.approx(0.2 + 0.5 * 0.35 + 0.1 * 0.35 * DT_SECONDS)


def test_pid_no_data_ramp_follows_dt() -> None:
    policy = PidPolicy(PidParams(no_data_rate=0.01), initial_level=0.0)
    assert policy.step(no_data(dt=5.0)) == pytest.approx(0.05)
    assert policy.step(no_data(dt=20.0)) == pytest.approx(0.25)
    assert PidPolicy(PidParams(no_data_rate=0.0), initial_level=0.3).step(no_data()) == 0.3


# --- error shaping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slack", "expected_error"),
    [
        pytest.param(0.1, 0.0, id="at-setpoint"),
        pytest.param(0.14, 0.0, id="inside-band-above"),
        pytest.param(0.06, 0.0, id="inside-band-below"),
        pytest.param(0.5, 0.35, id="headroom-minus-band"),
        pytest.param(0.0, -0.05, id="at-target-no-gain-yet"),
        pytest.param(-0.5, -0.55 - 0.5, id="violation-counted-twice"),
    ],
)
def test_pid_error_has_a_dead_band_and_cuts_harder_beyond_the_target(slack: float, expected_error: float) -> None:
    policy = PidPolicy(YAML, initial_level=0.5)
    policy.step(ok(latency_at_slack(slack)))
    assert policy.terms["error"] == pytest.approx(expected_error)


def test_pid_sheds_a_violation_faster_than_it_takes_up_equal_headroom() -> None:
    down = PidPolicy(YAML, initial_level=0.5)
    up = PidPolicy(YAML, initial_level=0.5)
    cut = 0.5 - down.step(ok(latency_at_slack(YAML.setpoint - 0.2)))
    grow = up.step(ok(latency_at_slack(YAML.setpoint + 0.2))) - 0.5
    assert cut > 1.5 * grow > 0


def test_pid_terms_name_p_i_d_and_error() -> None:
    policy = PidPolicy(YAML, initial_level=0.5)
    policy.step(ok(latency_at_slack(0.5)))
    terms = policy.terms
    assert {"p", "i", "d", "error"} <= terms.keys()
    assert terms["p"] + terms["i"] + terms["d"] == pytest.approx(policy.level)


# --- parameters ---------------------------------------------------------------------------


def test_pid_defaults_are_the_documented_ones() -> None:
    assert dataclasses.asdict(PidParams()) == {
        "kp": 0.5,
        "ki": 0.1,
        "kd": 0.0,
        "setpoint": 0.1,
        "deadband": 0.05,
        "violation_gain": 2.0,
        "no_data_rate": 0.01,
        "gate_utilisation": 0.0,
        "gate_above": 0.0,
        "gate_rise": 0.05,
        "gate_fall": 0.25,
        "gate_rise_seconds": 5.0,
        "gate_step": 0.5,
        "gate_step_seconds": 3.0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"kp": -0.1}, "kp must be >= 0, got -0.1", id="negative-kp"),
        pytest.param({"ki": float("nan")}, "ki must be >= 0", id="nan-ki"),
        pytest.param({"kd": float("inf")}, "kd must be >= 0", id="infinite-kd"),
        pytest.param({"kp": "0.5"}, "kp must be a number >= 0, got '0.5' (str)", id="string-kp"),
        pytest.param({"ki": True}, "ki must be a number >= 0, got True (bool)", id="bool-ki"),
        pytest.param({"setpoint": 1.0}, "setpoint must be in [0, 1), got 1.0", id="setpoint-at-one"),
        pytest.param({"deadband": -0.01}, "deadband must be in [0, 1)", id="negative-deadband"),
        pytest.param({"violation_gain": 0.5}, "violation_gain must be >= 1", id="soft-violation-gain"),
        pytest.param({"no_data_rate": 2}, "no_data_rate must be in [0, 1]", id="fast-no-data-rate"),
        pytest.param({"kp": 0, "ki": 0}, "at least one of kp, ki must be > 0", id="no-gain"),
        pytest.param({"gate_utilisation": 1.5}, "gate_utilisation must be in [0, 1]", id="gate-over-one"),
        pytest.param({"gate_above": -0.1}, "gate_above must be in [0, 1]", id="negative-gate-above"),
        pytest.param({"gate_rise": -0.05}, "gate_rise must be >= 0", id="negative-gate-rise"),
        pytest.param({"gate_fall": 1.5}, "gate_fall must be in [0, 1]", id="gate-fall-over-one"),
        pytest.param({"gate_rise_seconds": 0}, "gate_rise_seconds must be > 0", id="zero-gate-rise-seconds"),
        pytest.param({"gate_step": -0.5}, "gate_step must be >= 0", id="negative-gate-step"),
        pytest.param({"gate_step_seconds": 0}, "gate_step_seconds must be > 0", id="zero-gate-step-seconds"),
        pytest.param({"gate_step": 0.02}, "gate_step must be 0 (off) or >= gate_rise (0.05)", id="step-below-rise"),
        pytest.param({"gate_step_seconds": 6}, "gate_step_seconds must be <= gate_rise_seconds (5), got 6",
                     id="step-longer-than-rise"),
    ],
)
def test_pid_params_refuse_bad_values_naming_field_and_range(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        PidParams(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert str(info.value).startswith("pid policy: ")


def test_pid_params_report_every_problem_at_once() -> None:
    with pytest.raises(PolicyConfigError) as info:
        PidParams(kp=-1, ki="x", setpoint=2)  # type: ignore[arg-type]
    assert [p.split(" ")[0] for p in info.value.problems] == ["kp", "ki", "setpoint"]


def test_pid_accepts_integers_from_yaml() -> None:
    policy = PidPolicy(PidParams(kp=1, ki=0, kd=0))
    assert policy.step(ok(0.0)) == 1.0


# --- derivative ---------------------------------------------------------------------------


def test_pid_derivative_brakes_against_rising_latency() -> None:
    policy = PidPolicy(PidParams(kp=0.0, ki=0.01, kd=1.0, deadband=0.0), initial_level=0.5)
    policy.step(ok(latency_at_slack(0.5)))
    policy.step(ok(latency_at_slack(0.3), dt=5.0))  # slack fell by 0.2 in 5 s
    assert policy.terms["d"] == pytest.approx(-0.2 / 5.0)


@pytest.mark.parametrize("outage", [sensor_error, no_data], ids=["sensor-error", "no-data"])
def test_pid_derivative_does_not_kick_across_an_outage(outage) -> None:  # type: ignore[no-untyped-def]
    policy = PidPolicy(PidParams(kp=0.0, ki=0.01, kd=1.0, deadband=0.0), initial_level=0.5)
    policy.step(ok(latency_at_slack(0.9)))
    policy.step(outage())
    policy.step(ok(latency_at_slack(-0.5)))  # a very different latency after the gap
    assert policy.terms["d"] == 0.0


def test_simple_pid_is_pinned_below_its_next_major_version_since_the_policy_touches_its_internals() -> None:
    # PidPolicy sets simple-pid's private ``_integral`` (conditional integration); a major
    # release may rename it, so the dependency must not float past the version it was written for.
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    [req] = [Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("simple-pid")]
    major = int(importlib.metadata.version("simple-pid").split(".")[0])
    assert importlib.metadata.version("simple-pid") in req.specifier
    assert f"{major + 1}.0" not in req.specifier


# --- the gate: open above gate_above only while LP is bound by its limit ------------------

GATED = PidParams(kp=0.5, ki=0.1, kd=0.0, setpoint=0.2, no_data_rate=0.0, gate_utilisation=0.9, gate_above=0.45)
STEP = 1.0  # the benchmark's tick; the gate's HP-rate window is 5 s


def gated_ok(slack: float, used: float | None, rate: float | None = 200.0) -> Observation:
    return Observation(SensorStatus.OK, latency_at_slack(slack), TARGET_SECONDS, STEP, request_rate_per_second=rate,
                       lp_utilisation=used)


def test_gated_pid_holds_above_gate_above_while_lp_does_not_use_its_limit() -> None:
    policy = PidPolicy(GATED, initial_level=0.6)
    levels = [policy.step(gated_ok(0.7, used)) for used in (0.1, 0.5, 0.89, None)]
    assert levels == [0.6] * 4  # headroom, but LP idle / wanting less / blind: no reason to open
    assert policy.terms["gated"] == 1.0


def test_gated_pid_opens_while_lp_is_bound_by_its_limit() -> None:
    policy = PidPolicy(GATED, initial_level=0.6)
    levels = [policy.step(gated_ok(0.7, 0.95)) for _ in range(5)]
    assert levels == sorted(levels) and levels[-1] > 0.7
    assert policy.terms["gated"] == 0.0


def test_by_default_the_gated_pid_does_not_open_at_all_without_lp_using_its_limit() -> None:
    policy = PidPolicy(dataclasses.replace(GATED, gate_above=PidParams().gate_above), initial_level=0.2)
    assert [policy.step(gated_ok(0.7, 0.0)) for _ in range(10)] == [0.2] * 10


def test_gated_pid_opens_freely_up_to_gate_above_and_no_further() -> None:
    policy = PidPolicy(GATED, initial_level=0.2)
    levels = [policy.step(gated_ok(0.7, 0.0)) for _ in range(20)]
    assert levels[0] > 0.2  # below gate_above the PID opens as it would without the gate
    assert max(levels) == 0.45 and levels[-1] == 0.45


def test_gated_pid_holds_while_hp_traffic_rises_even_with_lp_bound() -> None:
    policy = PidPolicy(GATED, initial_level=0.6)
    rising = [policy.step(gated_ok(0.7, 0.95, rate=200.0 * 1.03**k)) for k in range(8)]
    # +3 % a second: more than gate_rise (5 %) above the rate of up to 5 s before from the third tick on
    assert rising[1] > 0.6 and rising[2:] == [rising[1]] * 6
    steady = [policy.step(gated_ok(0.7, 0.95, rate=200.0 * 1.03**7)) for _ in range(8)]
    # it opens again once no rate of the last 5 s is more than 5 % below the current one (the fourth tick)
    assert steady[:3] == [rising[1]] * 3 and steady[3] > rising[1]


def test_after_a_step_in_hp_traffic_the_gated_pid_waits_until_the_rate_has_held_still_for_gate_step_seconds() -> None:
    # HP starts: after two ticks without traffic, a 5 s window's rate climbs for five ticks (as measured at a real
    # start: 4, 53, 99, 150, 204 requests/s), then holds still. LP is bound and the P95 shows headroom all along.
    quiet = Observation(SensorStatus.NO_DATA, None, TARGET_SECONDS, STEP, request_rate_per_second=0.0)
    climb = [40.0, 80.0, 120.0, 160.0, 200.0]

    def levels(params: PidParams, rates: list[float]) -> list[float]:
        policy = PidPolicy(params, initial_level=0.5)  # above GATED's gate_above: every rise needs the gate open
        return [policy.step(quiet) for _ in range(2)] + [policy.step(gated_ok(0.7, 0.95, rate=r)) for r in rates]

    def first_rise(params: PidParams) -> int:
        return next(k for k, level in enumerate(levels(params, climb + [200.0] * 8)) if level > 0.5)

    # with the step rule: held through the climb (ticks 2-6) and until the rate has been still for 3 s (tick 9)
    assert first_rise(GATED) == 9
    # without it: held until no rate of the last 5 s is 5 % below the current one (tick 11)
    assert first_rise(dataclasses.replace(GATED, gate_step=0.0)) == 11
    # a rate still rising after the step holds as any rise does
    assert levels(GATED, climb + [200.0 * 1.03**k for k in range(1, 9)]) == [0.5] * 15


def test_gated_pid_does_not_open_into_hp_going_quiet_but_does_through_a_slow_fall() -> None:
    # HP stops: the 5 s window's rate falls by a fifth a second while its P95 still shows headroom.
    policy = PidPolicy(GATED, initial_level=0.6)
    steady = [policy.step(gated_ok(0.35, 0.95)) for _ in range(3)]
    leaving = [policy.step(gated_ok(0.35, 0.95, rate=200.0 * (1 - 0.2 * k))) for k in range(1, 5)]
    # 1 s in, the rate is 20 % down (under gate_fall's 25 %): one more step up; from 2 s in (40 %) held
    assert steady[-1] > 0.6 and leaving[0] > steady[-1] and leaving[1:] == [leaving[0]] * 3
    # a ramp down by 2 % a second (8 % in 4 s, under gate_fall's 25 %) keeps opening
    ramp = PidPolicy(GATED, initial_level=0.6)
    levels = [ramp.step(gated_ok(0.35, 0.95, rate=300.0 * 0.98**k)) for k in range(8)]
    assert levels == sorted(levels) and levels[-1] > levels[0]
    # 0 turns the fall check off: the same departure opens as before the check existed
    off = PidPolicy(dataclasses.replace(GATED, gate_fall=0.0), initial_level=0.6)
    [off.step(gated_ok(0.35, 0.95)) for _ in range(3)]
    assert [off.step(gated_ok(0.35, 0.95, rate=200.0 * (1 - 0.2 * k))) for k in range(1, 5)][-1] > leaving[-1]


def test_gated_pid_cuts_on_a_violation_whatever_lp_uses() -> None:
    for used in (None, 0.0, 1.0):
        policy = PidPolicy(GATED, initial_level=0.6)
        assert policy.step(gated_ok(-0.5, used)) < 0.3


def test_gated_pid_no_data_growth_stops_at_gate_above() -> None:
    policy = PidPolicy(dataclasses.replace(GATED, no_data_rate=0.05), initial_level=0.3)
    levels = [policy.step(no_data(dt=STEP)) for _ in range(10)]
    assert levels[0] == pytest.approx(0.35) and levels[-1] == 0.45
    high = PidPolicy(dataclasses.replace(GATED, no_data_rate=0.05), initial_level=0.6)
    assert [high.step(no_data(dt=STEP)) for _ in range(3)] == [0.6] * 3


def test_without_the_gate_lp_utilisation_changes_nothing() -> None:
    plain = PidParams(kp=0.5, ki=0.1, kd=0.0, setpoint=0.2)
    assert not plain.uses_lp_utilisation and GATED.uses_lp_utilisation
    runs = []
    for used in (None, 0.0, 1.0):
        policy = PidPolicy(plain, initial_level=0.6)
        runs.append([policy.step(gated_ok(s, used)) for s in (0.7, 0.7, -0.2, 0.5, 0.1)])
    assert runs[0] == runs[1] == runs[2]


def test_gated_pid_does_not_open_up_while_lp_is_idle_so_lp_returns_under_a_limit() -> None:
    """The issue's hazard: headroom while LP is idle must not become an open limit when LP returns."""
    results = {}
    for name, params in (("plain", dataclasses.replace(GATED, gate_utilisation=0.0)), ("gated", GATED)):
        plant = moderate_plant()
        policy = PidPolicy(params, initial_level=0.5)
        for _ in range(30):  # LP busy: settle under its limit
            policy.step(gated_ok(1 - plant.latency() / TARGET_SECONDS, 1.0))
            plant.apply(policy.level)
        plant.lp_load = False  # LP idle for a minute: it uses nothing of its limit
        for _ in range(60):
            plant.apply(policy.step(gated_ok(1 - plant.latency() / TARGET_SECONDS, 0.0)))
        plant.lp_load = True
        results[name] = plant.latency()
    assert results["plain"] > TARGET_SECONDS  # the ungated PID opened LP fully while it was idle
    assert results["gated"] <= TARGET_SECONDS
