"""The low-priority (LP) batch job: one process, N threads of large direct-I/O reads and/or writes.

Run by the experiment orchestrator as a subprocess (and by hand)::

    python -m experiments.workloads.lp_batch --data-dir D --port P --mode {read,write,mixed} \\
        --workers N --block-size 1M --file-size 1G [--duration S] [--seed S] [--prepare-only] [--start-now]
    python -m experiments.workloads.lp_batch ... --schedule lp-phases|FILE   # instead of --mode

It is ONE process on purpose: the orchestrator moves that one pid into the LP
cgroup and its threads follow. So that no byte of LP I/O escapes the cgroup, the
job STARTS PAUSED:

1. it serves ``/metrics`` on ``127.0.0.1:P`` (counters at zero);
2. it prepares its data file ``lp-batch.dat`` (``--file-size``) — written in full
   and fsync'd, because writes into unwritten extents would make the file system
   journal outside the cgroup; an existing complete file of the right size is
   reused; SIGTERM here stops within one 8 MiB chunk and the file is redone next time;
3. it prints one JSON line ``{"event": "prepared", "state": "waiting for start", "pid": ...}``
   on stdout and waits;
4. it starts I/O on ``SIGUSR1`` or on a line ``start`` on stdin (EOF on stdin is
   ignored, so ``</dev/null`` is fine), or at once with ``--start-now``;
5. it loops until ``--duration`` seconds of I/O have passed or SIGTERM/SIGINT
   arrives, then finishes the operations in flight and exits 0.

Each worker thread issues ``--block-size`` O_DIRECT operations at random aligned
offsets of the file: ``read`` mode reads, ``write`` mode overwrites in place,
``mixed`` alternates read and write per worker. Python releases the GIL inside
``os.preadv``/``os.pwritev``, so N threads give an I/O depth of N.

With ``--schedule`` (a load schedule of :mod:`experiments.schedules`, a
built-in name or a YAML file) the mode follows the schedule's LP phases
instead: ``read``, ``write``, ``mixed`` as above, ``idle`` (no I/O), and
``bursts`` (mixed, then idle, repeating). Time zero is the start signal (the
local backend sends it to this job and the load generator at once, so both
follow one clock); the last phase holds after the schedule's end. Every
worker looks up the mode before each operation, so a change takes effect
within one operation (or one idle poll of 20 ms). It is still the same one
process and the same threads: nothing is started or stopped outside the
cgroup. The ``stopped`` line then also gives the bytes per phase
(``"phases": [{"phase": 0, "lp": "read", "bytes": {...}}, ...]``), each
operation counted in the phase in which it started.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal

import click
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from experiments.schedules import Schedule, ScheduleError, load_schedule
from experiments.workloads.direct_io import (
    aligned_buffer,
    backing_device,
    check_aligned,
    is_fully_written,
    open_direct,
    pread_exact,
    pwrite_exact,
)

__all__ = ["BatchConfig", "BatchJob", "BatchMetrics", "Mode", "PreparationStopped", "main", "parse_size",
           "prepare_file"]

log = logging.getLogger("lp_batch")

Mode = Literal["read", "write", "mixed"]
DATA_FILE = "lp-batch.dat"
_COMPLETE_SUFFIX = ".complete"  # marker: the file was written in full and fsync'd
_PREPARE_CHUNK_BYTES = 8 << 20
#: How often an idle worker (schedule phase ``idle``, or a burst's off time) looks at the schedule again:
#: short against a phase (seconds), long against a thread wake-up.
_IDLE_POLL_SECONDS = 0.02

BATCH_LATENCY_BUCKETS_SECONDS = tuple(float(f"{1e-4 * 10 ** (k / 5):.6g}") for k in range(31))
"""0.1 ms to 100 s, 5 per decade: a 1 MiB operation takes under a millisecond on a free
disk and seconds under a tight throttle."""

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"1M"`` -> 1048576: sizes take K/M/G, powers of 1024 (the SLO file's convention)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or a number with K, M or G, e.g. 1M)")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


@dataclass(frozen=True)
class BatchConfig:
    data_dir: Path
    mode: Mode = "read"
    workers: int = 4
    """Threads, each with one operation in flight: the job's I/O depth."""
    block_size_bytes: int = 1 << 20
    file_size_bytes: int = 1 << 30
    """Large against the device's cache, small enough to write in a few seconds at set-up."""
    duration_seconds: float | None = None
    """Seconds of I/O after the start signal; None runs until SIGTERM."""
    seed: int = 0
    schedule: Schedule | None = None
    """If set, the mode per phase comes from it (``mode`` is not used), time zero at the start signal."""

    def __post_init__(self) -> None:
        errors = []
        if self.mode not in ("read", "write", "mixed"):
            errors.append(f"mode must be read, write or mixed, got {self.mode!r}")
        if self.workers < 1:
            errors.append(f"workers must be >= 1, got {self.workers}")
        for name, value in (("block size", self.block_size_bytes), ("file size", self.file_size_bytes)):
            try:
                check_aligned(value, name)
            except ValueError as e:
                errors.append(str(e))
        if self.file_size_bytes < self.block_size_bytes:
            errors.append(f"file size ({self.file_size_bytes}) must be >= block size ({self.block_size_bytes})")
        if self.duration_seconds is not None and self.duration_seconds <= 0:
            errors.append(f"duration must be > 0 seconds, got {self.duration_seconds}")
        if errors:
            raise ValueError("bad LP batch config: " + "; ".join(errors))

    @property
    def data_file(self) -> Path:
        return self.data_dir / DATA_FILE

    @property
    def writes(self) -> bool:
        """Whether any operation may be a write (the file is then opened read-write)."""
        return self.schedule.writes if self.schedule is not None else self.mode != "read"


