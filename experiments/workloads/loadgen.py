"""Open-loop load generator for the HP service, recording its own client-side latencies.

Run by the experiment orchestrator as a subprocess, or used as a library::

    python -m experiments.workloads.loadgen --url http://127.0.0.1:P/score --rate 200 --duration 30 \\
        [--max-requests N] [--max-in-flight M] [--timeout S] [--seed S] [--tx-space N] --out client.csv

    result = run_load(url, rate, duration_seconds, seed=1, max_requests=None, max_in_flight=256)

Open loop: arrival times are drawn up front (Poisson process, exponential gaps of
mean 1/rate) and each request is sent at its time whether or not earlier ones have
answered. A closed-loop client would slow down with the server and hide the
queueing that a latency SLO is about.

Bounded in every direction: at most ``max_requests`` scheduled, none after
``duration``; at most ``max_in_flight`` outstanding (an arrival beyond that is
recorded as ``dropped``, never queued); each request gives up after ``timeout``;
and the run ends at ``duration + timeout`` at the latest (hard stop; anything still
out is cancelled and counted as ``timeout``).

Each request is ``GET <url>?tx=<id>`` (plain HTTP/1.1 over keep-alive
connections) with ``id`` drawn uniformly from ``[0, tx_space)`` (seeded). Per
request the CSV has: ``index``, ``tx``, ``scheduled_s`` and ``sent_s`` (seconds
since the run's start), ``latency_s`` (from send to the end of the response:
what the server's histogram should agree with), ``latency_from_schedule_s``
(from the scheduled time: adds the client's own lag, which shows if the
generator itself fell behind), ``outcome`` (``ok``, ``http_error``, ``error``,
``timeout``, ``dropped``), ``status_code``, ``error`` and ``sent_unix_s`` (the
send time as Unix seconds, to line up with Prometheus series). SIGTERM/SIGINT
end a CLI run early; the CSV and the summary are still written. The summary
(stdout, one JSON line) gives counts and P50/P95/P99 in ms of the ``ok``
requests' ``latency_s``, plus the P95 from the scheduled time.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import click
import numpy as np

__all__ = ["LoadResult", "RequestRecord", "main", "poisson_schedule", "run_load", "run_load_async"]

Outcome = Literal["ok", "http_error", "error", "timeout", "dropped"]

CSV_COLUMNS = ("index", "tx", "scheduled_s", "sent_s", "latency_s", "latency_from_schedule_s", "outcome",
               "status_code", "error", "sent_unix_s")


@dataclass
class RequestRecord:
    index: int
    tx: int
    scheduled_s: float
    sent_s: float | None = None
    latency_s: float | None = None
    latency_from_schedule_s: float | None = None
    outcome: Outcome = "dropped"
    status_code: int | None = None
    error: str = ""


def _quantile_ms(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.quantile(values, q)) * 1000.0, 3)


@dataclass
class LoadResult:
    """Every scheduled request's record, and the run's settings and wall time."""

    url: str
    rate_per_second: float
    duration_seconds: float
    records: list[RequestRecord] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    start_unix_seconds: float = 0.0
    """Wall-clock time of the run's start (``sent_s`` and ``scheduled_s`` count from here)."""

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.records if r.outcome == outcome)

    @property
    def sent(self) -> int:
        return sum(1 for r in self.records if r.sent_s is not None)

    def ok_latencies(self) -> list[float]:
        return [r.latency_s for r in self.records if r.outcome == "ok" and r.latency_s is not None]

    def summary(self) -> dict[str, object]:
        lat = self.ok_latencies()
        from_schedule = [r.latency_from_schedule_s for r in self.records
                         if r.outcome == "ok" and r.latency_from_schedule_s is not None]
        return {
            "url": self.url,
            "rate_per_second": self.rate_per_second,
            "duration_seconds": self.duration_seconds,
            "start_unix_seconds": round(self.start_unix_seconds, 3),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "scheduled": len(self.records),
            "sent": self.sent,
            "ok": self.count("ok"),
            "errors": self.count("http_error") + self.count("error") + self.count("timeout"),
            "timeouts": self.count("timeout"),
            "dropped": self.count("dropped"),
            "p50_ms": _quantile_ms(lat, 0.50),
            "p95_ms": _quantile_ms(lat, 0.95),
            "p99_ms": _quantile_ms(lat, 0.99),
            "p95_from_schedule_ms": _quantile_ms(from_schedule, 0.95),
        }

    def write_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in self.records:
                row: dict[str, object] = {k: ("" if v is None else v) for k, v in asdict(r).items()}
                row["sent_unix_s"] = "" if r.sent_s is None else f"{self.start_unix_seconds + r.sent_s:.6f}"
                w.writerow(row)


