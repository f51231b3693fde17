"""Convergence figures: settling after a step, SLO settling, reaction to a violation, per step."""

from __future__ import annotations

import pandas as pd

from experiments.convergence import reactions, settling, slo_settling, step_table


def _series(p95: list[float], level: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"elapsed_seconds": [float(i) for i in range(len(p95))], "hp_p95_ms": p95,
                         "throttle_level": level})


def test_settling_counts_until_the_level_stays_in_the_band_and_the_slo_holds() -> None:
    s = _series([5, 12, 11, 9, 8, 8, 8, 8], [0.2, 0.6, 0.52, 0.45, 0.46, 0.45, 0.45, 0.45])
    assert settling(s, 0, 8) == 3  # 0.2, 0.6, 0.52 are more than 0.05 from the final ~0.45: settled from interval 3
    assert slo_settling(s, 0, 8, 10.0) == 3  # the last violation is interval 2


def test_a_violation_reaction_is_the_intervals_to_a_tighter_limit_or_minus_one() -> None:
    s = _series([8, 12, 12, 9, 8, 11, 11], [0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4])
    assert reactions(s, 10.0) == [(1.0, 2), (5.0, -1)]


def test_a_cut_on_the_onsets_own_tick_is_a_reaction_of_zero_not_no_reaction() -> None:
    # HP returns from a quiet spell: the first reading is a violation and the loop cuts at once (0.6 -> 0.03);
    # the level never goes lower than that, which is no reason to call it "never reacted".
    s = _series([5, 5, 13, 12, 11, 9], [0.6, 0.6, 0.03, 0.04, 0.16, 0.2])
    assert reactions(s, 10.0) == [(2.0, 0)]


def test_the_step_table_has_one_row_per_step_with_its_worst_reaction() -> None:
    s = _series([8, 12, 9, 8, 8, 12, 12, 9], [0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3])
    table = step_table(s, [(0, 4, "start"), (4, 8, "lp-step")], 10.0)
    assert list(table["step"]) == ["start", "lp-step"]
    assert list(table["violations"]) == [1, 1]
    assert list(table["worst_reaction_intervals"]) == [1, 1]
