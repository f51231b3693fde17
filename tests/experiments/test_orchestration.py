"""Orchestration: the supervisor on real processes, the block scheduler switch on the kernel's own
file of an idle loop device, the plan, per-scenario SLOs, the prerequisite messages and the CLI's
answers to bad input."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from experiments.backends.host import SchedulerSwitch, pressure_notes, pressure_totals
from experiments.backends.local import LocalConfig, check_prerequisites
from experiments.backends.supervision import ProcessFailed, Supervisor
from experiments.model import BackendUnavailable
from experiments.cli import _run_command
from experiments.model import ScenarioSpec, SloWiring
from experiments.scenarios import PlanConfig, plan_scenarios
from experiments.schedules import load_schedule
from experiments.slo import load_base_slo, slo_document, validate_slo
from writer.cgroups import Hierarchy, SetupError
from tests.experiments.processes import alive


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


# --------------------------------------------------------------------------- supervisor


def test_supervisor_stops_a_whole_process_group_including_grandchildren(tmp_path: Path) -> None:
    sup = Supervisor(stop_timeout_seconds=5)
    proc = sup.start("tree", ["sh", "-c", "sleep 60 & sleep 60 & wait"], log_path=tmp_path / "tree.log")
    deadline = time.monotonic() + 5
    while len(_group_members(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = _group_members(proc.pid)
    assert len(members) == 3  # sh and its two sleeps, in the group the supervisor created
    sup.stop(proc)
    time.sleep(0.2)  # orphaned grandchildren are reaped by init
    assert [pid for pid in members if alive(pid)] == []
    assert sup.running == []


def test_supervisor_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    sup = Supervisor(stop_timeout_seconds=0.5)
    script = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = sup.start("stubborn", [sys.executable, "-c", script], log_path=tmp_path / "s.log")
    deadline = time.monotonic() + 10
    while "up" not in (tmp_path / "s.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sup.stop(proc) == -signal.SIGKILL
    assert not alive(proc.pid)


def test_supervisor_never_signals_the_group_of_a_process_it_already_reaped(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Its id is free once reaped: a later process may hold it. The kernel cannot be made to reuse an id on
    # demand, so the signals sent are recorded, and a process holding the id stands in for the reuse: while
    # /proc/<its pid> exists, the supervisor must leave that id alone.
    sup = Supervisor(stop_timeout_seconds=5)
    done = sup.start("setup", ["sh", "-c", "exit 0"], log_path=tmp_path / "setup.log", expect_exit=True)
    assert done.wait(timeout=5) == 0
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: True if str(self) == f"/proc/{done.pid}" else real_exists(self))
    running = sup.start("service", ["sleep", "60"], log_path=tmp_path / "service.log")
    signalled: list[int] = []
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        signalled.append(pgid)
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", killpg)
    sup.stop_all()
    assert done.pid not in signalled and running.pid in signalled
    assert sup.running == [] and not alive(running.pid)


def test_supervisor_still_kills_the_stragglers_of_a_process_it_reaped(tmp_path: Path) -> None:
    sup = Supervisor(stop_timeout_seconds=5)
    proc = sup.start("leaves-a-child", ["sh", "-c", f"sleep 60 & echo $! > {tmp_path / 'child'}; exit 0"],
                     log_path=tmp_path / "l.log", expect_exit=True)
    assert proc.wait(timeout=5) == 0
    child = int((tmp_path / "child").read_text())
    assert alive(child) and _group_members(proc.pid) == [child]
    sup.stop_all()
    time.sleep(0.2)
    assert not alive(child)


def test_supervisor_reports_an_unexpected_exit_with_the_log_tail(tmp_path: Path) -> None:
    sup = Supervisor()
    proc = sup.start("crasher", ["sh", "-c", "echo 'cannot open the store' >&2; exit 3"], log_path=tmp_path / "c.log")
    proc.wait(timeout=5)
    with pytest.raises(ProcessFailed, match=r"(?s)crasher .* exited with status 3.*cannot open the store"):
        sup.check()
    sup.stop_all()


def test_supervisor_accepts_a_clean_exit_of_a_process_expected_to_finish(tmp_path: Path) -> None:
    sup = Supervisor()
    proc = sup.start("oneshot", ["true"], log_path=tmp_path / "o.log", expect_exit=True)
    proc.wait(timeout=5)
    sup.check()
    sup.stop_all()
    assert sup.started_pids == [proc.pid]


def test_stop_all_stops_everything_started(tmp_path: Path) -> None:
    sup = Supervisor(stop_timeout_seconds=5)
    procs = [sup.start(f"p{i}", ["sleep", "60"], log_path=tmp_path / f"{i}.log") for i in range(3)]
    sup.stop_all()
    assert [p.pid for p in procs if alive(p.pid)] == []


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProcessFailed, match="cannot start ghost"):
        Supervisor().start("ghost", [str(tmp_path / "no-such-binary")], log_path=tmp_path / "g.log")


# --------------------------------------------------------------------------- scheduler switch


def _idle_loop_device() -> str | None:
    """A loop device with nothing attached (size 0) whose scheduler root can switch, else None."""
    for scheduler in sorted(Path("/sys/block").glob("loop*/queue/scheduler")):
        disk = scheduler.parent.parent
        try:
            idle = (disk / "size").read_text().strip() == "0"
        except OSError:
            continue
        if idle and os.geteuid() == 0 and len(SchedulerSwitch(disk.name).available()) > 1:
            return disk.name
    return None


IDLE_LOOP = _idle_loop_device()
needs_idle_loop = pytest.mark.skipif(
    IDLE_LOOP is None, reason="needs root and a loop device with nothing attached, to switch a real block scheduler")


@pytest.fixture
def idle_loop() -> Iterator[SchedulerSwitch]:
    """The real scheduler file of an idle loop device; whatever a test does, its scheduler is put back."""
    assert IDLE_LOOP is not None
    switch = SchedulerSwitch(IDLE_LOOP)
    before = switch.active()
    assert before is not None
    yield switch
    if switch.active() != before:
        switch.path.write_text(before)


@needs_idle_loop
def test_scheduler_switch_restores_the_previous_scheduler(idle_loop: SchedulerSwitch) -> None:
    before = idle_loop.active()
    other = next(name for name in idle_loop.available() if name != before)
    idle_loop.switch(other)
    assert idle_loop.active() == other  # the kernel's own "[name]" marker
    idle_loop.switch(other)  # switching again to what is in force keeps the first scheduler to restore
    assert idle_loop.previous == before
    idle_loop.restore()
    assert idle_loop.active() == before
    assert idle_loop.previous is None


@needs_idle_loop
def test_scheduler_switch_refuses_an_unavailable_scheduler(idle_loop: SchedulerSwitch) -> None:
    before = idle_loop.path.read_text()
    # cfq left the kernel in 5.0 (blk-mq only since): a disk that lists it cannot be asked for here.
    assert "cfq" not in idle_loop.available()
    with pytest.raises(BackendUnavailable, match="'cfq' is not available"):
        idle_loop.switch("cfq")
    assert idle_loop.path.read_text() == before
    assert idle_loop.previous is None


# --------------------------------------------------------------------------- prerequisites


def test_not_root_says_so_and_names_the_backend_that_could_run() -> None:
    with pytest.raises(BackendUnavailable) as err:
        check_prerequisites(LocalConfig(), euid=lambda: 1000)
    assert "needs root (running as uid 1000)" in err.value.missing
    assert "`run-experiment --backend sim`" in err.value.alternative and "later" not in err.value.alternative


def test_no_cgroup_io_controller_says_what_is_missing() -> None:
    def no_io(root: str) -> Hierarchy:
        raise SetupError("no cgroup I/O controller found: need a cgroup v2 mount whose cgroup.controllers lists 'io'")

    with pytest.raises(BackendUnavailable) as err:
        check_prerequisites(LocalConfig(), euid=lambda: 0, detect=no_io, prometheus=lambda: "/usr/bin/prometheus")
    assert "no cgroup I/O control on this machine" in err.value.missing
    assert "--backend sim" in err.value.alternative


def test_a_scheduler_the_work_disk_lacks_is_found_before_anything_is_created(tmp_path: Path) -> None:
    # Checked with the other prerequisites, before the CLI empties an earlier run's output dir.
    # /var/tmp: on a real disk (the local backend's default work dir), where /tmp may be a tmpfs.
    config = LocalConfig(work_root=Path("/var/tmp"), needs_scheduler=("cfq",))  # cfq left the kernel in 5.0
    hierarchy = Hierarchy(version=2, root=tmp_path)
    with pytest.raises(BackendUnavailable) as err:
        check_prerequisites(config, euid=lambda: 0, detect=lambda root: hierarchy, prometheus=lambda: "/usr/bin/prometheus")
    assert "needs the cfq scheduler" in err.value.missing and "modprobe cfq" in err.value.alternative


def test_the_cli_exits_2_without_root_and_creates_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user with setpriv")
    tmp_path.chmod(0o777)
    out = tmp_path / "out"
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path)}
    script = Path(sys.executable).parent / "run-experiment"
    # The unprivileged user keeps CAP_DAC_READ_SEARCH (ambient, so it survives exec): a fresh clone in
    # root's home (mode 0700) is then still reachable, while the process is not root (euid 65534) and
    # cannot write anything it could not write anyway.
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", str(script),
                             "--scenario", "baseline", "--output", str(out)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "needs root" in result.stderr and "sim" in result.stderr
    assert not out.exists()


def test_the_cli_exits_2_when_the_cgroup_root_has_no_io_control(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("as non-root the root check answers first (covered above)")
    empty = tmp_path / "not-a-cgroup"
    empty.mkdir()
    result = CliRunner().invoke(_run_command, ["--scenario", "baseline", "--cgroup-root", str(empty),
                                               "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no cgroup I/O control" in result.output and "sim" in result.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--target", "banana"], "banana", id="target-not-a-duration"),
        pytest.param(["--duration", "10", "--warmup", "20"], "warm-up (20 s) must be shorter", id="warmup-too-long"),
        pytest.param(["--lp-file-size", "lots"], "not a size", id="bad-lp-file-size"),
        pytest.param(["--lp-file-size", "1000"], "--lp-file-size 1000: bad LP batch config: file size", id="lp-file-unaligned"),
        pytest.param(["--lp-file-size", "64K"], "must be >= block size", id="lp-file-below-a-block"),
        pytest.param(["--drcio-after"], "--drcio-after is only for --scenario dynamic", id="drcio-after-not-dynamic"),
    ],
)
def test_bad_options_exit_2_with_the_reason_and_create_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(_run_command, [*args, "--output", str(out)])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")
    assert not out.exists()


def test_a_bad_slo_file_is_reported_with_file_and_field(tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    doc, _ = load_base_slo(None)
    doc["slos"][0]["policy"] = {"kind": "pid", "kq": 1}
    doc["slos"][0]["throttle"]["rbps"] = {"min": "lots"}
    slo.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(_run_command, ["--slo", str(slo), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    text = result.output.replace("\n", " ")
    assert str(slo) in text and "kq" in text and "rbps" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["fast", 0.005], ids=["not-a-duration", "a-bare-number"])
def test_a_bad_target_in_the_slo_file_is_reported_with_file_and_field(tmp_path: Path, target: object) -> None:
    slo = tmp_path / "slo.yaml"
    doc, _ = load_base_slo(None)
    doc["slos"][0]["target"] = target
    slo.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(_run_command, ["--slo", str(slo), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{slo}: slos[0].target:" in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_an_slo_file_without_slos_is_refused(tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text("interval: 1s\n")
    result = CliRunner().invoke(_run_command, ["--slo", str(slo), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "needs a 'slos' list" in result.output


def test_a_run_into_an_earlier_runs_dir_leaves_none_of_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sim = ["--backend", "sim", "--target", "10ms", "--output", str(out)]
    first = CliRunner().invoke(_run_command, [*sim, "--scenario", "dynamic", "--schedule", "lp-step",
                                              "--schedule-scale", "0.2", "--warmup", "2", "--oracle-probes", "2"])
    assert first.exit_code == 0, first.output
    assert (out / "oracle.json").exists()
    second = CliRunner().invoke(_run_command, [*sim, "--scenario", "contention", "--duration", "10"])
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in out.glob("*.json")) == ["run.json"]  # no oracle.json claiming an oracle ran
    assert sorted(p.name for p in out.glob("*.csv")) == ["contention.csv", "summary.csv"]
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["contention"]


@pytest.mark.parametrize("damage", ["run.json emptied", "a scenario's CSV deleted"])
def test_report_only_on_a_damaged_run_exits_2_saying_what_it_could_not_read(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "out"
    run = CliRunner().invoke(_run_command, ["--backend", "sim", "--target", "10ms", "--output", str(out),
                                            "--scenario", "contention", "--duration", "10"])
    assert run.exit_code == 0, run.output
    if damage == "run.json emptied":
        (out / "run.json").write_text("")
    else:
        (out / "contention.csv").unlink()
    report = (out / "report.md").read_text()
    result = CliRunner().invoke(_run_command, ["--report-only", "--output", str(out)])
    assert result.exit_code == 2
    assert f"cannot read the run in {out}" in result.output.replace("\n", "")
    assert (out / "report.md").read_text() == report


def test_a_non_empty_output_dir_that_is_not_a_run_is_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    result = CliRunner().invoke(_run_command, ["--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no earlier run" in result.output.replace("\n", " ")
    assert precious.read_text() == "mine"


# --------------------------------------------------------------------------- plan and SLOs


def test_all_runs_baseline_contention_static_max_an_8_level_sweep_the_bisected_oracle_and_drcio() -> None:
    plan = plan_scenarios("all", PlanConfig(duration_seconds=40))
    assert [s.name for s in plan] == ["baseline", "contention", "static-max",
                                      *[f"sweep-{i}" for i in range(8)], "oracle", "drcio", "baseline-end"]
    # The oracle's probes as long as drcio's run, held to the same share over as many intervals.
    assert [s.duration_seconds for s in plan if s.kind in ("oracle", "drcio")] == [40.0, 40.0]
    levels = [s.level for s in plan if s.kind == "sweep"]
    assert levels == pytest.approx([i / 7 for i in range(8)])
    assert {s.duration_seconds for s in plan if s.kind == "sweep"} == {20.0}
    assert [s.name for s in plan if not s.controlled] == ["baseline", "contention", "baseline-end"]
    assert [s.name for s in plan if not s.lp] == ["baseline", "baseline-end"]
    assert plan[0].duration_seconds == plan[-1].duration_seconds == 40.0 and plan[-1].kind == "baseline"


def test_a_dynamic_run_with_a_baseline_ends_with_hp_alone_again_and_one_without_does_not() -> None:
    schedule = load_schedule("hp-steps")
    with_baseline = plan_scenarios("dynamic", PlanConfig(schedule=schedule), need_baseline=True)
    assert [s.name for s in with_baseline] == ["baseline", "dynamic-hp-steps", "oracle", "baseline-end"]
    assert [s.name for s in plan_scenarios("dynamic", PlanConfig(schedule=schedule))] == ["dynamic-hp-steps", "oracle"]
    # HP alone under the same load: both baselines play the schedule (LP off), for as long as it lasts.
    for spec in (with_baseline[0], with_baseline[-1]):
        assert spec.schedule is schedule and not spec.lp and not spec.controlled
        assert spec.duration_seconds == schedule.duration_seconds == 190.0


def test_drcio_after_runs_the_schedule_again_after_the_oracle_before_the_closing_baseline() -> None:
    schedule = load_schedule("lp-phases")
    plan = plan_scenarios("dynamic", PlanConfig(schedule=schedule, drcio_after=True), need_baseline=True)
    assert [s.name for s in plan] == ["baseline", "dynamic-lp-phases", "oracle", "dynamic-lp-phases-after",
                                      "baseline-end"]
    first, again = plan[1], plan[3]
    assert again == dataclasses.replace(first, name="dynamic-lp-phases-after")


def test_an_automatic_target_puts_a_baseline_first() -> None:
    assert [s.name for s in plan_scenarios("drcio", PlanConfig(), need_baseline=True)] == ["baseline", "drcio"]
    assert [s.name for s in plan_scenarios("drcio", PlanConfig())] == ["drcio"]


def test_static_weight_asks_for_bfq() -> None:
    (spec,) = plan_scenarios("static-weight", PlanConfig())
    assert spec.scheduler == "bfq" and spec.lp and spec.controlled


WIRING = SloWiring("http://127.0.0.1:19090", "http://127.0.0.1:19100", Path("/tmp/token"), "hp-gnn", ["254:0"])


def _doc(kind: str, level: float | None = None) -> dict[str, Any]:
    base, _ = load_base_slo(None)
    spec = ScenarioSpec(kind, kind, 10, 1, lp=True, controlled=True, level=level)  # type: ignore[arg-type]
    doc = slo_document(spec, base, target_ms=12.5, wiring=WIRING)
    validate_slo(doc, kind)  # the controller's own loader accepts it
    return doc


def test_a_sweep_step_is_a_static_level_over_the_same_throttle_range_as_drcio() -> None:
    drcio, sweep = _doc("drcio"), _doc("sweep", 3 / 7)
    d_slo, s_slo = drcio["slos"][0], sweep["slos"][0]
    assert s_slo["throttle"] == d_slo["throttle"]
    assert s_slo["policy"] == {"kind": "static", "level": pytest.approx(3 / 7)}
    assert d_slo["policy"]["kind"] in ("pid", "aimd")
    assert d_slo["target"] == "12.5ms"


def test_static_max_is_a_fixed_200m_read_50m_write_limit() -> None:
    (slo,) = _doc("static-max")["slos"]
    assert slo["policy"] == {"kind": "static", "level": 1.0}
    assert slo["throttle"]["rbps"] == {"min": "200M", "max": "200M"}
    assert slo["throttle"]["wbps"] == {"min": "50M", "max": "50M"}


def test_static_weight_sets_a_low_lp_weight_and_no_limit() -> None:
    (lp,) = _doc("static-weight")["slos"]
    assert lp["throttle"]["weight"] == {"min": 10, "max": 10}
    assert not {"rbps", "wbps", "riops", "wiops"} & set(lp["throttle"])


def test_the_wiring_replaces_whatever_the_users_slo_file_says(tmp_path: Path) -> None:
    base, _ = load_base_slo(None)
    base["prometheus"] = {"url": "http://prometheus.monitoring:9090"}
    base["writers"] = {"kubernetes": {"namespace": "x"}}
    base["slos"][0]["labels"] = {"job": "prod"}
    base["slos"][0]["throttle"]["selector"] = {"app": "batch"}
    doc = slo_document(ScenarioSpec("drcio", "drcio", 10, 1, lp=True, controlled=True), base,
                       target_ms=5, wiring=WIRING)
    validate_slo(doc, "user")
    assert doc["prometheus"]["url"] == WIRING.prometheus_url
    assert doc["writers"] == {"static": [WIRING.writer_url]}
    assert doc["token_file"] == "/tmp/token"
    assert doc["slos"][0]["labels"] == {"job": "hp-gnn"}
    assert doc["slos"][0]["throttle"]["selector"] == {"group-id": "lp"}
    assert doc["slos"][0]["throttle"]["devices"] == ["254:0"]


# --------------------------------------------------------------------------- host pressure


def test_pressure_notes_give_the_share_of_time_stalled_per_resource(tmp_path: Path) -> None:
    (tmp_path / "pressure").mkdir()

    def write(io_us: int, cpu_us: int) -> None:
        for name, total in (("io", io_us), ("cpu", cpu_us)):
            (tmp_path / "pressure" / name).write_text(
                f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"
                f"full avg10=0.00 avg60=0.00 avg300=0.00 total={total // 2}\n")

    write(1_000_000, 0)
    before = pressure_totals(tmp_path)
    write(3_000_000, 5_000_000)  # +2 s of I/O stall, +5 s of CPU stall
    notes = pressure_notes(before, pressure_totals(tmp_path), 10.0)
    assert notes == {"io_pressure_pct": "20.0", "cpu_pressure_pct": "50.0"}


def test_no_psi_means_no_pressure_notes(tmp_path: Path) -> None:
    assert pressure_totals(tmp_path) == {}
    assert pressure_notes({}, {}, 10.0) == {}
