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
