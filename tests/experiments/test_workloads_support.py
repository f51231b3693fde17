"""Helpers for the workload tests: run a workload as a real subprocess, read its JSON event
lines with a deadline, scrape and parse its /metrics, and compute a histogram quantile the
way Prometheus' ``histogram_quantile`` does. No tests live here."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir on the real disk (/tmp is on vda here; O_DIRECT needs a disk-backed file system), removed after."""
    path = Path(tempfile.mkdtemp(prefix="drcio-workloads-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Workload:
    """A workload subprocess whose stdout lines are collected by a reader thread."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def wait_for_event(self, event: str, timeout_seconds: float = 30.0) -> dict[str, object]:
        """The first stdout JSON line with ``"event": event``; fails if the process exits first or the time is up."""
        try:
            while True:
                line = self.lines.get(timeout=timeout_seconds)
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == event:
                    return record
        except queue.Empty:
            raise AssertionError(f"no {event!r} line within {timeout_seconds}s; "
                                 f"exit code {self.proc.poll()}") from None


def _pump(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)
    lines.put("")  # EOF


@contextmanager
def run_workload(module: str, *args: str, stdin: int | None = subprocess.DEVNULL) -> Iterator[Workload]:
    """Start ``python -m experiments.workloads.<module> args...``; always stopped (TERM, then KILL) afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"experiments.workloads.{module}", *args],
        cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    workload = Workload(proc)
    reader = threading.Thread(target=_pump, args=(proc.stdout, workload.lines), daemon=True)
    reader.start()
    try:
        yield workload
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        reader.join(timeout=5)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of a /metrics page as {(name, sorted labels): value}."""
    text = httpx.get(url, timeout=5.0).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def buckets(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) pairs of histogram ``name``, sorted by le (+Inf last)."""
    out = [(float(dict(labels)["le"]), value) for (n, labels), value in samples.items() if n == f"{name}_bucket"]
    return sorted(out)


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile``: find the bucket holding rank q*count, interpolate linearly in it."""
    total = cumulative[-1][1]
    if total == 0:
        raise ValueError("empty histogram")
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if le == float("inf"):
                return lower_le  # Prometheus returns the upper bound of the last finite bucket
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")
