"""The LP batch job: pre-written data, no I/O before the start signal, counters on /metrics, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from experiments.prometheus_server import free_port
from experiments.workloads.direct_io import backing_device
from experiments.workloads.lp_batch import BatchConfig, PreparationStopped, main, parse_size, prepare_file
from tests.experiments.test_workloads_support import Workload, run_workload, scrape
from tests.experiments.test_workloads_support import scratch  # noqa: F401  (fixture)

SMALL = ("--file-size", "16M", "--block-size", "256K", "--workers", "2")


@pytest.mark.parametrize(
    "text, size",
    [("4096", 4096), ("1M", 1 << 20), ("256k", 256 << 10), ("1G", 1 << 30), ("2MiB", 2 << 20)],
    ids=["bytes", "mebi", "lower-case", "gibi", "with-iB"],
)
def test_sizes_take_k_m_g_as_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_size_says_what_it_got() -> None:
    with pytest.raises(ValueError, match=r"not a size: '1T'"):
        parse_size("1T")


def test_a_bad_config_reports_every_problem_at_once(scratch: Path) -> None:
    with pytest.raises(ValueError) as info:
        BatchConfig(scratch, "copy", 0, 1000, 4096, -1.0)  # type: ignore[arg-type]
    for problem in ("mode must be read, write or mixed", "workers must be >= 1",
                    "block size must be a positive multiple of 4096", "duration must be > 0"):
        assert problem in str(info.value)


def test_the_data_file_is_written_in_full_and_reused_when_complete(scratch: Path) -> None:
    path = scratch / "lp.dat"
    assert prepare_file(path, 4 << 20) is True
    st = path.stat()
    assert st.st_size == 4 << 20 and st.st_blocks * 512 >= 4 << 20
    assert path.read_bytes()[:4096] != bytes(4096)  # real data, not zeros a layer below could skip
    assert prepare_file(path, 4 << 20) is False


def test_a_sparse_file_of_the_right_size_is_rewritten(scratch: Path) -> None:
    path = scratch / "lp.dat"
    prepare_file(path, 4 << 20)
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(4 << 20)  # right size, no blocks: writing into it would allocate outside the cgroup
    assert prepare_file(path, 4 << 20) is True
    assert path.stat().st_blocks * 512 >= 4 << 20


def test_a_stop_during_preparation_leaves_no_complete_marker_and_a_later_run_rewrites(scratch: Path) -> None:
    path = scratch / "lp.dat"
    stop = threading.Event()
    stop.set()
    with pytest.raises(PreparationStopped, match="stopped after 0 of"):
        prepare_file(path, 16 << 20, stop=stop)
    assert not path.with_name("lp.dat.complete").exists()
    assert prepare_file(path, 16 << 20) is True


def _io_bytes(pid: int) -> tuple[int, int]:
    """read_bytes, write_bytes of a process as the block layer counted them (O_DIRECT included)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["read_bytes"]), int(fields["write_bytes"])


def _ops(metrics_url: str) -> dict[str, float]:
    samples = scrape(metrics_url)
    return {op: samples[("batch_io_operations_total", (("op", op),))] for op in ("read", "write")}


def _wait_for_ops(job: Workload, metrics_url: str, ops: tuple[str, ...]) -> dict[str, float]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = _ops(metrics_url)
        if all(counts[op] > 0 for op in ops):
            return counts
        assert job.proc.poll() is None, f"lp_batch exited with {job.proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"no {ops} operations within 20 s: {_ops(metrics_url)}")


def test_no_io_before_the_start_signal_then_counters_on_metrics_and_a_clean_sigterm(scratch: Path) -> None:
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with run_workload("lp_batch", "--data-dir", str(scratch), "--port", str(port), "--mode", "mixed", *SMALL) as job:
        prepared = job.wait_for_event("prepared")
        assert prepared["state"] == "waiting for start" and prepared["pid"] == job.proc.pid
        assert prepared["device"] == backing_device(scratch)  # the device to throttle, for the orchestrator
        io_before = _io_bytes(job.proc.pid)
        time.sleep(0.5)  # a window in which a job that ignored the pause would have done I/O
        assert _ops(metrics_url) == {"read": 0, "write": 0}
        assert _io_bytes(job.proc.pid) == io_before

        job.proc.send_signal(signal.SIGUSR1)
        counts = _wait_for_ops(job, metrics_url, ("read", "write"))
        samples = scrape(metrics_url)
        assert samples[("batch_io_bytes_total", (("op", "read"),))] >= counts["read"] * (256 << 10)
        assert samples[("batch_io_latency_seconds_count", (("op", "write"),))] >= 1
        assert ("batch_active_operations", ()) in samples
        read_bytes, write_bytes = _io_bytes(job.proc.pid)
        assert read_bytes > io_before[0] and write_bytes > io_before[1]

        job.proc.send_signal(signal.SIGTERM)
        assert job.proc.wait(timeout=15) == 0
        moved = job.wait_for_event("stopped", timeout_seconds=5)["bytes"]
        assert isinstance(moved, dict) and moved["read"] > 0


