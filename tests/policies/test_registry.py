"""The registry: parse a ``policy`` section by kind, report every problem at once, build the policy."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from policies import (
    POLICY_KINDS,
    AimdParams,
    AimdPolicy,
    FailSafe,
    PidParams,
    PidPolicy,
    PolicyConfigError,
    StaticParams,
    StaticPolicy,
    build_policy,
    parse_params,
)
from tests.policies.plant import sensor_error

# The three policy lines of the SLO file example in DESIGN.md, as YAML gives them.
EXAMPLE_SECTIONS = yaml.safe_load(
    """
    - {kind: pid, kp: 0.5, ki: 0.1, kd: 0.0}
    - {kind: aimd, increase: 0.05, decrease: 0.5}
    - {kind: static, level: 0.3}
    """
)


def test_registry_knows_pid_aimd_knee_and_static() -> None:
    assert POLICY_KINDS == ("pid", "aimd", "knee", "static")


@pytest.mark.parametrize(
    ("section", "params_type", "policy_type"),
    [
        pytest.param(EXAMPLE_SECTIONS[0], PidParams, PidPolicy, id="pid"),
        pytest.param(EXAMPLE_SECTIONS[1], AimdParams, AimdPolicy, id="aimd"),
        pytest.param(EXAMPLE_SECTIONS[2], StaticParams, StaticPolicy, id="static"),
    ],
)
def test_registry_round_trips_the_slo_file_examples(section: dict[str, object], params_type: type, policy_type: type) -> None:
    raw = {k: v for k, v in section.items() if k != "kind"}
    params = parse_params(str(section["kind"]), raw)
    assert type(params) is params_type
    assert {k: getattr(params, k) for k in raw} == raw
    # the whole mapping, kind included, is accepted too
    assert parse_params(str(section["kind"]), section) == params
    # and the params survive a trip through plain data
    assert parse_params(params.kind, dataclasses.asdict(params)) == params
    policy = build_policy(params, failsafe=FailSafe(after=0, level=0.25), initial_level=0.6)
    assert type(policy) is policy_type
    assert policy.level == 0.6


def test_registry_builds_policies_with_the_failsafe_it_is_given() -> None:
    policy = build_policy(parse_params("pid", {}), failsafe=FailSafe(after=0, level=0.25))
    assert policy.step(sensor_error()) == 0.25


def test_registry_builds_independent_policies() -> None:
    params = parse_params("aimd", {})
    a, b = build_policy(params), build_policy(params)
    a.step(sensor_error())
    assert a.terms["sensor_failures"] == 1.0 and b.terms["sensor_failures"] == 0.0


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        pytest.param("pdi", {}, ["unknown policy kind 'pdi' (allowed: pid, aimd, knee, static)"], id="unknown-kind"),
        pytest.param(
            "pid",
            {"kq": 1},
            ["unknown policy parameter 'kq' (allowed: kp, ki, kd, setpoint, deadband, violation_gain, no_data_rate, gate_utilisation, gate_above, gate_rise, gate_fall, gate_rise_seconds, gate_step, gate_step_seconds)"],
            id="unknown-key",
        ),
        pytest.param(
            "aimd",
            {"kp": 0.5},
            ["unknown policy parameter 'kp' (allowed: increase, decrease, headroom, min_level, max_level, approach, min_probe)"],
            id="key-of-another-kind",
        ),
        pytest.param("static", {}, ["missing required parameter 'level'"], id="missing-level"),
        pytest.param("pid", {"kind": "aimd"}, ["kind 'aimd' in the parameters contradicts kind 'pid'"], id="contradicting-kind"),
        pytest.param(
            "pid",
            {"kq": 1, "kp": -1, "ki": "fast", "setpoint": 1.5},
            [
                "unknown policy parameter 'kq'",
                "kp must be >= 0, got -1",
                "ki must be a number >= 0, got 'fast' (str)",
                "setpoint must be in [0, 1), got 1.5",
            ],
            id="every-problem-at-once",
        ),
        pytest.param(
            "aimd",
            {"decrease": 2, "min_level": 0.9, "max_level": 0.1, "extra": None},
            ["unknown policy parameter 'extra'", "decrease must be in (0, 1), got 2", "min_level must be < max_level"],
            id="aimd-every-problem",
        ),
        pytest.param("static", {"level": 2, "when": "always"}, ["unknown policy parameter 'when'", "level must be in [0, 1], got 2"], id="static-every-problem"),
    ],
)
def test_registry_refuses_bad_sections_listing_every_problem(kind: str, raw: dict[str, object], expected: list[str]) -> None:
    with pytest.raises(PolicyConfigError) as info:
        parse_params(kind, raw)
    message = str(info.value)
    for part in expected:
        assert part in message
    assert len(info.value.problems) == len(expected)


def test_registry_refuses_to_build_from_something_that_is_not_params() -> None:
    with pytest.raises(PolicyConfigError, match="no policy for parameters of type dict"):
        build_policy({"kind": "pid"})  # type: ignore[arg-type]
