"""Level -> concrete io.max / io.weight, and several SLOs over one LP group."""

from __future__ import annotations

from typing import Any

import pytest

from controller.config import RateRange, SloConfig, WeightRange
from controller.targets import group_target, interpolate, rate_at, resolve_groups, weight_at

M = 1024**2


def slo(name: str, *, selector: dict[str, str] | None = None, **throttle: Any) -> SloConfig:
    return SloConfig.model_validate(
        {
            "name": name,
            "metric": "gnn_request_latency_seconds",
            "target": "100ms",
            "policy": {"kind": "static", "level": 0.5},
            "throttle": {"selector": selector or {"group-id": "lp"}, **(throttle or {"rbps": {"min": "10M", "max": "640M"}})},
        }
    )


def test_interpolation_is_geometric_equal_steps_equal_ratios() -> None:
    values = [interpolate(10, 640, k / 6) for k in range(7)]
    assert values == pytest.approx([10, 20, 40, 80, 160, 320, 640])


@pytest.mark.parametrize("level", [-0.1, 1.1, float("nan")])
def test_interpolation_refuses_levels_outside_0_1(level: float) -> None:
    with pytest.raises(ValueError):
        interpolate(10, 20, level)


def test_an_unlimited_ceiling_interpolates_to_top_and_lifts_only_at_level_1() -> None:
    rng = RateRange.model_validate({"min": "10M", "max": "max", "top": "1G"})
    assert rate_at(rng, 0.0) == 10 * M
    assert rate_at(rng, 0.5) == pytest.approx((10 * M * 1024 * M) ** 0.5, rel=1e-6)
    assert rate_at(rng, 0.999) is not None and rate_at(rng, 0.999) < 1024 * M  # type: ignore[operator]
    assert rate_at(rng, 1.0) is None


def test_a_finite_ceiling_is_reached_at_level_1() -> None:
    rng = RateRange.model_validate({"min": "10M", "max": "640M"})
    assert rate_at(rng, 1.0) == 640 * M


def test_weights_interpolate_geometrically_and_round() -> None:
    rng = WeightRange(min=10, max=1000)
    assert [weight_at(rng, x) for x in (0.0, 0.5, 1.0)] == [10, 100, 1000]


def test_group_target_carries_every_configured_key_and_leaves_the_rest_unlimited() -> None:
    s = slo("a", rbps={"min": "10M", "max": "max"}, wbps={"min": "5M", "max": "80M"}, weight={"min": 10, "max": 100})
    t = group_target(s.throttle, 0.0)
    assert t.name == "lp" and t.selector == {"group-id": "lp"} and t.devices == "auto"
    assert (t.io_max.rbps, t.io_max.wbps, t.io_max.riops, t.io_max.wiops) == (10 * M, 5 * M, None, None)
    assert t.io_weight == 10 and t.level == 0.0


def test_the_most_restrictive_level_wins_and_the_overlap_is_a_conflict() -> None:
    a, b, c = slo("a"), slo("b"), slo("c", selector={"group-id": "lp2"})
    groups = {g.group: g for g in resolve_groups([(a, 0.8), (b, 0.3), (c, 0.9)])}
    assert set(groups) == {"lp", "lp2"}
    assert groups["lp"].level == 0.3 and groups["lp"].winner == "b" and groups["lp"].slos == ("a", "b")
    assert groups["lp"].conflict
    assert groups["lp"].target.io_max.rbps == rate_at(b.throttle.rbps, 0.3)  # type: ignore[arg-type]
    assert not groups["lp2"].conflict


def test_ties_go_to_the_slo_listed_first() -> None:
    assert resolve_groups([(slo("a"), 0.5), (slo("b"), 0.5)])[0].winner == "a"


def test_several_slos_give_the_most_restrictive_concrete_value_per_key_not_the_lowest_levels_targets() -> None:
    # Level 0.3 of a 100M-200M range (~123M) is looser than level 0.5 of a 1M-max range (16M):
    # comparing levels picked the former before issue 9.
    a = slo("a", rbps={"min": "100M", "max": "200M"}, wbps={"min": "1M", "max": "2M"}, weight={"min": 10, "max": 100})
    b = slo("b", rbps={"min": "1M", "max": "max"}, wbps={"min": "50M", "max": "max"}, weight={"min": 50, "max": 500})
    (g,) = resolve_groups([(a, 0.3), (b, 0.5)])
    assert g.target.io_max.rbps == rate_at(b.throttle.rbps, 0.5) == 16 * M  # type: ignore[arg-type]
    assert g.target.io_max.wbps == rate_at(a.throttle.wbps, 0.3)  # type: ignore[arg-type]
    assert g.target.io_weight == min(weight_at(a.throttle.weight, 0.3), weight_at(b.throttle.weight, 0.5))  # type: ignore[arg-type]
    assert dict(g.limits_from) == {"rbps": "b", "wbps": "a", "weight": "a"}
    assert g.conflict and g.level == 0.3


def test_a_key_only_one_slo_limits_is_limited_and_max_never_beats_a_number() -> None:
    a = slo("a", rbps={"min": "10M", "max": "max"})
    b = slo("b", wiops={"min": 100, "max": 1000})
    (g,) = resolve_groups([(a, 1.0), (b, 0.0)])
    assert (g.target.io_max.rbps, g.target.io_max.wiops) == (None, 100)
    (g,) = resolve_groups([(a, 0.0), (b, 1.0)])
    assert (g.target.io_max.rbps, g.target.io_max.wiops) == (10 * M, 1000)


def test_selectors_that_overlap_but_differ_are_reported_as_conflicts() -> None:
    broad = slo("broad", selector={"group-id": "lp"})
    narrow = slo("narrow", selector={"group-id": "lp", "tier": "batch"})
    other = slo("other", selector={"group-id": "lp2"})
    groups = {g.group: g for g in resolve_groups([(broad, 0.5), (narrow, 0.5), (other, 0.5)])}
    assert groups["lp"].overlaps == ("lp-batch",) and groups["lp"].conflict
    assert groups["lp-batch"].overlaps == ("lp",) and groups["lp-batch"].conflict
    assert groups["lp2"].overlaps == () and not groups["lp2"].conflict


def test_the_target_carries_the_limits_at_the_controllers_failsafe_level() -> None:
    a = slo("a", rbps={"min": "10M", "max": "max"}, wbps={"min": "5M", "max": "max"})
    (g,) = resolve_groups([(a, 0.9)], failsafe_level=0.2)
    assert g.target.failsafe is not None
    assert g.target.failsafe.rbps == rate_at(a.throttle.rbps, 0.2)  # type: ignore[arg-type]
    assert g.target.failsafe.wbps == rate_at(a.throttle.wbps, 0.2)  # type: ignore[arg-type]
    assert g.target.io_max.rbps == rate_at(a.throttle.rbps, 0.9)  # type: ignore[arg-type]