def poisson_schedule(rate: float, duration_seconds: float, *, seed: int, max_requests: int | None) -> list[float]:
    """Arrival times in [0, duration) of a Poisson process of ``rate`` per second, at most ``max_requests``."""
    rnd = random.Random(seed)
    times: list[float] = []
    t = rnd.expovariate(rate)
    while t < duration_seconds and (max_requests is None or len(times) < max_requests):
        times.append(t)
        t += rnd.expovariate(rate)
    return times


def _validate(rate: float, duration_seconds: float, max_requests: int | None, max_in_flight: int,
              timeout_seconds: float, tx_space: int) -> None:
    errors = []
    if not (math.isfinite(rate) and rate > 0):
        errors.append(f"rate must be > 0 requests/s, got {rate}")
    if not (math.isfinite(duration_seconds) and duration_seconds > 0):
        errors.append(f"duration must be > 0 seconds, got {duration_seconds}")
    if max_requests is not None and max_requests < 1:
        errors.append(f"max_requests must be >= 1, got {max_requests}")
    if max_in_flight < 1:
        errors.append(f"max_in_flight must be >= 1, got {max_in_flight}")
    if not timeout_seconds > 0:
        errors.append(f"timeout must be > 0 seconds, got {timeout_seconds}")
    if tx_space < 1:
        errors.append(f"tx_space must be >= 1, got {tx_space}")
    if errors:
        raise ValueError("bad load-generator settings: " + "; ".join(errors))


class _HttpError(Exception):
    """The server broke the HTTP/1.1 exchange (bad status line, truncated body, ...)."""


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    path: str  # path and query, without tx

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url must be http://host[:port]/path (plain HTTP on loopback), got {url!r}")
        path = parts.path or "/"
        return cls(parts.hostname, parts.port or 80, path + ("?" + parts.query + "&" if parts.query else "?"))


class _ClosedBeforeAnswer(Exception):
    """A reused keep-alive connection was closed by the server before any response byte."""


_MAX_IDLE_SECONDS = 2.0
"""Idle keep-alive connections older than this are not reused (uvicorn closes them after 5 s)."""


class _Connections:
    """A tiny HTTP/1.1 keep-alive client: GET only, Content-Length or chunked bodies.

    Why not httpx: on this 2-core machine httpx spends about 2.5 ms of CPU per
    request, so at a few hundred requests/s the generator competes with the
    service it measures and its own overhead doubles the client-side latency.
    This costs a small fraction of that, so the client-side latency stays an
    honest check on the server's histogram.
    """

    def __init__(self, target: _Target) -> None:
        self.target = target
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # last used (monotonic)
        self._all: set[asyncio.StreamWriter] = set()

    async def get(self, tx: int) -> int:
        """Send one GET, read the whole response, return the status code.

        A server closes idle keep-alive connections when it likes (uvicorn after
        5 s); a request that finds its reused connection closed before a single
        byte came back was never processed, so it is sent once more on a fresh
        connection instead of being counted as a server error.
        """
        now = time.monotonic()
        while self._idle:
            reader, writer, last_used = self._idle.pop()
            if now - last_used < _MAX_IDLE_SECONDS and not reader.at_eof():
                try:
                    return await self._exchange(reader, writer, tx)
                except _ClosedBeforeAnswer:
                    break
            self._drop(writer)
        reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        self._all.add(writer)
        try:
            return await self._exchange(reader, writer, tx)
        except _ClosedBeforeAnswer as e:
            raise _HttpError("the server closed the connection without answering") from e

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        self._all.discard(writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tx: int) -> int:
        keep = False
        try:
            writer.write(f"GET {self.target.path}tx={tx} HTTP/1.1\r\nHost: {self.target.host}\r\n\r\n".encode())
            try:
                raw_head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
                if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                    raise
                raise _ClosedBeforeAnswer() from e
            head = raw_head.decode("latin-1").split("\r\n")
            status_line = head[0].split(" ", 2)
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
                raise _HttpError(f"bad status line {head[0]!r}")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    await reader.readexactly(size + 2)
                await reader.readuntil(b"\r\n")
            else:
                await reader.readexactly(int(headers.get("content-length", "0")))
            keep = headers.get("connection", "").lower() != "close"
            return int(status_line[1])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise _HttpError(f"{type(e).__name__}: {e}") from None
        finally:
            if keep:
                self._idle.append((reader, writer, time.monotonic()))
            else:  # cancelled, failed or closed by the server: never reuse a half-read connection
                self._drop(writer)

    async def close(self) -> None:
        for writer in list(self._all):
            writer.close()
        self._all.clear()
        self._idle.clear()


