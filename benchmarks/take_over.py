"""What a controller restart costs, by where its policies start (``start_level``), on the simulator.

Usage::

    python benchmarks/take_over.py [--seeds 1,2,3] [--output benchmarks/results/take_over.json]

For each loop (the template's gated PID, the plain PID, AIMD, knee) and schedule
(steady and the three dynamic ones), it plays the schedule three ways on the same
seed: without a restart; with the controller restarted half-way through and
starting from the fail-safe level (``start_level: failsafe``, what every
restart did before 2026-11-30); and restarted there starting from the level the
writers hold (``start_level: in-force``, the default). The restart is
:func:`experiments.backends.sim.simulate`'s ``restart_at``: the next tick takes
over, no tick is missed. Over the minute after the restart it reports:

* ``lp_fraction``: LP bytes moved, as a fraction of the run without a restart;
* ``violations`` / ``violations_no_restart``: intervals whose P95 (the exported
  5 s window) is over the target, with the restart and without;
* ``level_before``: the level pushed a second before the restart;
  ``level_after``: the first level the restarted controller pushed (one policy
  step from where it started).

Means over the seeds (the level figures: the first seed's). Rebuilding a policy
drops what it had learned: for AIMD, its memory of the last cliff, so its
restarted climb can move more LP than the run without a restart. It prints a table
and writes the JSON list of records. The same target as
``benchmarks/control_quality.py`` (10 ms).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.backends.sim import SimBackend, SimConfig, SimResult, simulate
from experiments.schedules import BUILTIN_SCHEDULES, DYNAMIC_SCHEDULES, Schedule
from experiments.slo import load_base_slo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import control_quality as cq  # noqa: E402  (a script beside this one, not a package)

TARGET_MS = 10.0
WINDOW_SECONDS = 60.0
LOOPS = ("pid-gated", "pid", "aimd", "knee")
SCHEDULES = ("steady", *DYNAMIC_SCHEDULES)
STARTS = ("failsafe", "in-force")


@functools.cache
def _base() -> tuple[dict[str, Any], SimBackend]:
    """The template SLO and the sim backend's wiring, read once for every run."""
    base, _ = load_base_slo(None)
    return base, SimBackend(SimConfig(base_slo=base))


def _run(schedule: Schedule, policy: str, seed: int, start_level: str, restart_at: float | None) -> SimResult:
    base, backend = _base()
    slo = cq._slo(policy, base, TARGET_MS, backend)
    assert slo is not None
    slo["start_level"] = start_level
    return simulate(schedule, SimConfig(seed=seed), slo=slo, restart_at=() if restart_at is None else (restart_at,))


def _window(series: pd.DataFrame, at: float) -> pd.DataFrame:
    return series[(series["elapsed_seconds"] >= at) & (series["elapsed_seconds"] < at + WINDOW_SECONDS)]


def _level_at(res: SimResult, at: float) -> float:
    t = res.decisions["time"] - res.start
    return float(res.decisions.loc[(t - at).abs().idxmin(), "level"])


def cell(policy: str, name: str, seeds: list[int]) -> list[dict[str, Any]]:
    schedule = BUILTIN_SCHEDULES[name]
    at = round(schedule.duration_seconds / 2)
    plain = {seed: _run(schedule, policy, seed, "failsafe", None) for seed in seeds}
    out = []
    for start in STARTS:
        rows = []
        for seed in seeds:
            restarted = _run(schedule, policy, seed, start, at)
            before, after = _window(plain[seed].series, at), _window(restarted.series, at)
            moved = before["lp_bytes_per_second"].fillna(0).sum()
            rows.append({
                "lp_fraction": after["lp_bytes_per_second"].fillna(0).sum() / moved if moved > 0 else float("nan"),
                "violations": int((after["hp_p95_ms"] > TARGET_MS).sum()),
                "violations_no_restart": int((before["hp_p95_ms"] > TARGET_MS).sum()),
                "level_before": _level_at(plain[seed], at - 1),
                "level_after": _level_at(restarted, at),
            })
        out.append({
            "policy": policy, "schedule": name, "start_level": start, "restart_at_seconds": at,
            "lp_fraction": float(np.mean([r["lp_fraction"] for r in rows])),
            "violations": float(np.mean([r["violations"] for r in rows])),
            "violations_no_restart": float(np.mean([r["violations_no_restart"] for r in rows])),
            "level_before": rows[0]["level_before"], "level_after": rows[0]["level_after"],
            "seeds": seeds, "target_ms": TARGET_MS, "window_seconds": WINDOW_SECONDS,
        })
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated simulator seeds (default 1,2,3)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/take_over.json"),
                        help="JSON list of records (default %(default)s)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    began = time.monotonic()
    records: list[dict[str, Any]] = []
    head = (f"{'policy':<10} {'schedule':<10} {'start_level':<11} {'LP vs no restart':>16} {'violations':>10} "
            f"{'(no restart)':>12} {'level before -> at restart':>26}")
    print(head)
    print("-" * len(head))
    for policy in LOOPS:
        for name in SCHEDULES:
            for r in cell(policy, name, seeds):
                records.append(r)
                print(f"{policy:<10} {name:<10} {r['start_level']:<11} {100 * r['lp_fraction']:>15.1f}% "
                      f"{r['violations']:>10.1f} {r['violations_no_restart']:>12.1f} "
                      f"{r['level_before']:>17.3f} -> {r['level_after']:.3f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(records, indent=1))
    print(f"\n{len(records)} records in {time.monotonic() - began:.0f} s; seeds {seeds}; target {TARGET_MS:g} ms; "
          f"restart half-way through each schedule; figures over the {WINDOW_SECONDS:g} s after it -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