@dataclass
class BatchMetrics:
    """The job's metrics, in a registry of its own; both ops exist at zero from the start."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.bytes = Counter("batch_io_bytes_total", "Bytes moved by the LP job's direct I/O", ["op"], registry=r)
        self.ops = Counter("batch_io_operations_total", "LP job I/O operations completed", ["op"], registry=r)
        self.latency = Histogram("batch_io_latency_seconds", "Latency of one LP I/O operation", ["op"],
                                 buckets=BATCH_LATENCY_BUCKETS_SECONDS, registry=r)
        self.active = Gauge("batch_active_operations", "LP I/O operations in flight", registry=r)
        for op in ("read", "write"):
            self.bytes.labels(op=op)
            self.ops.labels(op=op)
            self.latency.labels(op=op)


class PreparationStopped(Exception):
    """A stop was requested while the data file was being written (it is left incomplete, unmarked)."""


def prepare_file(path: Path, size_bytes: int, *, seed: int = 0, stop: threading.Event | None = None) -> bool:
    """Make ``path`` a fully written, fsync'd file of ``size_bytes``; reuse it if it already is.

    Returns True if it was (re)written. The content is random so that no layer
    below can compress or deduplicate it away. ``stop`` (checked between 8 MiB
    chunks) aborts with :class:`PreparationStopped`, so SIGTERM during a long
    preparation is honoured within a chunk.
    """
    marker = path.with_name(path.name + _COMPLETE_SUFFIX)
    if marker.exists() and marker.read_text().strip() == str(size_bytes) and is_fully_written(path, size_bytes):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    chunk = min(_PREPARE_CHUNK_BYTES, size_bytes)
    buf = aligned_buffer(chunk)
    buf.write(random.Random(seed).randbytes(chunk))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT | os.O_CLOEXEC, 0o644)
    try:
        for offset in range(0, size_bytes, chunk):
            if stop is not None and stop.is_set():
                raise PreparationStopped(f"{path}: stopped after {offset} of {size_bytes} bytes")
            n = min(chunk, size_bytes - offset)  # the size is 4 KiB aligned, so the tail is too
            if os.pwritev(fd, [memoryview(buf)[:n]], offset) != n:
                raise OSError(f"{path}: short write at offset {offset} while preparing")
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()
    marker.write_text(f"{size_bytes}\n")
    return True


class BatchJob:
    """The worker threads and their shared stop/start events. ``run()`` blocks until done."""

    def __init__(self, config: BatchConfig, metrics: BatchMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.started = threading.Event()
        self.stopped = threading.Event()
        self._errors: list[BaseException] = []
        self._zero = 0.0  # monotonic time of the start signal: the schedule's time zero
        phases = config.schedule.phases if config.schedule is not None else ()
        self._lock = threading.Lock()
        #: Bytes per schedule phase and op, each operation counted in the phase in which it started.
        self.phase_bytes: list[dict[str, int]] = [{"read": 0, "write": 0} for _ in phases]

    def _now(self) -> tuple[int, str]:
        """(phase index, mode) in force now; (-1, the fixed mode) without a schedule."""
        schedule = self.config.schedule
        if schedule is None:
            return -1, self.config.mode
        t = time.monotonic() - self._zero
        return schedule.phase_index_at(t), schedule.lp_mode_at(t)

    def _worker(self, index: int, fd: int) -> None:
        cfg = self.config
        rnd = random.Random(cfg.seed * 1_000_003 + index)  # own stream per worker, reproducible
        buf = aligned_buffer(cfg.block_size_bytes)
        buf.write(rnd.randbytes(cfg.block_size_bytes))
        slots = cfg.file_size_bytes // cfg.block_size_bytes
        # ``mixed`` alternates per worker, starting with reads on even workers, so the
        # read/write split is even at any moment and does not depend on luck.
        mixed_write = index % 2 == 1
        try:
            while not self.stopped.is_set():
                phase, mode = self._now()
                if mode == "idle":
                    self.stopped.wait(_IDLE_POLL_SECONDS)
                    continue
                if mode == "mixed":
                    do_write, mixed_write = mixed_write, not mixed_write
                else:
                    do_write = mode == "write"
                offset = rnd.randrange(slots) * cfg.block_size_bytes
                op = "write" if do_write else "read"
                self.metrics.active.inc()
                t0 = time.perf_counter()
                try:
                    (pwrite_exact if do_write else pread_exact)(fd, buf, offset)
                finally:
                    self.metrics.active.dec()
                self.metrics.latency.labels(op=op).observe(time.perf_counter() - t0)
                self.metrics.ops.labels(op=op).inc()
                self.metrics.bytes.labels(op=op).inc(cfg.block_size_bytes)
                if phase >= 0:
                    with self._lock:
                        self.phase_bytes[phase][op] += cfg.block_size_bytes
        except BaseException as e:  # reported by run(); the other workers stop too
            self._errors.append(e)
            self.stopped.set()
        finally:
            buf.close()

    def run(self) -> None:
        """Wait for the start signal, do I/O until the duration or stop, join the workers."""
        cfg = self.config
        # Bounded wait: returns on start or stop (SIGTERM before start is a clean exit).
        while not self.started.wait(timeout=0.2):
            if self.stopped.is_set():
                return
        if self.stopped.is_set():
            return
        self._zero = time.monotonic()
        what = f"schedule {cfg.schedule.name}" if cfg.schedule is not None else cfg.mode
        log.info("start: %s, %d workers, %d KiB blocks", what, cfg.workers, cfg.block_size_bytes >> 10)
        fd = open_direct(cfg.data_file, write=cfg.writes)
        try:
            threads = [threading.Thread(target=self._worker, args=(i, fd), name=f"lp-{i}", daemon=True)
                       for i in range(cfg.workers)]
            for t in threads:
                t.start()
            deadline = None if cfg.duration_seconds is None else time.monotonic() + cfg.duration_seconds
            while not self.stopped.is_set():
                timeout = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if timeout <= 0:
                    break
                self.stopped.wait(timeout)
            self.stopped.set()
            for t in threads:
                t.join()
        finally:
            os.close(fd)
        if self._errors:
            raise self._errors[0]


def _watch_stdin(started: threading.Event) -> None:
    """Set ``started`` on a line ``start``; return quietly on EOF (stdin may be /dev/null)."""
    for line in sys.stdin:
        if line.strip().lower() == "start":
            started.set()
            return


def run(config: BatchConfig, *, host: str, port: int, prepare_only: bool = False, start_now: bool = False) -> int:
    metrics = BatchMetrics()
    job = BatchJob(config, metrics)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        job.stopped.set()

    def on_start(signum: int, frame: FrameType | None) -> None:
        job.started.set()

    # Handlers before anything slow, so a SIGTERM during preparation or an early SIGUSR1 is not lost.
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_start)
    server = None
    if not prepare_only:
        server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    try:
        t0 = time.monotonic()
        try:
            written = prepare_file(config.data_file, config.file_size_bytes, seed=config.seed, stop=job.stopped)
        except PreparationStopped as e:
            log.info("%s", e)
            print(json.dumps({"event": "stopped", "service": "lp_batch", "bytes": {"read": 0, "write": 0},
                              "during": "prepare"}), flush=True)
            return 0
        device = backing_device(config.data_file)
        if device is None:
            log.warning("%s is on a file system without a block device (tmpfs?): its I/O will not reach a disk",
                        config.data_file)
        prepared = {"event": "prepared", "service": "lp_batch", "pid": os.getpid(), "file": str(config.data_file),
                    "file_bytes": config.file_size_bytes, "written": written, "device": device,
                    "prepare_seconds": round(time.monotonic() - t0, 3)}
        if prepare_only:
            print(json.dumps(prepared), flush=True)
            return 0
        prepared.update(state="waiting for start", metrics_url=f"http://{host}:{port}/metrics")
        print(json.dumps(prepared), flush=True)
        log.info("prepared %s, waiting for start (SIGUSR1 or 'start' on stdin), pid %d", config.data_file, os.getpid())
        if start_now:
            job.started.set()
        threading.Thread(target=_watch_stdin, args=(job.started,), name="stdin", daemon=True).start()
        job.run()
        totals = {op: int(metrics.registry.get_sample_value("batch_io_bytes_total", {"op": op}) or 0)
                  for op in ("read", "write")}
        stopped: dict[str, object] = {"event": "stopped", "service": "lp_batch", "bytes": totals}
        if config.schedule is not None:
            stopped["schedule"] = config.schedule.name
            stopped["phases"] = [{"phase": i, "lp": p.lp, "bytes": moved}
                                 for i, (p, moved) in enumerate(zip(config.schedule.phases, job.phase_bytes))]
        print(json.dumps(stopped), flush=True)
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the LP data file lives (on the disk under test).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of /metrics.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of /metrics (required unless --prepare-only).")
@click.option("--mode", type=click.Choice(["read", "write", "mixed"]), default=None,
              help="The I/O of every operation.  [default: read]")
@click.option("--schedule", "schedule_name", default=None, metavar="NAME|FILE",
              help="Instead of --mode: follow a load schedule's LP phases (a built-in name or a YAML file, see "
                   "experiments/schedules.py) from the start signal on.")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="I/O threads (I/O depth).")
@click.option("--block-size", "block_size", default="1M", show_default=True, callback=_size,
              help="Bytes per operation, multiple of 4K (K/M/G suffixes).")
@click.option("--file-size", "file_size", default="1G", show_default=True, callback=_size,
              help="Size of the pre-written data file, multiple of 4K.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of I/O after the start signal (default: until SIGTERM).")
@click.option("--seed", default=0, show_default=True)
@click.option("--prepare-only", is_flag=True, help="Write the data file (or verify it) and exit.")
@click.option("--start-now", is_flag=True, help="Do not wait for SIGUSR1 / 'start' on stdin.")
def main(data_dir: Path, host: str, port: int | None, mode: Mode | None, schedule_name: str | None, workers: int,
         block_size: int, file_size: int, duration: float | None, seed: int, prepare_only: bool,
         start_now: bool) -> None:
    """LP batch job: large O_DIRECT reads/writes from one process, paused until told to start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lp_batch %(levelname)s %(message)s", stream=sys.stderr)
    if mode is not None and schedule_name is not None:
        raise click.UsageError("give --mode or --schedule, not both")
    try:
        schedule = load_schedule(schedule_name) if schedule_name is not None else None
    except ScheduleError as e:
        raise click.UsageError(f"--schedule: {e}") from None
    try:
        config = BatchConfig(data_dir, mode or "read", workers, block_size, file_size, duration, seed, schedule)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if port is None and not prepare_only:
        raise click.UsageError("--port is required unless --prepare-only")
    sys.exit(run(config, host=host, port=port or 0, prepare_only=prepare_only, start_now=start_now))


if __name__ == "__main__":
    main()
