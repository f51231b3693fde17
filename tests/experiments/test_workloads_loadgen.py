"""The open-loop load generator against deliberately slow (or silent) real loopback HTTP servers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from experiments.scenarios import read_client_csv
from experiments.schedules import load_schedule
from experiments.workloads.loadgen import CSV_COLUMNS, main, poisson_schedule, run_load, scheduled_arrivals
from tests.experiments.test_workloads_support import REPO
from tests.experiments.test_workloads_support import scratch  # noqa: F401  (fixture)


@dataclass
class SlowServer:
    url: str
    release: threading.Event  # set to let every held request answer at once
    received: list[float]  # monotonic arrival time of each request


@pytest.fixture
def slow_server(request: pytest.FixtureRequest) -> Iterator[SlowServer]:
    """A real HTTP server on loopback that answers each request after ``delay`` seconds
    (parametrize indirectly; ``None`` holds every request until the test ends)."""
    param = getattr(request, "param", 0.2)
    hang_up = param == "hang-up"  # answers at once, then closes the connection without saying so
    delay: float | None = 0.0 if hang_up else param
    release = threading.Event()
    received: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            received.append(time.monotonic())
            release.wait(timeout=30.0 if delay is None else delay)  # bounded even if a test forgets
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = hang_up

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that gave up (timeout, hard stop) closed its end: expected here

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SlowServer(f"http://127.0.0.1:{server.server_address[1]}/score", release, received)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_schedule_is_poisson_at_the_rate_and_reproducible_for_a_seed() -> None:
    times = poisson_schedule(1000.0, 10.0, seed=1, max_requests=None)
    assert times == poisson_schedule(1000.0, 10.0, seed=1, max_requests=None)
    assert times != poisson_schedule(1000.0, 10.0, seed=2, max_requests=None)
    assert abs(len(times) - 10_000) < 5 * 100  # Poisson: sd = sqrt(10 000)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0 <= t < 10.0 for t in times) and min(gaps) >= 0
    assert sum(g > 1 / 1000 for g in gaps) / len(gaps) == pytest.approx(0.368, abs=0.03)  # P(gap > mean) = 1/e


def test_requests_follow_the_schedule_not_the_response_time(slow_server: SlowServer) -> None:
    # 0.2 s per response, ~40 arrivals in one second: a closed-loop client on one connection could send only 5.
    result = run_load(slow_server.url, 40.0, 1.0, seed=3, max_in_flight=200, timeout_seconds=5.0)
    scheduled = poisson_schedule(40.0, 1.0, seed=3, max_requests=None)
    assert len(result.records) == len(scheduled) >= 20
    assert result.sent == len(scheduled) and result.count("ok") == len(scheduled)
    first_answer = min(r.sent_s + r.latency_s for r in result.records)  # type: ignore[operator]
    sent_before_first_answer = sum(1 for r in result.records if r.sent_s is not None and r.sent_s < first_answer)
    assert sent_before_first_answer > 2  # one connection waiting on each answer would have sent 1
    assert all(r.latency_s is not None and r.latency_s >= 0.2 for r in result.records)


@pytest.mark.parametrize("slow_server", [None], indirect=True, ids=["never-answers"])
def test_arrivals_beyond_max_in_flight_are_dropped_not_queued(slow_server: SlowServer, tmp_path: Path) -> None:
    result = run_load(slow_server.url, 100.0, 0.5, seed=4, max_in_flight=5, timeout_seconds=0.5)
    assert result.sent == 5
    assert result.count("dropped") == len(result.records) - 5 > 0
    assert result.count("timeout") == 5  # the run ended by itself although the server never answered
    assert len(slow_server.received) == 5
    # The run's reader counts the dropped requests too: as requests and as errors, at their scheduled time.
    result.write_csv(tmp_path / "client.csv")
    client = read_client_csv(tmp_path / "client.csv", 1000.0)
    assert len(client) == len(result.records) and not client["ok"].any()
    dropped = [r for r in result.records if r.outcome == "dropped"]
    assert sorted(client["timestamp"])[-1] == pytest.approx(1000.0 + max(r.scheduled_s for r in dropped))


@pytest.mark.parametrize("slow_server", ["hang-up"], indirect=True, ids=["closes-after-each-answer"])
def test_a_keep_alive_connection_the_server_closed_is_retried_not_counted_as_an_error(slow_server: SlowServer) -> None:
    result = run_load(slow_server.url, 20.0, 1.0, seed=8, timeout_seconds=5.0)
    assert result.count("ok") == result.sent == len(result.records) > 5
    assert len(slow_server.received) == result.sent  # nothing was sent twice to the server


def test_max_requests_caps_the_run(slow_server: SlowServer) -> None:
    result = run_load(slow_server.url, 1000.0, 60.0, seed=5, max_requests=12, timeout_seconds=5.0)
    assert len(result.records) == result.sent == result.count("ok") == 12


def test_a_refused_connection_is_an_error_per_request_not_a_crash() -> None:
    url = "http://127.0.0.1:1/score"  # port 1: nothing listens on loopback
    result = run_load(url, 50.0, 0.2, seed=6, timeout_seconds=1.0)
    assert result.count("error") == result.sent == len(result.records) > 0
    assert "Cannot connect" in result.records[0].error


def test_the_cli_writes_one_csv_row_per_request_and_a_json_summary(slow_server: SlowServer, scratch: Path) -> None:
    out = scratch / "client.csv"
    began = time.time()
    run = CliRunner().invoke(main, ["--url", slow_server.url, "--rate", "50", "--duration", "0.4", "--seed", "7",
                                    "--out", str(out)])
    ended = time.time()
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output.strip().splitlines()[-1])
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert summary["sent"] == summary["ok"] == len(rows) and summary["dropped"] == summary["errors"] == 0
    assert {r["outcome"] for r in rows} == {"ok"} and {r["status_code"] for r in rows} == {"200"}
    assert summary["p95_ms"] >= 200.0  # the server's 0.2 s delay is in every latency
    assert all(began <= float(r["sent_unix_s"]) <= ended for r in rows)  # wall-clock, to line up with Prometheus


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rate", "0"], "rate must be > 0"),
        (["--duration", "-1"], "duration must be > 0"),
        (["--url", "https://example.invalid/score"], "url must be http://"),
    ],
    ids=["zero-rate", "negative-duration", "not-plain-http"],
)
def test_bad_settings_exit_2_and_say_what_is_wrong(args: list[str], message: str, scratch: Path) -> None:
    base = {"--url": "http://127.0.0.1:1/score", "--rate": "10", "--duration": "1", "--out": str(scratch / "c.csv")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    run = CliRunner().invoke(main, [item for pair in base.items() for item in pair])
    assert run.exit_code == 2
    assert message in run.output


# --------------------------------------------------------------------------- following a load schedule


def _schedule(tmp: Path, phases: str) -> Path:
    path = tmp / "schedule.yaml"
    path.write_text(f"name: test\nphases:\n{phases}")
    return path


def test_scheduled_arrivals_follow_the_rate_per_phase_through_ramps_and_quiet_spells(scratch: Path) -> None:
    schedule = load_schedule(str(_schedule(scratch, "  - {duration: 10s, hp_rate: 100, lp: mixed}\n"
                                                    "  - {duration: 10s, hp_rate: 0, lp: mixed}\n"
                                                    "  - {duration: 10s, hp_rate: 100, hp_rate_end: 300, lp: read}\n")))
    times = scheduled_arrivals(schedule, schedule.duration_seconds, seed=1, max_requests=None)
    assert times == scheduled_arrivals(schedule, 30.0, seed=1, max_requests=None)
    assert times != scheduled_arrivals(schedule, 30.0, seed=2, max_requests=None)

    def count(a: float, b: float) -> int:
        return sum(1 for t in times if a <= t < b)

    # Poisson counts: expected n, sd sqrt(n); five sd either way.
    for (a, b), expected in (((0, 10), 1000), ((20, 25), 750), ((25, 30), 1250)):
        assert abs(count(a, b) - expected) < 5 * expected ** 0.5, (a, b, count(a, b))
    assert count(10, 20) == 0  # a quiet spell sends nothing
    assert schedule.mean_hp_rate() == pytest.approx((1000 + 2000) / 30)


@pytest.mark.parametrize("slow_server", [0.005], indirect=True, ids=["answers-in-5ms"])
def test_the_cli_follows_a_schedule_from_the_start_signal(slow_server: SlowServer, scratch: Path) -> None:
    """A real loadgen process: nothing before SIGUSR1, then the scheduled rate per phase, measured from its own CSV."""
    path = _schedule(scratch, "  - {duration: 2s, hp_rate: 60, lp: mixed}\n"
                              "  - {duration: 1.5s, hp_rate: 0, lp: mixed}\n"
                              "  - {duration: 2s, hp_rate: 150, lp: mixed}\n")
    out = scratch / "client.csv"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.workloads.loadgen", "--url", slow_server.url,
                             "--schedule", str(path), "--wait-for-start", "--seed", "3", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        ready = json.loads(proc.stderr.readline())  # the first line: it can take the signal now
        assert ready["event"] == "ready" and ready["pid"] == proc.pid
        time.sleep(0.5)
        assert slow_server.received == [] and proc.poll() is None  # waiting: nothing sent
        signalled = time.time()
        proc.send_signal(signal.SIGUSR1)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["schedule"] == "test" and summary["duration_seconds"] == 5.5
    assert summary["rate_per_second"] == pytest.approx((120 + 300) / 5.5, abs=0.01)
    rows = list(csv.DictReader(out.open()))
    assert rows and {r["outcome"] for r in rows} == {"ok"}
    assert min(float(r["sent_unix_s"]) for r in rows) >= signalled  # time zero is the signal
    scheduled = [float(r["scheduled_s"]) for r in rows]
    lag = [float(r["sent_s"]) - t for r, t in zip(rows, scheduled)]
    # Sent at its time: never early; late only by a busy host's scheduling, not by seconds (a sender that
    # ignored the arrival times, e.g. all at once or after the run, would be).
    assert min(lag) >= -0.001 and max(lag) < 2.0, (min(lag), max(lag))

    def rate(a: float, b: float) -> float:
        return sum(1 for t in scheduled if a <= t < b) / (b - a)

    # The arrivals follow the phases: Poisson noise over 2 s (sd ~ 5-9 requests), nothing in the quiet spell.
    assert 60 * 0.6 <= rate(0, 2) <= 60 * 1.4
    assert rate(2, 3.5) == 0
    assert 150 * 0.6 <= rate(3.5, 5.5) <= 150 * 1.4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--schedule", "nope"], "neither a built-in schedule"),
        (["--rate", "10", "--schedule", "hp-steps"], "either --rate"),
        ([], "either --rate"),
    ],
    ids=["unknown-schedule", "rate-and-schedule", "neither"],
)
def test_a_bad_schedule_choice_exits_2_and_says_why(args: list[str], message: str, scratch: Path) -> None:
    run = CliRunner().invoke(main, ["--url", "http://127.0.0.1:1/score", *args, "--out", str(scratch / "c.csv")])
    assert run.exit_code == 2
    assert message in run.output
    assert not (scratch / "c.csv").exists()


def test_a_schedule_file_with_a_mistake_says_where(scratch: Path) -> None:
    path = _schedule(scratch, "  - {duration: 2, hp_rate: 60, lp: mixed}\n")
    run = CliRunner().invoke(main, ["--url", "http://127.0.0.1:1/score", "--schedule", str(path),
                                    "--out", str(scratch / "c.csv")])
    assert run.exit_code == 2
    assert f"{path}: phases.0.duration" in run.output.replace("\n", " ")
