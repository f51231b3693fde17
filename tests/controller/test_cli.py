"""drcio-controller as a user runs it: a real subprocess, the design's example, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.controller.conftest import LP_CGROUP, RecordedWriter

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "slo.yaml"
CLI = [sys.executable, "-c", "from controller.cli import main; main()"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def write_config(tmp_path: Path, writer_url: str, **changes: Any) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    raw["writers"] = {"static": [writer_url], "token_file": str(token), "timeout": "1s"}
    raw["prometheus"] = {"url": "http://127.0.0.1:1", "timeout": "500ms"}  # nothing listens on port 1
    raw.update(changes)
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_once_dry_run_on_the_design_example_prints_one_record_per_slo_and_exits_0(tmp_path: Path) -> None:
    # The design's example as written but for its Prometheus (127.0.0.1:9090 may be anything on a
    # given host): nothing listens on port 1, so the record says sensor_error, and nothing is pushed.
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["prometheus"]["url"] = "http://127.0.0.1:1"
    config = tmp_path / "slo.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = run("--config", str(config), "--once", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["slo"] == "gnn-p95" and rec["status"] == "sensor_error"
    assert "unreachable" in rec["error"], rec["error"]
    assert rec["target_seconds"] == 0.1
    assert rec["latency_seconds"] is None
    assert 0.0 <= rec["level"] <= 1.0
    assert set(rec["targets"]["lp"]["io_max"]) == {"rbps", "wbps", "riops", "wiops"}
    assert rec["targets"]["lp"]["io_weight"] is not None
    assert rec["dry_run"] is True and "push" not in rec


def test_once_without_dry_run_pushes_and_adds_the_push_results(tmp_path: Path, recorded_writer: RecordedWriter) -> None:
    proc = run("--config", str(write_config(tmp_path, recorded_writer.url)), "--once")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    (push,) = rec["push"]
    assert push["outcome"] == "ok" and push["writer"] == recorded_writer.url and push["node"] == "node-a"
    assert [(c["group"], c["outcome"]) for c in push["cgroups"]] == [("lp", "applied")]
    assert len(recorded_writer.bodies) == 1
    assert recorded_writer.headers[0]["Authorization"] == "Bearer s3cret"  # from token_file
    # The targets the record shows are the ones in force on the LP cgroup of the writer's tree.
    io_max = rec["targets"]["lp"]["io_max"]
    in_force = " ".join(f"{k}={'max' if io_max[k] is None else io_max[k]}" for k in ("rbps", "wbps", "riops", "wiops"))
    assert recorded_writer.lp_io_max() == f"254:0 {in_force}"
    assert recorded_writer.tree.read(LP_CGROUP, "io.weight").splitlines()[-1] == f"default {rec['targets']['lp']['io_weight']}"


def test_mode_dry_run_in_the_file_pushes_nothing(tmp_path: Path, recorded_writer: RecordedWriter) -> None:
    before = recorded_writer.tree.snapshot()
    proc = run("--config", str(write_config(tmp_path, recorded_writer.url, mode="dry-run")), "--once")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dry_run"] is True
    assert recorded_writer.bodies == []
    assert recorded_writer.tree.snapshot() == before and recorded_writer.lp_io_max() == ""


def test_a_malformed_slo_file_exits_2_with_the_reason_and_pushes_nothing(tmp_path: Path, recorded_writer: RecordedWriter) -> None:
    path = write_config(tmp_path, recorded_writer.url)
    raw = yaml.safe_load(path.read_text())
    raw["slos"][0]["target"] = "fast"
    path.write_text(yaml.safe_dump(raw))
    proc = run("--config", str(path), "--once")
    assert proc.returncode == 2
    assert f"{path}: slos[0] (gnn-p95) -> target:" in proc.stderr
    assert proc.stdout == "" and recorded_writer.bodies == []


def test_broken_yaml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("slos: [\n")
    proc = run("--config", str(path), "--once")
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr


def test_an_unreadable_token_file_exits_2(tmp_path: Path, recorded_writer: RecordedWriter) -> None:
    path = write_config(tmp_path, recorded_writer.url)
    (tmp_path / "token").unlink()
    proc = run("--config", str(path), "--once")
    assert proc.returncode == 2 and "token_file" in proc.stderr
    assert recorded_writer.bodies == []


def test_bad_arguments_exit_2() -> None:
    assert run("--no-such-flag").returncode == 2
    assert run("--config", str(EXAMPLE), "--metrics-listen", "nonsense").returncode == 2


def test_help_documents_every_option() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for option in ("--config", "--once", "--dry-run", "--metrics-listen", "--decision-log", "--max-ticks", "--log-level"):
        assert option in proc.stdout
    # export-rules is dispatched by hand in main(), so only the epilog tells a user it exists.
    assert "drcio-controller export-rules --help" in proc.stdout


def test_the_decision_log_keeps_the_same_record_as_once_prints(tmp_path: Path, recorded_writer: RecordedWriter) -> None:
    log = tmp_path / "decisions.jsonl"
    proc = run("--config", str(write_config(tmp_path, recorded_writer.url)), "--once", "--decision-log", str(log))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(log.read_text()) == json.loads(proc.stdout)
    assert json.loads(proc.stdout)["push"][0]["outcome"] == "ok"  # the record holds the writer's real answer


def test_two_sharded_replicas_push_each_writer_exactly_once(
    tmp_path: Path, recorded_writer: RecordedWriter, dead_writer: str
) -> None:
    # Two writers, two replicas: whichever replica owns a writer pushes to it, the other leaves it alone.
    path = write_config(tmp_path, recorded_writer.url)
    raw = yaml.safe_load(path.read_text())
    raw["writers"]["static"] = [recorded_writer.url, dead_writer]
    path.write_text(yaml.safe_dump(raw))
    pushed: dict[str, int] = {}
    outcomes: dict[str, str] = {}
    for k in range(2):
        proc = run("--config", str(path), "--once", "--shards", "2", "--shard-index", str(k))
        assert proc.returncode == 0, proc.stderr
        for p in json.loads(proc.stdout)["push"]:
            pushed[p["writer"]] = pushed.get(p["writer"], 0) + 1
            outcomes[p["writer"]] = p["outcome"]
    assert pushed == {recorded_writer.url: 1, dead_writer: 1}
    assert outcomes == {recorded_writer.url: "ok", dead_writer: "unreachable"}
    assert len(recorded_writer.bodies) == 1 and recorded_writer.pushes("accepted") == 1


def test_a_shard_index_outside_the_replicas_exits_2() -> None:
    proc = run("--config", str(EXAMPLE), "--once", "--dry-run", "--shards", "2", "--shard-index", "2")
    assert proc.returncode == 2
    assert "--shard-index" in proc.stderr and "below --shards (2)" in proc.stderr


def test_once_starts_from_the_level_its_writer_holds(tmp_path: Path, recorded_writer: RecordedWriter) -> None:
    from tests.controller.test_take_over import leave_level_in_force

    leave_level_in_force(recorded_writer, 0.35)  # the controller before this one (a restart)
    proc = run("--config", str(write_config(tmp_path, recorded_writer.url)), "--once", "--log-level", "info")
    assert proc.returncode == 0, proc.stderr
    # Prometheus is unreachable, so the policy holds where it starts: the writer's 0.35, not the fail-safe 0.2.
    rec = json.loads(proc.stdout)
    assert rec["status"] == "sensor_error" and rec["level"] == 0.35
    assert recorded_writer.bodies[-1]["groups"][0]["level"] == 0.35
    assert "taking over: policies start at gnn-p95 0.350 (in force on 1 of 1 writer(s)" in proc.stderr
