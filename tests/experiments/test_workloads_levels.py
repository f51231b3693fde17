"""The load levels: pinned values, rising intensity, and flags the workloads' CLIs accept."""

from __future__ import annotations

import pytest

from experiments.workloads import loadgen, lp_batch
from experiments.workloads.levels import LOAD_LEVELS, LoadLevel, load_level


def test_the_levels_are_pinned() -> None:
    assert LOAD_LEVELS == {
        "low": LoadLevel("low", 100.0, "read", 2, 1 << 20),
        "medium": LoadLevel("medium", 200.0, "mixed", 4, 1 << 20),
        "high": LoadLevel("high", 300.0, "mixed", 8, 1 << 20),
    }


def test_each_level_is_at_least_as_heavy_as_the_one_below() -> None:
    low, medium, high = (LOAD_LEVELS[n] for n in ("low", "medium", "high"))
    assert low.hp_rate_per_second < medium.hp_rate_per_second < high.hp_rate_per_second
    assert low.lp_workers < medium.lp_workers < high.lp_workers


@pytest.mark.parametrize("name", sorted(LOAD_LEVELS))
def test_a_levels_flags_parse_in_the_workloads_own_clis(name: str) -> None:
    level = LOAD_LEVELS[name]
    lp = lp_batch.main.make_context("lp_batch", ["--data-dir", "/unused", "--port", "1", *level.lp_args()])
    assert (lp.params["mode"], lp.params["workers"], lp.params["block_size"]) == (
        level.lp_mode, level.lp_workers, level.lp_block_size_bytes)
    lg = loadgen.main.make_context("loadgen", ["--url", "http://127.0.0.1:1/score", "--duration", "1",
                                               "--out", "/unused.csv", *level.loadgen_args()])
    assert lg.params["rate"] == level.hp_rate_per_second


def test_an_unknown_level_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown load level 'extreme'; choose one of low, medium, high"):
        load_level("extreme")
