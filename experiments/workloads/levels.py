"""The ``--load-level`` presets of run-experiment: HP request rate and LP intensity.

Read by the orchestrator (``experiments.cli`` / scenarios) to start the load
generator and the LP batch job; ``LoadLevel.loadgen_args()`` and
``LoadLevel.lp_args()`` give the workloads' CLI flags.

Why these numbers. Measured on the 2-core dev VM, disk ``vda``, HP = ``hp_gnn``
with its defaults (32 scoring threads, ~10 dependent 4 KiB O_DIRECT reads per
request), 10 s per point, client-side P95. Other engineers' experiments shared
the machine during most runs, so read the ranges, not the digits:

- HP rate 100 / 200 / 300 requests/s. The service costs ~2 ms of CPU per
  request (21 % / 31-38 % / 45-58 % of one core), the load generator ~0.5 ms
  (9-15 %), the LP job 8-18 %: even ``high`` with its LP job stays under one of
  the two cores, leaving the other to Prometheus, the controller and the
  writer. HP P95 alone: 5-12 ms at every rate in quiet windows (the reads take
  ~0.06 ms each; the rest is Python, HTTP and scheduling), up to 44 ms when
  another experiment ran beside it.
- LP intensity rises with the level, 1 MiB O_DIRECT blocks throughout (the
  batch/ETL pattern). Unthrottled, 4 threads read ~1.0-1.2 GB/s or write
  ~2.8-3.0 GB/s. Beside it the HP P95 rose to 37-58 ms (low: 100/s, read x2),
  31-136 ms (medium: 200/s, mixed x4) and 67 ms to 1.1 s (high: 300/s, mixed x8):
  ``high`` sits at the HP service's capacity under unthrottled LP (32 threads /
  ~100 ms per request) and can tip into queueing with dropped requests — it is
  the stress level. For comparison at 200/s: read x1 13 ms, read x4 73-115 ms,
  write x1 13 ms, write x4 39-141 ms.
- ``mixed`` (half the workers read, half overwrite in place) exercises both
  ``rbps`` and ``wbps`` limits; ``low`` is read-only so its throttle has one knob.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiments.workloads.lp_batch import Mode

__all__ = ["LOAD_LEVELS", "LoadLevel", "load_level"]


@dataclass(frozen=True)
class LoadLevel:
    name: str
    hp_rate_per_second: float
    """Mean Poisson arrival rate of HP scoring requests (open loop)."""
    lp_mode: Mode
    lp_workers: int
    """LP I/O threads in the one LP process (its I/O depth)."""
    lp_block_size_bytes: int
    hp_max_in_flight: int = 256
    """Outstanding HP requests beyond which arrivals are dropped (counted), not queued."""

    def loadgen_args(self) -> list[str]:
        """Flags for ``python -m experiments.workloads.loadgen`` (add --url, --duration, --out)."""
        return ["--rate", f"{self.hp_rate_per_second:g}", "--max-in-flight", str(self.hp_max_in_flight)]

    def lp_args(self) -> list[str]:
        """Flags for ``python -m experiments.workloads.lp_batch`` (add --data-dir, --port)."""
        return ["--mode", self.lp_mode, "--workers", str(self.lp_workers),
                "--block-size", f"{self.lp_block_size_bytes >> 10}K"]


_MIB = 1 << 20

LOAD_LEVELS: dict[str, LoadLevel] = {
    "low": LoadLevel("low", 100.0, "read", 2, _MIB),
    "medium": LoadLevel("medium", 200.0, "mixed", 4, _MIB),
    "high": LoadLevel("high", 300.0, "mixed", 8, _MIB),
}


def load_level(name: str) -> LoadLevel:
    """The level called ``name``, or a ``ValueError`` listing the valid names."""
    try:
        return LOAD_LEVELS[name]
    except KeyError:
        raise ValueError(f"unknown load level {name!r}; choose one of {', '.join(LOAD_LEVELS)}") from None
