"""Open-loop load generator for the HP service, recording its own client-side latencies.

Run by the experiment orchestrator as a subprocess, or used as a library::

    python -m experiments.workloads.loadgen --url http://127.0.0.1:P/score --rate 200 --duration 30 \\
        [--max-requests N] [--max-in-flight M] [--timeout S] [--seed S] [--tx-space N] --out client.csv
    python -m experiments.workloads.loadgen --url ... --schedule hp-steps|FILE [--wait-for-start] --out client.csv

    result = run_load(url, rate, duration_seconds, seed=1, max_requests=None, max_in_flight=256)
    result = run_load(url, None, None, schedule=load_schedule("hp-steps"))

Open loop: arrival times are drawn up front (Poisson process, exponential gaps of
mean 1/rate) and each request is sent at its time whether or not earlier ones have
answered. A closed-loop client would slow down with the server and hide the
queueing that a latency SLO is about.

With ``--schedule`` (a load schedule of :mod:`experiments.schedules`, a
built-in name or a YAML file) the rate follows the schedule's HP rate over
time, ramps and quiet spells (rate 0: nothing is sent) included: the
arrivals are a non-homogeneous Poisson process, drawn up front by thinning
(:func:`scheduled_arrivals`); the run lasts the schedule (or ``--duration``,
if shorter). The LP job follows the same file; the local backend starts both
with one ``SIGUSR1`` so their schedules share time zero: with
``--wait-for-start`` the generator prints ``{"event": "ready", ...}`` on
stderr once it can take the signal and sends nothing before it (SIGTERM
while waiting exits with an empty CSV).

Bounded in every direction: at most ``max_requests`` scheduled, none after
``duration``; at most ``max_in_flight`` outstanding (an arrival beyond that is
recorded as ``dropped``, never queued); each request gives up after ``timeout``;
and the run ends at ``duration + timeout`` at the latest (hard stop; anything still
out is cancelled and counted as ``timeout``).

Each request is ``GET <url>?tx=<id>`` (HTTP/1.1 over aiohttp's keep-alive
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
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import click
import numpy as np

from experiments.schedules import Schedule, ScheduleError, load_schedule

__all__ = ["LoadResult", "RequestRecord", "main", "poisson_schedule", "run_load", "run_load_async",
           "scheduled_arrivals"]

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
    schedule: str | None = None
    """The load schedule's name when the rate followed one (``rate_per_second`` is then its mean)."""

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
            "rate_per_second": round(self.rate_per_second, 3),
            "schedule": self.schedule,
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


def scheduled_arrivals(schedule: Schedule, duration_seconds: float, *, seed: int,
                       max_requests: int | None) -> list[float]:
    """Arrival times in [0, duration) of a Poisson process whose rate follows ``schedule``'s HP rate.

    Thinning (Lewis and Shedler): candidates at the schedule's peak rate, each
    kept with probability rate(t) / peak. Exact for any rate shape (steps,
    ramps, zeros), and a quiet spell keeps no candidate at all.
    """
    peak = schedule.peak_hp_rate
    if peak <= 0:
        return []
    rnd = random.Random(seed)
    times: list[float] = []
    t = rnd.expovariate(peak)
    while t < duration_seconds and (max_requests is None or len(times) < max_requests):
        if rnd.random() * peak < schedule.hp_rate_at(t):
            times.append(t)
        t += rnd.expovariate(peak)
    return times


def _validate(rate: float | None, duration_seconds: float | None, max_requests: int | None, max_in_flight: int,
              timeout_seconds: float, tx_space: int, schedule: Schedule | None) -> None:
    errors = []
    if schedule is None:
        if rate is None or not (math.isfinite(rate) and rate > 0):
            errors.append(f"rate must be > 0 requests/s, got {rate}")
        if duration_seconds is None:
            errors.append("a duration is needed with a fixed rate")
    elif rate is not None:
        errors.append("give a rate or a schedule, not both")
    if duration_seconds is not None and not (math.isfinite(duration_seconds) and duration_seconds > 0):
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


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"url must be http://host[:port]/path (plain HTTP on loopback), got {url!r}")


#: Idle keep-alive connections are closed after this long (uvicorn closes them after 5 s;
#: closing first avoids sending on a connection the server is closing).
_KEEPALIVE_SECONDS = 2.0


