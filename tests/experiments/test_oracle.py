"""The bisected oracle pins the best fixed level's LP throughput within the tolerance, and says how sure it is."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest

from experiments.oracle import Probe, ascend_pieces, bisect_oracle, bisect_pieces


def _plant(knee_level: float) -> Callable[[float], Probe]:  # LP grows geometrically with the level (as the SLO's range does)
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


def _pieces_plant(caps: list[float], spill: float = 0.0,
                  ) -> tuple[Callable[[Sequence[float], int], bool], list[tuple[list[float], int]]]:
    """Piece i meets while its level is at most caps[i], less ``spill`` times the level before it."""
    calls: list[tuple[list[float], int]] = []

    def meets(levels: Sequence[float], i: int) -> bool:
        calls.append((list(levels), i))
        return levels[i] <= caps[i] - spill * (levels[i - 1] if i > 0 else 0.0)
    return meets, calls


def test_each_piece_gets_its_highest_level_within_the_resolution() -> None:
    caps = [0.53, 0.58, 0.21, 0.9, 1.0, 0.47]
    meets, _ = _pieces_plant(caps)
    levels = bisect_pieces(meets, [False] * len(caps), resolution=0.01)
    assert levels[4] == 1.0
    for level, cap in zip(levels, caps):
        assert cap - 0.01 <= level <= cap


def test_pieces_are_judged_in_time_order_with_the_found_levels_before_and_zero_after() -> None:
    caps = [0.5, 0.6, 0.4]
    meets, calls = _pieces_plant(caps, spill=0.2)
    levels = bisect_pieces(meets, [False, False, False], resolution=0.01)
    for trial, i in calls:
        assert trial[:i] == levels[:i]
        assert all(v == 0.0 for v in trial[i + 1:])
    assert [i for _, i in calls] == sorted(i for _, i in calls)
    # the piece before leaves less room: 0.6 - 0.2 * 0.5, found as such
    assert 0.49 <= levels[1] <= 0.5


def test_a_held_piece_keeps_the_level_before_it_and_is_never_probed() -> None:
    meets, calls = _pieces_plant([0.5, 0.9, 0.9, 0.3])
    levels = bisect_pieces(meets, [False, True, True, False])
    assert levels[1] == levels[2] == levels[0]
    assert {i for _, i in calls} == {0, 3}


def test_a_piece_that_misses_even_without_lp_gets_zero() -> None:
    meets, _ = _pieces_plant([0.5, -1.0, 0.5])
    levels = bisect_pieces(meets, [False, False, False])
    assert levels[1] == 0.0 and levels[2] > 0.45


def test_galloping_takes_fewer_probes_than_bisecting_from_scratch_on_smooth_pieces() -> None:
    caps = [0.5 + 0.02 * (i % 3) for i in range(12)]
    meets, calls = _pieces_plant(caps)
    bisect_pieces(meets, [False] * len(caps), resolution=0.01)
    assert len(calls) <= 6 * len(caps)  # [0, 1] to 0.01 by plain bisection: 7 per piece


def _budget_plant(knees: list[float], weights: list[float], cost: float = 0.1,
                  ) -> tuple[Callable[[Sequence[float]], tuple[float, float]], list[list[float]]]:
    """Piece i misses nothing up to knees[i], then ``cost`` of attainment per unit of level; LP grows geometrically."""
    calls: list[list[float]] = []

    def judge(levels: Sequence[float]) -> tuple[float, float]:
        calls.append(list(levels))
        spent = sum(cost * max(0.0, level - knee) for level, knee in zip(levels, knees))
        return 1.0 - spent, sum(w * 10e6 * 200 ** level for w, level in zip(weights, levels))
    return judge, calls


def test_the_shared_budget_goes_where_it_buys_the_most_bytes() -> None:
    # Free up to the knees (0.6, 0.4); the bar leaves 0.005 of attainment, 0.05 of level past a knee. Piece 1
    # moves ten times piece 0's bytes per level, so all of it goes there.
    judge, _ = _budget_plant([0.6, 0.4], [1.0, 10.0])
    result = ascend_pieces(judge, [0.3, 0.3], [False, False], bar=0.995 - 1e-9)
    assert result.levels == pytest.approx([0.6, 0.45])
    assert result.attainment >= 0.995 - 1e-9
    assert (result.attainment, result.lp_bytes) == judge(result.levels)


def test_every_level_tried_meets_or_is_refused_and_the_result_never_moves_less_than_the_start() -> None:
    judge, calls = _budget_plant([0.52, 0.47, 0.61], [1.0, 2.0, 1.0])
    start = [0.45, 0.45, 0.45]
    result = ascend_pieces(judge, start, [False] * 3, bar=0.99)
    assert result.lp_bytes > judge(start)[1]
    assert result.attainment >= 0.99
    assert result.evaluations == len({tuple(c) for c in calls})  # each level set judged once
    assert all(0.0 <= level <= 1.0 for c in calls for level in c)


def test_a_held_piece_follows_the_one_before_it() -> None:
    judge, calls = _budget_plant([0.5, 0.9, 0.3], [1.0, 5.0, 1.0])
    result = ascend_pieces(judge, [0.2, 0.9, 0.2], [False, True, False], bar=0.999)
    assert all(c[1] == c[0] for c in calls)
    assert result.levels[1] == result.levels[0] == pytest.approx(0.5, abs=0.011)


def test_a_start_that_misses_the_bar_is_refused() -> None:
    judge, _ = _budget_plant([0.3], [1.0])
    with pytest.raises(ValueError, match="do not meet the bar"):
        ascend_pieces(judge, [0.6], [False], bar=0.99)
    with pytest.raises(ValueError, match="steps"):
        ascend_pieces(judge, [0.2], [False], bar=0.99, steps=[0.0])


def _stalling_plant(knee_level: float, stalled: set[float]) -> tuple[Callable[[float], Probe], list[float]]:
    """Like :func:`_plant`, with attainments; the first run at a level in ``stalled`` meets the target in 40 %
    of intervals whatever the level (a host stall), later runs as the level says."""
    calls: list[float] = []

    def probe(level: float) -> Probe:
        first_stall = level in stalled and level not in calls
        calls.append(level)
        attainment = 0.40 if first_stall else (0.99 if level <= knee_level else 0.90)
        return Probe(level, 10e6 * 200 ** level, attainment >= 0.95, attainment)
    return probe, calls


def test_a_probe_that_misses_far_more_often_than_a_higher_level_is_run_again_and_the_repeat_stands() -> None:
    probe, calls = _stalling_plant(0.43, stalled={0.25})  # 1 (0.90), 0, 0.5 (0.90), 0.25 stalls (0.40 < 0.90 - 0.1)
    result = bisect_oracle(probe, tolerance=0.05, recheck_gap=0.10)
    assert calls[:5] == [1.0, 0.0, 0.5, 0.25, 0.25]
    assert [p.meets for p in result.probes[3:5]] == [False, True]
    assert len(set(calls)) == len(calls) - 1  # only the disagreeing level ran twice
    assert result.level is not None and result.upper_level is not None
    assert result.level <= 0.43 < result.upper_level and result.uncertainty <= 0.05

    unchecked, unchecked_calls = _stalling_plant(0.43, stalled={0.25})
    fooled = bisect_oracle(unchecked, tolerance=0.05)  # without the recheck the stall walks the bisection down
    assert len(set(unchecked_calls)) == len(unchecked_calls)
    assert fooled.upper_level is not None and fooled.upper_level <= 0.25


def test_misses_that_agree_with_the_levels_above_and_the_probe_cap_are_not_rerun() -> None:
    probe, calls = _stalling_plant(0.43, stalled=set())  # every miss at 0.90, like level 1's
    bisect_oracle(probe, tolerance=0.05, recheck_gap=0.10)
    assert len(set(calls)) == len(calls)
    capped, capped_calls = _stalling_plant(0.43, stalled={0.25})
    result = bisect_oracle(capped, tolerance=0.05, max_probes=4, recheck_gap=0.10)
    assert capped_calls == [1.0, 0.0, 0.5, 0.25] and len(result.probes) == 4  # a rerun would make five