async def run_load_async(url: str, rate: float, duration_seconds: float, *, seed: int = 0,
                         max_requests: int | None = None, max_in_flight: int = 256, timeout_seconds: float = 5.0,
                         tx_space: int = 1 << 31, stop: asyncio.Event | None = None) -> LoadResult:
    """The open-loop run inside a running event loop; see the module docstring.

    ``stop`` (optional) ends the run early: nothing more is sent, in-flight requests are cancelled.
    """
    _validate(rate, duration_seconds, max_requests, max_in_flight, timeout_seconds, tx_space)
    target = _Target.parse(url)
    schedule = poisson_schedule(rate, duration_seconds, seed=seed, max_requests=max_requests)
    tx_rnd = random.Random(seed + 1)
    result = LoadResult(url, rate, duration_seconds,
                        [RequestRecord(i, tx_rnd.randrange(tx_space), t) for i, t in enumerate(schedule)])
    stop = stop if stop is not None else asyncio.Event()
    connections = _Connections(target)
    in_flight: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    result.start_unix_seconds = time.time()

    async def send(rec: RequestRecord) -> None:
        sent = time.perf_counter()
        rec.sent_s = sent - start
        try:
            async with asyncio.timeout(timeout_seconds):
                rec.status_code = await connections.get(rec.tx)
            rec.outcome = "ok" if 200 <= rec.status_code < 300 else "http_error"
        except TimeoutError:
            rec.outcome, rec.error = "timeout", f"no response within {timeout_seconds} s"
        except (OSError, _HttpError) as e:
            rec.outcome, rec.error = "error", f"{type(e).__name__}: {e}"
        end = time.perf_counter()
        rec.latency_s = end - sent
        rec.latency_from_schedule_s = end - start - rec.scheduled_s

    try:
        for rec in result.records:
            delay = rec.scheduled_s - (time.perf_counter() - start)
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            if stop.is_set():
                break
            # Late (the loop was busy)? Send now anyway: the lag shows in latency_from_schedule_s.
            if len(in_flight) >= max_in_flight:
                continue  # stays "dropped": an open-loop client never queues behind the server
            task = asyncio.create_task(send(rec))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        hard_stop = start + duration_seconds + timeout_seconds
        if in_flight and not stop.is_set():
            await asyncio.wait(set(in_flight), timeout=max(0.0, hard_stop - time.perf_counter()))
    finally:
        for task in list(in_flight):
            task.cancel()
        if in_flight:
            await asyncio.wait(set(in_flight))
        await connections.close()
    for rec in result.records:
        if rec.sent_s is not None and rec.latency_s is None:  # cancelled at the hard stop or on stop
            rec.outcome, rec.error = "timeout", "cancelled at the end of the run"
    result.elapsed_seconds = time.perf_counter() - start
    return result


def run_load(url: str, rate: float, duration_seconds: float, *, seed: int = 0, max_requests: int | None = None,
             max_in_flight: int = 256, timeout_seconds: float = 5.0, tx_space: int = 1 << 31) -> LoadResult:
    """Blocking wrapper around :func:`run_load_async` (starts its own event loop)."""
    return asyncio.run(run_load_async(url, rate, duration_seconds, seed=seed, max_requests=max_requests,
                                      max_in_flight=max_in_flight, timeout_seconds=timeout_seconds,
                                      tx_space=tx_space))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", required=True, help="Endpoint, e.g. http://127.0.0.1:8080/score (?tx=<id> is added).")
@click.option("--rate", type=float, required=True, help="Mean arrival rate, requests per second (Poisson).")
@click.option("--duration", type=float, required=True, help="Seconds during which requests are sent.")
@click.option("--max-requests", type=click.IntRange(min=1), default=None, help="Cap on requests scheduled.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=256, show_default=True,
              help="Outstanding requests beyond this are dropped (counted), not queued.")
@click.option("--timeout", "timeout_seconds", type=float, default=5.0, show_default=True,
              help="Per-request timeout; also the drain time after --duration before the hard stop.")
@click.option("--seed", default=0, show_default=True)
@click.option("--tx-space", type=click.IntRange(min=1), default=1 << 31, show_default=True,
              help="Transaction ids are drawn from [0, tx-space).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV file of per-request records.")
def main(url: str, rate: float, duration: float, max_requests: int | None, max_in_flight: int,
         timeout_seconds: float, seed: int, tx_space: int, out: Path) -> None:
    """Open-loop Poisson load against URL; per-request CSV, one-line JSON summary on stdout."""
    async def until_signalled() -> LoadResult:
        # SIGTERM/SIGINT end the run early but still write the CSV and the summary of what was done.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_load_async(url, rate, duration, seed=seed, max_requests=max_requests,
                                    max_in_flight=max_in_flight, timeout_seconds=timeout_seconds, tx_space=tx_space,
                                    stop=stop)

    try:
        result = asyncio.run(until_signalled())
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    result.write_csv(out)
    print(json.dumps(result.summary()), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
