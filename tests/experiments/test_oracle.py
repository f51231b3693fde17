"""The bisected oracle pins the best fixed level's LP throughput within the tolerance, and says how sure it is."""

from __future__ import annotations

import math

import pytest

from experiments.oracle import Probe, bisect_oracle


def _plant(knee_level: float):  # LP grows geometrically with the level (as the SLO's range does)
    def probe(level: float) -> Probe:
        return Probe(level, 10e6 * 200 ** level, level <= knee_level)
    return probe


@pytest.mark.parametrize("knee", [0.05, 0.43, 0.91])
def test_bisection_brackets_the_knee_within_five_percent(knee: float) -> None:
    result = bisect_oracle(_plant(knee), tolerance=0.05)
    assert result.level is not None and result.upper_level is not None
    assert result.level <= knee < result.upper_level
    assert result.uncertainty <= 0.05
    assert result.upper_lp_bytes_per_second / result.lp_bytes_per_second - 1 == pytest.approx(result.uncertainty)
    assert len(result.probes) <= 14


def test_no_limit_needed_is_exact_and_no_level_meeting_the_slo_says_so() -> None:
    free = bisect_oracle(_plant(1.0))
    assert (free.level, free.uncertainty, len(free.probes)) == (1.0, 0.0, 1)
    hopeless = bisect_oracle(_plant(-1.0))
    assert hopeless.level is None and math.isinf(hopeless.uncertainty)
    assert "no fixed level meets the SLO" in hopeless.describe()