def _session(max_in_flight: int) -> aiohttp.ClientSession:
    """The HTTP client: aiohttp over keep-alive connections.

    Why aiohttp and not httpx (the project's other client): measured by
    ``benchmarks/http_client_cpu.py`` on this 2-core machine, httpx spends
    ~2.8 ms of CPU per request and aiohttp ~0.9 ms. At a few hundred
    requests/s httpx would compete with the service it measures and inflate
    the client-side latency this generator exists to check. aiohttp also
    resends a request once when the server had closed the reused keep-alive
    connection before answering, so such a request is not counted as an error.
    """
    connector = aiohttp.TCPConnector(limit=max_in_flight, keepalive_timeout=_KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


async def run_load_async(url: str, rate: float | None, duration_seconds: float | None, *, seed: int = 0,
                         max_requests: int | None = None, max_in_flight: int = 256, timeout_seconds: float = 5.0,
                         tx_space: int = 1 << 31, stop: asyncio.Event | None = None,
                         schedule: Schedule | None = None, start: asyncio.Event | None = None) -> LoadResult:
    """The open-loop run inside a running event loop; see the module docstring.

    Either ``rate`` (requests/s) with ``duration_seconds``, or ``schedule``
    (``rate`` None; the duration defaults to the schedule's). ``stop``
    (optional) ends the run early: nothing more is sent, in-flight requests
    are cancelled. ``start`` (optional): time zero is when it is set (nothing
    is sent before); a stop while waiting returns an empty run.
    """
    _validate(rate, duration_seconds, max_requests, max_in_flight, timeout_seconds, tx_space, schedule)
    _check_url(url)
    if schedule is not None:
        duration = duration_seconds if duration_seconds is not None else schedule.duration_seconds
        arrivals = scheduled_arrivals(schedule, duration, seed=seed, max_requests=max_requests)
        mean_rate = schedule.mean_hp_rate(duration)
    else:
        assert rate is not None and duration_seconds is not None  # _validate said so
        duration, mean_rate = duration_seconds, rate
        arrivals = poisson_schedule(rate, duration, seed=seed, max_requests=max_requests)
    tx_rnd = random.Random(seed + 1)
    result = LoadResult(url, mean_rate, duration,
                        [RequestRecord(i, tx_rnd.randrange(tx_space), t) for i, t in enumerate(arrivals)],
                        schedule=None if schedule is None else schedule.name)
    stop = stop if stop is not None else asyncio.Event()
    if start is not None:
        waiter = asyncio.create_task(start.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if not start.is_set():
            result.start_unix_seconds = time.time()
            return result
    session = _session(max_in_flight)
    in_flight: set[asyncio.Task[None]] = set()
    start_clock = time.perf_counter()
    result.start_unix_seconds = time.time()

    async def send(rec: RequestRecord) -> None:
        sent = time.perf_counter()
        rec.sent_s = sent - start_clock
        try:
            async with asyncio.timeout(timeout_seconds):
                async with session.get(url, params={"tx": str(rec.tx)}) as resp:
                    await resp.read()
                    rec.status_code = resp.status
            rec.outcome = "ok" if 200 <= rec.status_code < 300 else "http_error"
        except TimeoutError:
            rec.outcome, rec.error = "timeout", f"no response within {timeout_seconds} s"
        except (OSError, aiohttp.ClientError) as e:
            rec.outcome, rec.error = "error", f"{type(e).__name__}: {e}"
        end = time.perf_counter()
        rec.latency_s = end - sent
        rec.latency_from_schedule_s = end - start_clock - rec.scheduled_s

    try:
        for rec in result.records:
            delay = rec.scheduled_s - (time.perf_counter() - start_clock)
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
        hard_stop = start_clock + duration + timeout_seconds
        if in_flight and not stop.is_set():
            await asyncio.wait(set(in_flight), timeout=max(0.0, hard_stop - time.perf_counter()))
    finally:
        for task in list(in_flight):
            task.cancel()
        if in_flight:
            await asyncio.wait(set(in_flight))
        await session.close()
    for rec in result.records:
        if rec.sent_s is not None and rec.latency_s is None:  # cancelled at the hard stop or on stop
            rec.outcome, rec.error = "timeout", "cancelled at the end of the run"
    result.elapsed_seconds = time.perf_counter() - start_clock
    return result


def run_load(url: str, rate: float | None, duration_seconds: float | None, *, seed: int = 0,
             max_requests: int | None = None, max_in_flight: int = 256, timeout_seconds: float = 5.0,
             tx_space: int = 1 << 31, schedule: Schedule | None = None) -> LoadResult:
    """Blocking wrapper around :func:`run_load_async` (starts its own event loop)."""
    return asyncio.run(run_load_async(url, rate, duration_seconds, seed=seed, max_requests=max_requests,
                                      max_in_flight=max_in_flight, timeout_seconds=timeout_seconds,
                                      tx_space=tx_space, schedule=schedule))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", required=True, help="Endpoint, e.g. http://127.0.0.1:8080/score (?tx=<id> is added).")
@click.option("--rate", type=float, default=None, help="Mean arrival rate, requests per second (Poisson).")
@click.option("--schedule", "schedule_name", default=None, metavar="NAME|FILE",
              help="Instead of --rate: follow a load schedule's HP rate (a built-in name or a YAML file, see "
                   "experiments/schedules.py); the run lasts the schedule unless --duration is shorter.")
@click.option("--duration", type=float, default=None,
              help="Seconds during which requests are sent (required with --rate).")
@click.option("--wait-for-start", is_flag=True,
              help="Print a 'ready' JSON line on stderr and send nothing until SIGUSR1 (time zero).")
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
def main(url: str, rate: float | None, schedule_name: str | None, duration: float | None, wait_for_start: bool,
         max_requests: int | None, max_in_flight: int, timeout_seconds: float, seed: int, tx_space: int,
         out: Path) -> None:
    """Open-loop Poisson load against URL; per-request CSV, one-line JSON summary on stdout."""
    if (rate is None) == (schedule_name is None):
        raise click.UsageError("give either --rate (with --duration) or --schedule")
    try:
        schedule = load_schedule(schedule_name) if schedule_name is not None else None
    except ScheduleError as e:
        raise click.UsageError(f"--schedule: {e}") from None

    async def until_signalled() -> LoadResult:
        # SIGTERM/SIGINT end the run early but still write the CSV and the summary of what was done.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        start = None
        if wait_for_start:
            start = asyncio.Event()
            loop.add_signal_handler(signal.SIGUSR1, start.set)
            print(json.dumps({"event": "ready", "service": "loadgen", "pid": os.getpid(),
                              "state": "waiting for SIGUSR1"}), file=sys.stderr, flush=True)
        return await run_load_async(url, rate, duration, seed=seed, max_requests=max_requests,
                                    max_in_flight=max_in_flight, timeout_seconds=timeout_seconds, tx_space=tx_space,
                                    stop=stop, schedule=schedule, start=start)

    try:
        result = asyncio.run(until_signalled())
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    result.write_csv(out)
    print(json.dumps(result.summary()), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
