"""report.py from synthetic frames: quantiles, attainment, oracle, summary columns, plots and report.md."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.export import SERIES_COLUMNS
from experiments.schedules import BUILTIN_SCHEDULES
from experiments.report import (
    MIB,
    SKIPPED_INTERVALS,
    SUMMARY_COLUMNS,
    ScenarioResult,
    TargetChoice,
    auto_target_ms,
    bucket_bounds,
    disagreeing_levels,
    histogram_quantile,
    host_warnings,
    oracle_row,
    period_buckets,
    phase_table,
    slo_attainment,
    summarize,
    write_report,
)

EDGES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, math.inf]
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
T0 = 1_700_000_000.0


def _series(p95_ms: list[float], *, lp_bps: float = 0.0, level: float | None = None) -> pd.DataFrame:
    n = len(p95_ms)
    frame = pd.DataFrame({c: np.full(n, np.nan) for c in SERIES_COLUMNS})
    frame["timestamp"] = T0 + np.arange(n, dtype=float)
    frame["elapsed_seconds"] = np.arange(n, dtype=float)
    frame["hp_p95_ms"] = p95_ms
    frame["hp_p50_ms"] = [p / 2 for p in p95_ms]
    frame["hp_p99_ms"] = [p * 1.5 for p in p95_ms]
    frame["hp_request_rate"] = 100.0
    frame["lp_bytes_per_second"] = lp_bps
    if level is not None:
        frame["throttle_level"] = level
        frame["io_max_rbps"] = 10 * MIB * (200 ** level)
    return frame


def _histogram(per_second: dict[float, float], seconds: int) -> pd.DataFrame:
    """Cumulative histogram where each second adds ``per_second[le]`` observations at or below ``le``."""
    rows = []
    for t in range(seconds):
        for le in EDGES:
            cumulative = sum(v for edge, v in per_second.items() if edge <= le)
            rows.append({"timestamp": T0 + t, "le": le, "count": cumulative * (t + 1)})
    return pd.DataFrame(rows)


def _client(latency_ms: float, n: int = 100) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": T0 + np.linspace(0, 19, n), "latency_ms": latency_ms, "ok": True})


def _result(name: str, kind: str, p95: float, *, lp_bps: float = 0.0, level: float | None = None,
            observations: dict[float, float] | None = None) -> ScenarioResult:
    observations = observations or {0.002: 95.0, 0.005: 5.0}
    return ScenarioResult(
        name=name, kind=kind, series=_series([p95] * 20, lp_bps=lp_bps, level=level),
        histogram=_histogram(observations, 20), client=_client(p95), warmup_seconds=5.0,
        lp=kind != "baseline", level=level if kind == "sweep" else None,
    )


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        pytest.param(0.5, 0.001 + 0.001 * 50 / 95, id="median-interpolated-in-second-bucket"),
        pytest.param(0.95, 0.002, id="p95-at-bucket-edge"),
        pytest.param(0.99, 0.0044, id="p99-interpolated-in-third-bucket"),
    ],
)
def test_histogram_quantile_interpolates_within_the_bucket_like_promql(q: float, expected: float) -> None:
    # 0 below 1 ms, 95 in (1, 2] ms, 5 in (2, 5] ms.
    buckets = pd.Series([0.0, 95.0, 100.0, 100.0, 100.0, 100.0, 100.0], index=EDGES)
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_returns_the_highest_finite_edge() -> None:
    buckets = pd.Series([0, 0, 0, 0, 0, 0, 10.0], index=EDGES)
    assert histogram_quantile(0.95, buckets) == 0.05


def test_histogram_quantile_without_observations_or_inf_bucket_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.95, pd.Series([0.0] * 7, index=EDGES)))
    assert math.isnan(histogram_quantile(0.95, pd.Series([1.0, 2.0], index=[0.001, 0.002])))


def test_period_buckets_counts_only_observations_after_the_start() -> None:
    hist = _histogram({0.002: 10.0}, 10)  # 10 per second, cumulative
    delta = period_buckets(hist, T0 + 4, T0 + 9)
    assert delta[0.002] == pytest.approx(50.0)
    assert delta[0.001] == 0.0


def test_bucket_bounds_names_the_bucket_holding_a_value() -> None:
    buckets = pd.Series(0.0, index=EDGES)
    assert bucket_bounds(buckets, 0.003) == (0.002, 0.005)
    assert bucket_bounds(buckets, 0.002) == (0.001, 0.002)
    assert bucket_bounds(buckets, 1.0) == (0.05, math.inf)


def test_attainment_ignores_warmup_and_the_first_three_intervals() -> None:
    # warm-up 5 s: rows 0-4 ignored; then rows 5-7 (first three) ignored even though they violate.
    p95 = [50.0] * 5 + [50.0] * SKIPPED_INTERVALS + [1.0] * 6 + [50.0] * 2
    assert slo_attainment(_series(p95), 10.0, 5.0) == pytest.approx(6 / 8)


def test_attainment_counts_an_interval_without_a_p95_as_missed() -> None:
    p95 = [1.0] * 8 + [float("nan")] * 2 + [1.0] * 2
    assert slo_attainment(_series(p95), 10.0, 5.0) == pytest.approx(2 / 4)


def test_auto_target_rounds_the_multiple_up_to_the_next_bucket_edge() -> None:
    assert auto_target_ms(1.7, 2.0, EDGES) == 5.0
    assert auto_target_ms(1.0, 2.0, EDGES) == 2.0
    with pytest.raises(ValueError, match="baseline P95"):
        auto_target_ms(float("nan"), 2.0, EDGES)


def _frontier() -> list[ScenarioResult]:
    fast = {0.002: 100.0}
    slow = {0.02: 100.0}
    return [
        _result("baseline", "baseline", 1.5, observations=fast),
        _result("contention", "contention", 15.0, lp_bps=2000 * MIB, observations=slow),
        _result("sweep-0", "sweep", 1.5, lp_bps=10 * MIB, level=0.0, observations=fast),
        _result("sweep-1", "sweep", 1.8, lp_bps=40 * MIB, level=0.5, observations=fast),
        _result("sweep-2", "sweep", 15.0, lp_bps=900 * MIB, level=1.0, observations=slow),
        _result("drcio", "drcio", 1.9, lp_bps=36 * MIB, level=0.45, observations=fast),
    ]


def test_oracle_is_the_sweep_level_with_most_lp_throughput_that_meets_the_target() -> None:
    summary = summarize(_frontier(), TargetChoice(5.0, "given"))
    oracle = summary[summary["scenario"] == "oracle"].iloc[0]
    assert oracle["source"] == "sweep-1"
    assert oracle["lp_mbps"] == pytest.approx(40.0)


def test_no_oracle_when_no_sweep_level_meets_the_target() -> None:
    summary = summarize(_frontier(), TargetChoice(1.0, "given"))
    assert oracle_row(summary) is None
    assert "oracle" not in set(summary["scenario"])


def test_summary_has_the_required_columns_and_one_row_per_scenario() -> None:
    summary = summarize(_frontier(), TargetChoice(5.0, "given"))
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["scenario"]) == ["baseline", "contention", "sweep-0", "sweep-1", "sweep-2", "drcio", "oracle"]
    base = summary.iloc[0]
    assert base["lp_mbps"] == 0.0  # no LP ran: zero, not unknown
    assert base["p95_ms"] == pytest.approx(1.95)  # all in (1, 2] ms: 1 + 0.95 x 1 ms
    assert base["client_p95_ms"] == pytest.approx(1.5)
    assert summary.iloc[1]["p95_ms"] == pytest.approx(19.5)  # all in (10, 20] ms: 10 + 0.95 x 10 ms


def test_write_report_writes_summary_plots_and_states_the_target(tmp_path: Path) -> None:
    target = TargetChoice(5.0, "auto: 2.0 x baseline P95 (1.5 ms), rounded up to the next bucket edge")
    write_report(tmp_path, _frontier(), target, run_info={"command": "run-experiment --scenario all"}, pending=["static-max"])
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert {"scenario", "p50_ms", "p95_ms", "p99_ms", "client_p95_ms", "lp_mbps", "slo_target_ms",
            "slo_attainment"} <= set(summary.columns)
    for png in ("latency.png", "sweep-latency.png", "throttle.png", "lp-throughput.png", "frontier.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(b"\x89PNG"), png
    report = (tmp_path / "report.md").read_text()
    assert "**5 ms**" in report and "rounded up to the next bucket edge" in report
    assert "![frontier](frontier.png)" in report
    assert "static-max" in report.split("## Not run")[1]
    assert "drcio LP throughput = 90.0% of the oracle's (sweep-1" in report


def test_a_dynamic_run_without_an_oracle_says_why_its_bytes_are_not_compared(tmp_path: Path) -> None:
    dynamic = _result("dynamic-hp-steps", "dynamic", 4.0, lp_bps=50 * MIB, level=0.3)
    probes = [dataclasses.replace(_result(f"oracle-{n}", "probe", p95, lp_bps=lp * MIB, level=level), level=level)
              for n, (p95, lp, level) in enumerate([(20.0, 900.0, 1.0), (8.0, 10.0, 0.0)], start=1)]
    write_report(tmp_path, [dynamic, *probes], TargetChoice(5.0, "given"))
    checks = (tmp_path / "report.md").read_text().split("## Against the acceptance figures")[1].split("##")[0]
    assert "dynamic-hp-steps: drcio met the target in 100.0% of intervals" in checks
    assert ("dynamic-hp-steps: no fixed level met the target (the lowest tried, oracle-2 at level 0 with LP at 10.0 "
            "MiB/s, met it in 0.0% of intervals) over the same schedule") in checks
    assert "not measured in this run" in checks and "NOT met" not in checks


def test_a_steady_run_without_an_oracle_names_the_lowest_fixed_level(tmp_path: Path) -> None:
    write_report(tmp_path, _frontier(), TargetChoice(1.0, "given"))  # even sweep-0 (level 0) misses 1 ms
    assert ("no fixed level met the target (the lowest tried, sweep-0 at level 0 with LP at 10.0 MiB/s, met it in "
            "0.0% of intervals), so there is no oracle to compare drcio with") in (tmp_path / "report.md").read_text()


def test_write_report_with_only_a_baseline_skips_plots_without_data(tmp_path: Path) -> None:
    write_report(tmp_path, _frontier()[:1], TargetChoice(5.0, "given"))
    assert (tmp_path / "latency.png").exists()
    assert not (tmp_path / "frontier.png").exists()
    assert not (tmp_path / "throttle.png").exists()


def test_report_warns_when_the_baseline_ran_on_a_busy_disk(tmp_path: Path) -> None:
    results = _frontier()
    results[0].notes = {"io_pressure_pct": "46.1", "cpu_pressure_pct": "34.1"}
    write_report(tmp_path, results, TargetChoice(5.0, "given"))
    assert "the host was busy" in (tmp_path / "report.md").read_text()
    results[0].notes = {"io_pressure_pct": "5.4"}
    write_report(tmp_path, results, TargetChoice(5.0, "given"))
    report = (tmp_path / "report.md").read_text()
    assert "the host was busy" not in report
    # One baseline only: nothing to say of drift.
    assert "HP alone at the start and the end" not in report and "the host changed" not in report


def _hp_alone_line(report: str) -> str:
    (line,) = [x for x in report.splitlines() if x.startswith("- HP alone at the start and the end of the run")]
    return line


@pytest.mark.parametrize(("end", "drifted"), [
    pytest.param({0.002: 100.0}, False, id="same-host"),
    pytest.param({0.005: 100.0}, True, id="slower-at-the-end"),
    pytest.param({0.001: 100.0}, True, id="faster-at-the-end"),
])
def test_the_closing_baseline_says_whether_hp_alone_moved_during_the_run(
    tmp_path: Path, end: dict[float, float], drifted: bool
) -> None:
    results = [*_frontier(), _result("baseline-end", "baseline", 1.5, observations=end)]
    summary = write_report(tmp_path, results, TargetChoice(5.0, "given"))
    first, last = summary.loc[summary["kind"] == "baseline", "p95_ms"]
    assert (not 1 / 1.5 <= last / first <= 1.5) is drifted  # the histograms: 1.95 ms, then 1.95 / 4.85 / 0.95 ms
    report = (tmp_path / "report.md").read_text()
    line = _hp_alone_line(report)
    assert f"P95 {first:.2f} ms, then {last:.2f} ms ({last / first:.3f}x" in line
    assert line.endswith(": NOT met" if drifted else ": met")
    assert ("the host changed during the run" in report) is drifted
    # ... and the verdict against the oracle says it stands on a host that moved.
    (lp_line,) = [line for line in report.splitlines() if line.startswith("- drcio LP throughput = ")]
    assert lp_line.endswith(": met (unreliable: the host changed during the run, see the warning above)"
                            if drifted else ": met")
    # The first baseline stays the one the contention check compares with.
    contention = float(summary.loc[summary["scenario"] == "contention", "p95_ms"].iloc[0])
    assert f"contention P95 / baseline P95 = {contention / first:.1f}x" in report


@pytest.mark.parametrize(("run", "pair"), [
    # Five real lp-phases runs on this host, 2026-11-30 (run-experiment --backend local --scenario dynamic --schedule
    # lp-phases --target auto; the summary.csv each wrote): in the second the probes at 0.125 and 0.0625 met
    # 40 % and 51 % of intervals while 0.25 met 94 % (the host stalled mid-bisection); the first ran the right way
    # (within 2 points). In the third, 0.422 met 78 % of intervals against 93 % at 0.438.
    pytest.param("local-dynamic-lp-phases-pid-gated-run2-2026-11-30", ("oracle-5", "oracle-4"), id="host-stalled"),
    pytest.param("local-dynamic-lp-phases-pid-gated-2026-11-30", None, id="steady-host"),
    pytest.param("local-dynamic-lp-phases-pid-gated-run3-2026-11-30", ("oracle-8", "oracle-6"), id="one-probe-stalled"),
    # The fourth reran its probe at 0.461 (76 % of intervals against 86 % at 0.469; the rerun met 100 %): the first
    # run is kind superseded, and left out.
    pytest.param("local-dynamic-lp-phases-pid-gated-run4-2026-11-30", None, id="stalled-probe-rerun"),
    # The fifth reran two probes, and the rerun at 0.562 still met 38 % of intervals against 53 % at 0.625.
    pytest.param("local-dynamic-lp-phases-pid-gated-aba-2026-11-30", ("oracle-7", "oracle-5"), id="rerun-still-disagrees"),
    # A diurnal A-B-A run the same day, nine probes: attainment falls with the level but for 0.438 (98.2 %) and
    # 0.484 (95.4 %) below 0.492's 100 %: at most 4.6 points, within the 10.
    pytest.param("local-dynamic-diurnal-pid-gated-aba-2026-11-30", None, id="nine-probes-agree"),
    # An lp-phases A-B-A run of the next session, on a host that stalled: 0.0156 met 66.7 % of intervals, 0.125 93.1 %.
    pytest.param("local-dynamic-lp-phases-pid-gated-aba-run2-2026-11-30", ("oracle-8", "oracle-5"), id="stalled-aba"),
])
def test_probes_whose_attainment_runs_the_wrong_way_are_found(run: str, pair: tuple[str, str] | None) -> None:
    found = disagreeing_levels(pd.read_csv(RESULTS / run / "summary.csv"))
    assert (None if found is None else (found[0]["scenario"], found[1]["scenario"])) == pair


@pytest.mark.parametrize(("run", "cleared", "still_off"), [
    # The fourth real lp-phases run reran 0.461 (76 % of intervals against 86 % at 0.469); the rerun met 100 %.
    pytest.param("local-dynamic-lp-phases-pid-gated-run4-2026-11-30", ["oracle-10"], [], id="rerun-cleared"),
    # The fifth reran 0.516 (42 % against 64 % at 0.531; the rerun met 77 %) and 0.562 (37 % against 53 % at
    # 0.625), whose rerun still met only 38 %: that note must not say one stall explained it.
    pytest.param("local-dynamic-lp-phases-pid-gated-aba-2026-11-30", ["oracle-10"], ["oracle-7"], id="rerun-still-off"),
])
def test_the_note_on_a_rerun_probe_says_whether_the_rerun_cleared_it(
    run: str, cleared: list[str], still_off: list[str]
) -> None:
    notes = [w for w in host_warnings(pd.read_csv(RESULTS / run / "summary.csv"))
             if w.startswith("**Note: a probe of the oracle was run again.**")]
    stalled = [w for w in notes if "so the host stalled during it: the same level ran again as" in w]
    off = [w for w in notes if "so the host was off for longer than one run (see the warning below)" in w]
    assert len(stalled) + len(off) == len(notes)
    assert [w.split("ran again as ")[1].split(" ")[0] for w in stalled] == cleared
    assert [w.split("ran again as ")[1].split(",")[0] for w in off] == still_off


def test_the_per_phase_table_of_a_real_diurnal_run_adds_up_to_its_attainment() -> None:
    """The fourth local diurnal A-B-A run (2026-11-30; the series and summary.csv it wrote, kept with both drcio runs
    and the oracle's bracket): its schedule has a quiet spell (HP rate 0, no P95), which attainment leaves out."""
    run = RESULTS / "local-dynamic-diurnal-pid-gated-aba-run4-2026-11-30"
    summary = pd.read_csv(run / "summary.csv")
    empty = pd.DataFrame()
    kinds = {"dynamic-diurnal": "dynamic", "dynamic-diurnal-after": "dynamic", "oracle-9": "probe", "oracle-10": "probe"}
    results = [ScenarioResult(name, kind, pd.read_csv(run / f"{name}.csv"), empty, empty, warmup_seconds=5.0, lp=True,
                              schedule=BUILTIN_SCHEDULES["diurnal"]) for name, kind in kinds.items()]
    target = float(summary["slo_target_ms"].iloc[0])
    table = phase_table(results, summary, target)
    assert len(table) == 7 and table["phase"].iloc[5] == "LP read, HP quiet"
    by_name = summary.set_index("scenario")
    for name in kinds:  # the oracle's probe and the next miss are found from the summary, as in the report
        missed, counted = zip(*(map(int, cell.split("/")) for cell in table[f"{name} missed"]))
        assert 1 - sum(missed) / sum(counted) == pytest.approx(by_name.loc[name, "slo_attainment"]), name
        # The phases' LP, weighted by their measured rows (after the warm-up), is the run's LP up to the table's
        # rounding to 0.1 MiB/s: the phases split the rows the summary averages, and leave none out.
        series = pd.read_csv(run / f"{name}.csv")
        rows = series[(series["elapsed_seconds"] >= 5.0) & series["lp_bytes_per_second"].notna()]
        starts = [float(span.split("-")[0]) for span in table["seconds"]]
        weights = [int(((rows["elapsed_seconds"] >= a) & (rows["elapsed_seconds"] < b)).sum())
                   for a, b in zip(starts, [*starts[1:], float("inf")])]
        mean = sum(float(v) * w for v, w in zip(table[f"{name} MiB/s"], weights)) / sum(weights)
        assert sum(weights) == len(rows) and mean == pytest.approx(by_name.loc[name, "lp_mbps"], abs=0.05), name
    assert [int(c.split("/")[0]) for c in table["oracle-10 missed"]][2] > 30  # the next level up fails at 300/s


def test_the_report_warns_when_a_lower_fixed_level_did_worse_than_a_higher_one(tmp_path: Path) -> None:
    dynamic = _result("dynamic-x", "dynamic", 2.0, lp_bps=50 * MIB, level=0.4)

    def probe(n: int, level: float, misses: int) -> ScenarioResult:
        series = _series([9.0] * misses + [2.0] * (20 - misses), lp_bps=MIB * 10 * 200 ** level, level=level)
        return dataclasses.replace(_result(f"oracle-{n}", "probe", 2.0, level=level), series=series, level=level)

    steady = [probe(1, 1.0, 20), probe(2, 0.0, 0), probe(3, 0.5, 1)]
    write_report(tmp_path, [dynamic, *steady], TargetChoice(5.0, "given"))
    assert "the fixed levels disagree" not in (tmp_path / "report.md").read_text()  # neither warning nor doubt
    write_report(tmp_path, [dynamic, *steady, probe(4, 0.25, 10)], TargetChoice(5.0, "given"))
    top = (tmp_path / "report.md").read_text().split("## SLO target")[0]
    assert "**Warning: the fixed levels disagree.** oracle-3 (level 0.5) met the target in" in top
    assert "but oracle-4 at the lower level 0.25 only in" in top
    checks = (tmp_path / "report.md").read_text().split("## Against the acceptance figures")[1].split("##")[0]
    (lp_line,) = [line for line in checks.splitlines() if "of the LP bytes of the best fixed level" in line]
    assert lp_line.endswith("(unreliable: the fixed levels disagree, see the warning above)")
    drifted = [_result("baseline", "baseline", 1.5, observations={0.002: 100.0}), dynamic, *steady,
               probe(4, 0.25, 10), _result("baseline-end", "baseline", 1.5, observations={0.005: 100.0})]
    write_report(tmp_path, drifted, TargetChoice(5.0, "given"))
    (lp_line,) = [line for line in (tmp_path / "report.md").read_text().splitlines()
                  if "of the LP bytes of the best fixed level" in line]
    assert lp_line.endswith("(unreliable: the host changed during the run and the fixed levels disagree, "
                            "see the warnings above)")


def test_drcio_before_and_after_the_probes_is_compared_with_the_oracle_by_its_mean(tmp_path: Path) -> None:
    """A-B-A: drcio's two runs bracket the oracle's probes in time; the verdict is on their mean."""
    before = _result("dynamic-x", "dynamic", 2.0, lp_bps=80 * MIB, level=0.4)
    after = _result("dynamic-x-after", "dynamic", 2.0, lp_bps=40 * MIB, level=0.4)
    probes = [dataclasses.replace(_result(f"oracle-{n}", "probe", p95, lp_bps=lp * MIB, level=level), level=level)
              for n, (p95, lp, level) in enumerate([(20.0, 900.0, 1.0), (2.0, 50.0, 0.5), (2.0, 10.0, 0.0)], start=1)]
    write_report(tmp_path, [before, *probes, after], TargetChoice(5.0, "given"))
    checks = (tmp_path / "report.md").read_text().split("## Against the acceptance figures")[1].split("##")[0]
    # Each run against the oracle (oracle-2, 50 MiB/s): 160 % and 80 %; their mean, 60 MiB/s, 120 %.
    assert "dynamic-x: drcio moved 160.0% of the LP bytes" in checks
    assert "dynamic-x-after: drcio moved 80.0% of the LP bytes" in checks
    assert ("drcio's runs before and after the oracle's probes (dynamic-x, dynamic-x-after) moved 80.0 and 40.0 "
            "MiB/s (2.00x apart) and met the target in 100.0% and 100.0% of intervals; their mean, 60.0 MiB/s, is "
            "120.0% of the LP bytes of the best fixed level over the same schedule (wanted >= 110 %): met") in checks
    write_report(tmp_path, [before, *probes], TargetChoice(5.0, "given"))
    assert "before and after the oracle's probes" not in (tmp_path / "report.md").read_text()


def test_a_dynamic_run_without_violations_has_no_reaction_and_says_so_with_a_dash(tmp_path: Path) -> None:
    calm = dataclasses.replace(_result("dynamic-x", "dynamic", 2.0, lp_bps=50 * MIB, level=0.4),
                               steps=[(0.0, 10.0, "start"), (10.0, 20.0, "step")])
    write_report(tmp_path, [calm], TargetChoice(5.0, "given"))
    table = (tmp_path / "report.md").read_text().split("### dynamic-x")[1]
    rows = [line for line in table.splitlines() if line.startswith("| 0.00 |") or line.startswith("| 10.00 |")]
    assert len(rows) == 2 and all(row.endswith("| 0 | – |") for row in rows), rows