def test_a_start_line_on_stdin_starts_it_and_the_duration_ends_it(scratch: Path) -> None:
    port = free_port()
    args = ("--data-dir", str(scratch), "--port", str(port), "--mode", "read", "--duration", "0.5", *SMALL)
    with run_workload("lp_batch", *args, stdin=subprocess.PIPE) as job:
        job.wait_for_event("prepared")
        assert job.proc.stdin is not None
        job.proc.stdin.write("start\n")
        job.proc.stdin.flush()
        stopped = job.wait_for_event("stopped")
        assert job.proc.wait(timeout=15) == 0
    moved = stopped["bytes"]
    assert isinstance(moved, dict) and moved["write"] == 0 and moved["read"] > 0


def test_sigterm_while_waiting_for_start_exits_cleanly_without_io(scratch: Path) -> None:
    with run_workload("lp_batch", "--data-dir", str(scratch), "--port", str(free_port()), *SMALL) as job:
        job.wait_for_event("prepared")
        job.proc.send_signal(signal.SIGTERM)
        assert job.proc.wait(timeout=15) == 0
        assert job.wait_for_event("stopped")["bytes"] == {"read": 0, "write": 0}


def test_prepare_only_writes_the_file_and_exits(scratch: Path) -> None:
    with run_workload("lp_batch", "--data-dir", str(scratch), "--prepare-only", *SMALL) as job:
        assert job.wait_for_event("prepared")["written"] is True
        assert job.proc.wait(timeout=15) == 0
    assert (scratch / "lp-batch.dat").stat().st_size == 16 << 20
    assert os.path.exists(scratch / "lp-batch.dat.complete")


# --------------------------------------------------------------------------- following a load schedule


def test_the_job_follows_a_schedules_lp_phases_from_the_start_signal(scratch: Path) -> None:
    """One real process: read, write, idle and mixed phases, measured from the job's own per-phase byte counts."""
    path = scratch / "schedule.yaml"
    path.write_text("name: lp-test\nphases:\n"
                    "  - {duration: 1.5s, hp_rate: 0, lp: read}\n"
                    "  - {duration: 1.5s, hp_rate: 0, lp: write}\n"
                    "  - {duration: 1.5s, hp_rate: 0, lp: idle}\n"
                    "  - {duration: 1.5s, hp_rate: 0, lp: mixed}\n")
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with run_workload("lp_batch", "--data-dir", str(scratch / "lp"), "--port", str(port), "--schedule", str(path),
                      "--duration", "6", *SMALL) as job:
        assert job.wait_for_event("prepared")["pid"] == job.proc.pid
        time.sleep(0.5)
        assert _ops(metrics_url) == {"read": 0, "write": 0}  # still paused: the schedule waits for the signal
        job.proc.send_signal(signal.SIGUSR1)
        stopped = job.wait_for_event("stopped", timeout_seconds=30)
        assert job.proc.wait(timeout=15) == 0
    assert stopped["schedule"] == "lp-test"
    phases = stopped["phases"]
    assert isinstance(phases, list) and [p["lp"] for p in phases] == ["read", "write", "idle", "mixed"]
    read, write, idle, mixed = (p["bytes"] for p in phases)
    # Each operation counts in the phase in which it started, so the split is exact, not a matter of timing.
    assert read["read"] > 0 and read["write"] == 0
    assert write["write"] > 0 and write["read"] == 0
    assert idle == {"read": 0, "write": 0}
    assert mixed["read"] > 0 and mixed["write"] > 0
    assert stopped["bytes"] == {op: sum(p["bytes"][op] for p in phases) for op in ("read", "write")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--mode", "read", "--schedule", "lp-phases"], "--mode or --schedule, not both", id="both"),
        pytest.param(["--schedule", "nope"], "neither a built-in schedule", id="unknown-schedule"),
    ],
)
def test_a_schedule_and_a_mode_together_or_an_unknown_schedule_exit_2(scratch: Path, args: list[str],
                                                                       message: str) -> None:
    run = CliRunner().invoke(main, ["--data-dir", str(scratch), "--port", str(free_port()), *args, *SMALL])
    assert run.exit_code == 2
    assert message in run.output
    assert not (scratch / "lp-batch.dat").exists()
