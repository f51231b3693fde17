"""Load schedules: the YAML format, its errors, the built-ins, and what a schedule says at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from experiments.cli import _run_command
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


def test_dynamic_on_the_sim_runs_the_schedule_and_bisects_its_oracle(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(_run_command, ["--backend", "sim", "--scenario", "dynamic", "--schedule", "lp-step",
                                               "--target", "10ms", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "dynamic-lp-step.csv").exists() and (out / "oracle.json").exists()
    report = (out / "report.md").read_text()
    assert "dynamic-lp-step: drcio moved" in report and "bisection: oracle-" in report


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
    assert s.mean_hp_rate() == pytest.approx((1000 + 1000) / 20)
    assert s.mean_hp_rate(15) == pytest.approx((1000 + 5 * 50) / 15)
    assert s.mean_hp_rate(30) == pytest.approx((1000 + 1000 + 2000) / 30)  # the last phase holds at its end rate
    assert s.peak_hp_rate == 200 and not s.writes
