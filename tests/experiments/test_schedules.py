"""Load schedules: the YAML format, its errors, the built-ins, and what a schedule says at a time."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from experiments.backends.sim import SimBackend, SimConfig
from experiments.cli import _run_command
from experiments.export import Export
from experiments.model import ScenarioRun, ScenarioSpec
from experiments.report import LEVEL_DISAGREEMENT, ORACLE_ATTAINMENT, SUPERSEDED, phase_table
from experiments.scenarios import (PlanConfig, RunConfig, TargetSetting, load_base_slo, load_results, plan_scenarios,
                                  run_plan)
from tests.experiments.progress import Quiet
from experiments.schedules import BUILTIN_SCHEDULES, ScheduleError, load_schedule, parse_schedule


def test_a_schedule_file_gives_rates_modes_ramps_and_bursts(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: mine\nphases:\n"
        "  - {duration: 10s, hp_rate: 100, lp: read}\n"
        "  - {duration: 10s, hp_rate: 100, hp_rate_end: 300, lp: write}\n"
        "  - {duration: 15s, hp_rate: 0, lp: bursts, burst_on: 5s, burst_off: 10s}\n")
    s = load_schedule(str(path))
    assert s.duration_seconds == 35
    assert (s.hp_rate_at(5), s.lp_mode_at(5)) == (100, "read")
    assert s.hp_rate_at(15) == pytest.approx(200)
    assert s.lp_mode_at(15) == "write"
    assert (s.hp_rate_at(21), s.lp_mode_at(21), s.lp_mode_at(26)) == (0, "mixed", "idle")
    assert s.steps() == [0, 10, 20, 25]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param({"name": "x", "phases": []}, "phases", id="no-phases"),
        pytest.param({"name": "x", "phases": [{"duration": "10", "hp_rate": 1, "lp": "read"}]}, "phases.0.duration",
                     id="duration-without-unit"),
        pytest.param({"name": "x", "phases": [{"duration": "1s", "hp_rate": -1, "lp": "read"}]}, "phases.0.hp_rate",
                     id="negative-rate"),
        pytest.param({"name": "x", "phases": [{"duration": "1s", "hp_rate": 1, "lp": "nap"}]}, "phases.0.lp",
                     id="unknown-lp-mode"),
        pytest.param({"name": "x", "phases": [{"duration": "1s", "hp_rate": 1, "lp": "read", "colour": 1}]},
                     "phases.0.colour", id="unknown-field"),
        pytest.param({"name": "x/../../escaped", "phases": [{"duration": "1s", "hp_rate": 1, "lp": "read"}]},
                     "name", id="name-with-a-path"),
        pytest.param({"name": "", "phases": [{"duration": "1s", "hp_rate": 1, "lp": "read"}]}, "name", id="empty-name"),
        pytest.param({"name": "x", "phases": [{"duration": "1s", "hp_rate": True, "lp": "read"}]}, "phases.0.hp_rate",
                     id="boolean-rate"),
    ],
)
def test_a_bad_schedule_is_refused_with_where_and_why(doc: object, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace(".", r"\.")):
        parse_schedule(doc, source="f.yaml")


def test_every_builtin_runs_a_few_minutes_at_most() -> None:
    for name in ("hp-steps", "lp-phases", "diurnal", "steady", "lp-step", "lp-bursts", "hp-ramp", "hp-quiet"):
        assert 60 <= BUILTIN_SCHEDULES[name].duration_seconds <= 300, name


def test_an_unknown_schedule_name_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(_run_command, ["--backend", "sim", "--scenario", "dynamic", "--schedule", "nope",
                                               "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "neither a built-in schedule" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"name: x\nphases: [\n", "not valid YAML"),
    (b"name: caf\xe9\nphases: []\n", "the schedule is not UTF-8 text (byte 9"),
], ids=["not-yaml", "latin-1"])
def test_an_unreadable_schedule_file_exits_2_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "day.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(_run_command, ["--backend", "sim", "--scenario", "dynamic", "--schedule", str(path),
                                               "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{path}: {message}" in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_a_schedule_no_longer_than_the_warm_up_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    # hp-steps scaled to 3.8 s against the default 5 s warm-up: no interval would be measured.
    result = CliRunner().invoke(_run_command, ["--backend", "sim", "--scenario", "dynamic", "--schedule", "hp-steps",
                                               "--schedule-scale", "0.02", "--target", "5ms",
                                               "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "warm-up (5 s) must be shorter than the schedule (hp-steps: 3.8 s)" in result.output
    assert not (tmp_path / "out").exists()


def test_dynamic_on_the_sim_runs_the_schedule_and_bisects_its_oracle(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(_run_command, ["--backend", "sim", "--scenario", "dynamic", "--schedule", "lp-step",
                                               "--target", "10ms", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "dynamic-lp-step.csv").exists() and (out / "oracle.json").exists()
    report = (out / "report.md").read_text()
    assert "dynamic-lp-step: drcio moved" in report and "bisection: oracle-" in report
    assert "no probe is run twice (every run of this backend draws the same random numbers" in report
    assert not (out / "dynamic-lp-step-after.csv").exists()  # no second drcio run: it would repeat the first
    # The environment facts say the load follows the schedule, not the steady preset's 200 requests/s.
    assert "the rates of the schedule lp-step in every scenario of this run" in report
    # --report-only rebuilds it with nothing missing: the oracle ran as probes (oracle-N) and its bisection
    # ended with oracle.json, so it is not "planned but not run".
    assert "## Not run" not in report
    assert CliRunner().invoke(_run_command, ["--report-only", "--output", str(out)]).exit_code == 0
    assert "## Not run" not in (out / "report.md").read_text()

    # Per phase: drcio, the oracle's probe and the lowest probe above it that missed, side by side; each run's
    # misses over the phases add up to its attainment, and a probe holds its level in every phase.
    summary = pd.read_csv(out / "summary.csv").set_index("scenario")
    results, _, _ = load_results(out)
    table = phase_table(results, summary.reset_index(), 10.0)
    assert list(table["phase"]) == ["LP idle, HP 200/s", "LP mixed, HP 200/s"]
    assert list(table["seconds"]) == ["0-30", "30-90"]
    chosen = report.split("bisection: ")[1].split(" ")[0]
    above = report.split("(next miss ")[1].split(" ")[0]
    assert [c.removesuffix(" missed") for c in table.columns if c.endswith(" missed")] == [
        "dynamic-lp-step", chosen, above]
    for name in ("dynamic-lp-step", chosen, above):
        missed, counted = zip(*(map(int, cell.split("/")) for cell in table[f"{name} missed"]))
        assert 1 - sum(missed) / sum(counted) == pytest.approx(summary.loc[name, "slo_attainment"]), name
    assert sum(int(cell.split("/")[0]) for cell in table[f"{above} missed"]) > 0  # it missed somewhere
    for name in (chosen, above):
        assert all(float(v) == pytest.approx(summary.loc[name, "level"], abs=5e-4) for v in table[f"{name} level"])
    assert "## Per phase" in report and "| LP idle, HP 200/s | 0-30 |" in report


def test_an_auto_target_in_a_dynamic_run_comes_from_hp_alone_under_the_schedule(tmp_path: Path) -> None:
    """hp-steps runs HP at 100 and 300 requests/s: the baselines play that (LP off), not a steady 200."""
    out = tmp_path / "out"
    result = CliRunner().invoke(_run_command, ["--backend", "sim", "--scenario", "dynamic", "--schedule", "hp-steps",
                                               "--oracle-probes", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    schedule = BUILTIN_SCHEDULES["hp-steps"]
    for name in ("baseline", "baseline-end"):
        series = pd.read_csv(out / f"{name}.csv")
        assert series["lp_bytes_per_second"].fillna(0).max() == 0, name
        for start, end, _ in schedule.segments()[1:]:  # after the start's warm-up: each phase's settled rate
            inside = series[(series["elapsed_seconds"] >= start + 6) & (series["elapsed_seconds"] < end)]
            want = schedule.hp_rate_at(start + 6)
            assert inside["hp_request_rate"].fillna(0).mean() == pytest.approx(want, rel=0.15, abs=1.0), (name, start)
    summary = pd.read_csv(out / "summary.csv").set_index("scenario")
    report = (out / "report.md").read_text()
    assert f"2 x the baseline's measured P95 ({summary.loc['baseline', 'p95_ms']:.3f} ms)" in report


@pytest.mark.parametrize("name", [*BUILTIN_SCHEDULES], ids=str)
def test_the_file_handed_to_the_workloads_reads_back_as_the_same_schedule(name: str, tmp_path: Path) -> None:
    import yaml

    for schedule in (BUILTIN_SCHEDULES[name], BUILTIN_SCHEDULES[name].scaled(0.37)):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(schedule.to_document(), sort_keys=False))
        back = load_schedule(str(path))
        assert back.name == schedule.name and len(back.phases) == len(schedule.phases)
        for a, b in zip(back.phases, schedule.phases):
            assert (a.lp, a.hp_rate, a.hp_rate_end) == (b.lp, b.hp_rate, b.hp_rate_end)
            for x, y in ((a.duration_seconds, b.duration_seconds), (a.burst_on_seconds, b.burst_on_seconds),
                         (a.burst_off_seconds, b.burst_off_seconds)):
                assert x == pytest.approx(y, abs=1e-6)


def test_phase_index_and_mean_rate_follow_phases_and_ramps() -> None:
    s = parse_schedule({"name": "x", "phases": [{"duration": "10s", "hp_rate": 100, "lp": "read"},
                                                {"duration": "10s", "hp_rate": 0, "hp_rate_end": 200, "lp": "idle"}]},
                       source="t")
    assert [s.phase_index_at(t) for t in (0, 9.99, 10, 19.99, 25)] == [0, 0, 1, 1, 1]
    assert [(s.phases.index(p), into) for p, into in map(s.at, (0, 9.5, 10, 19.5, 25))] == [
        (0, 0), (0, 9.5), (1, 0), (1, 9.5), (1, 15)]  # the last phase holds past the end
    assert s.mean_hp_rate() == pytest.approx((1000 + 1000) / 20)
    assert s.mean_hp_rate(15) == pytest.approx((1000 + 5 * 50) / 15)
    assert s.mean_hp_rate(30) == pytest.approx((1000 + 1000 + 2000) / 30)  # the last phase holds at its end rate
    assert s.peak_hp_rate == 200 and not s.writes


def _bad_file(tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nphases:\n  - {duration: 10, hp_rate: 100, lp: nap}\n")
    return str(path)


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        pytest.param(["--scenario", "dynamic", "--schedule", "nope"], ["neither a built-in schedule"], id="unknown-name"),
        pytest.param(["--scenario", "dynamic", "--schedule", "BAD"], ["bad.yaml: phases.0.duration", "phases.0.lp"],
                     id="every-mistake-of-a-file"),
        pytest.param(["--scenario", "dynamic"], ["needs --schedule"], id="no-schedule"),
        pytest.param(["--scenario", "drcio", "--schedule", "hp-steps"], ["only for --scenario dynamic"],
                     id="schedule-on-a-steady-scenario"),
        pytest.param(["--scenario", "drcio", "--schedule-scale", "0.5"], ["--schedule-scale needs --schedule"],
                     id="scale-without-schedule"),
        pytest.param(["--scenario", "dynamic", "--schedule", "hp-steps", "--schedule-scale", "0"], ["0"],
                     id="zero-scale"),
        pytest.param(["--scenario", "dynamic", "--schedule", "hp-steps", "--oracle-probes", "1"], ["1"],
                     id="one-probe-cannot-bisect"),
    ],
)
def test_bad_schedule_input_on_the_local_backend_exits_2_and_writes_nothing(
    args: list[str], messages: list[str], tmp_path: Path
) -> None:
    argv = [_bad_file(tmp_path) if a == "BAD" else a for a in args]
    result = CliRunner().invoke(_run_command, ["--backend", "local", *argv, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", " ")
    assert all(m in text for m in messages), text
    assert not (tmp_path / "out").exists()


def test_local_dynamic_is_no_longer_refused_the_machine_check_answers_instead(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-cgroup"
    empty.mkdir()
    result = CliRunner().invoke(_run_command, ["--backend", "local", "--scenario", "dynamic", "--schedule",
                                               "hp-steps", "--cgroup-root", str(empty),
                                               "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    text = result.output.replace("\n", " ")
    assert "steady scenarios only" not in text and "later" not in text
    # Root or not, what stops it is this machine (root, cgroup I/O control), and the message names the sim.
    assert "the local backend cannot run here" in text and "--backend sim" in text


def test_until_keeps_the_first_seconds_and_a_cut_ramp_ends_at_the_rate_reached() -> None:
    ramp = parse_schedule({"name": "r", "phases": [
        {"duration": "10s", "hp_rate": 200, "lp": "read"},
        {"duration": "40s", "hp_rate": 100, "hp_rate_end": 300, "lp": "bursts", "burst_on": "5s", "burst_off": "10s"},
        {"duration": "20s", "hp_rate": 0, "lp": "idle"}]}, source="test")
    cut = ramp.until(30)
    assert cut.duration_seconds == 30
    assert len(cut.phases) == 2
    for t in (0, 9.5, 10, 17, 25, 29.9):  # the same load at every moment it keeps
        assert cut.hp_rate_at(t) == pytest.approx(ramp.hp_rate_at(t))
        assert cut.lp_mode_at(t) == ramp.lp_mode_at(t)
    assert cut.phases[1].hp_rate_end == pytest.approx(200)
    assert ramp.until(500) == ramp
    with pytest.raises(ValueError, match="> 0"):
        ramp.until(0)


def test_pieces_cut_every_phase_at_its_boundaries_and_at_most_the_given_length() -> None:
    schedule = BUILTIN_SCHEDULES["hp-steps"]
    cut = schedule.pieces(15)
    assert cut[0][0] == 0 and cut[-1][1] == schedule.duration_seconds
    assert all(a[1] == b[0] for a, b in zip(cut, cut[1:]))  # no gap, no overlap
    assert all(0 < end - start <= 15 for start, end, _ in cut)
    assert {start for start, _, _ in cut} >= set(schedule.boundaries)
    assert all(schedule.phases[schedule.phase_index_at(start)] is phase for start, _, phase in cut)


class _StallOnce(SimBackend):
    """The simulator with one host stall: the first run of the probe at ``level`` plays with LP unthrottled
    (level 1), while everything the run records keeps the level it was asked for, as on a host that stalled.
    Not ``repeatable`` unless asked: a rerun comes out differently, as on a real host."""

    def __init__(self, config: SimConfig, level: float | None, *, repeatable: bool = False) -> None:
        super().__init__(config)
        self.level, self.stalled, self.repeatable = level, False, repeatable

    def run_scenario(self, spec: ScenarioSpec, **kwargs: Any) -> ScenarioRun:
        if spec.kind == "probe" and spec.level == self.level and not self.stalled:
            self.stalled, spec = True, dataclasses.replace(spec, level=1.0)
        return super().run_scenario(spec, **kwargs)


def _dynamic_run(out: Path, stall_level: float | None, *, repeatable: bool = False) -> pd.DataFrame:
    base, _ = load_base_slo(None)
    schedule = BUILTIN_SCHEDULES["lp-step"].scaled(0.5)
    plan = plan_scenarios("dynamic", PlanConfig(duration_seconds=schedule.duration_seconds, schedule=schedule))
    summary = run_plan(plan, _StallOnce(SimConfig(base_slo=base), stall_level, repeatable=repeatable),
                       RunConfig(out, TargetSetting(10.0, "given"), pause_seconds=0, report_each_scenario=False),
                       Quiet())
    assert summary is not None
    return summary


def test_a_probe_spoiled_by_a_host_stall_is_run_again_and_the_oracle_is_the_one_without_it_unless_runs_repeat(
    tmp_path: Path,
) -> None:
    clean = _dynamic_run(tmp_path / "clean", None)
    probes = json.loads((tmp_path / "clean" / "oracle.json").read_text())["probes"]
    stall = min(p["attainment"] for p in probes)  # what level 1 attains: the stalled run's attainment
    # A probe that met the target after a higher level had met it in more than 10 points more intervals than
    # the stall leaves: stalled, it disagrees with that level.
    spoilable = [p["level"] for i, p in enumerate(probes) if p["meets"] and p["level"] > 0 and any(
        q["level"] > p["level"] and q["attainment"] > stall + LEVEL_DISAGREEMENT for q in probes[:i])]
    assert spoilable, probes  # the plant must give the bisection such a probe, or this test shows nothing
    level = spoilable[0]

    stalled = _dynamic_run(tmp_path / "stalled", level)
    rows = stalled[stalled["level"] == level].set_index("kind")
    assert rows.loc[SUPERSEDED, "slo_attainment"] == pytest.approx(stall)
    assert rows.loc["probe", "slo_attainment"] >= ORACLE_ATTAINMENT
    assert len(json.loads((tmp_path / "stalled" / "oracle.json").read_text())["probes"]) == len(probes) + 1
    oracle = [frame.set_index("scenario").loc["oracle", ["level", "lp_mbps"]].tolist() for frame in (clean, stalled)]
    assert oracle[0] == oracle[1]
    report = (tmp_path / "stalled" / "report.md").read_text()
    assert "the fixed levels disagree" not in report
    first, rerun = rows.loc[SUPERSEDED, "scenario"], rows.loc["probe", "scenario"]
    assert f"**Note: a probe of the oracle was run again.** {first} (level {level:.3g}) met the target in" in report
    assert f"the same level ran again as {rerun} (" in report
    # --report-only reads the superseded run back as such.
    written = pd.read_csv(tmp_path / "stalled" / "summary.csv")
    (tmp_path / "stalled" / "summary.csv").unlink()
    assert CliRunner().invoke(_run_command, ["--report-only", "--output", str(tmp_path / "stalled")]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "stalled" / "summary.csv"), written)

    # On a repeatable backend (the plain simulator) a rerun would repeat the stall: none is run, and the
    # report warns that the fixed levels disagree instead.
    kept = _dynamic_run(tmp_path / "repeatable", level, repeatable=True)
    assert SUPERSEDED not in set(kept["kind"])
    levels = [p["level"] for p in json.loads((tmp_path / "repeatable" / "oracle.json").read_text())["probes"]]
    assert level in levels and len(set(levels)) == len(levels)
    report = (tmp_path / "repeatable" / "report.md").read_text()
    assert "a probe of the oracle was run again" not in report and "the fixed levels disagree" in report


class _LpSeriesLost(SimBackend):
    """The simulator whose LP byte series comes back empty for every oracle probe, as when the writer's
    exporter was not scraped: each probe's LP is unknown (NaN)."""

    def export(self, run: ScenarioRun) -> Export:
        found = super().export(run)
        if not run.name.startswith("oracle-"):
            return found
        return dataclasses.replace(found, series=found.series.assign(lp_bytes_per_second=math.nan))


def test_probes_without_an_lp_series_still_give_a_strict_json_oracle_record(tmp_path: Path) -> None:
    base, _ = load_base_slo(None)
    schedule = BUILTIN_SCHEDULES["lp-step"].scaled(0.5)
    plan = plan_scenarios("dynamic", PlanConfig(duration_seconds=schedule.duration_seconds, schedule=schedule))
    run_plan(plan, _LpSeriesLost(SimConfig(base_slo=base)),
             RunConfig(tmp_path, TargetSetting(10.0, "given"), pause_seconds=0, report_each_scenario=False), Quiet())
    record = json.loads((tmp_path / "oracle.json").read_text())  # json.loads takes NaN; the file must not hold it
    assert "NaN" not in (tmp_path / "oracle.json").read_text()
    assert record["probes"] and all(p["lp_bytes_per_second"] is None for p in record["probes"])
