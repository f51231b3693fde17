"""Where a policy's LP goes, phase by phase, against the oracle static and the references.

    python benchmarks/control_quality_phases.py RESULTS.json [--policy knee] [--seed 1] [--scenario NAME ...]

Reads the oracle's level and the references' levels (the clairvoyant's
pieces, the phase reference's phases) per scenario from a
``benchmarks/control_quality.py`` results file (so all are the ones that run
found), and replays the scenario on the simulator for the oracle, the policy
and the references the file has (same seed).

Prints one line per phase: mean level, LP MiB/s, share of intervals met and
mean P95 for each; then each total as a share of the oracle's LP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import control_quality as cq  # noqa: E402  (the benchmark's own runner and SLO documents)

from experiments.backends.sim import SimBackend, SimConfig  # noqa: E402
from experiments.schedules import DYNAMIC_SCHEDULES  # noqa: E402
from experiments.slo import load_base_slo  # noqa: E402

MIB = 2**20


def _segment(series: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    return series[(series["elapsed_seconds"] >= start) & (series["elapsed_seconds"] < end)]


def _met(seg: pd.DataFrame, target_ms: float) -> float:
    p95 = seg["hp_p95_ms"].dropna()
    return float((p95 <= target_ms).mean()) if len(p95) else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a benchmarks/control_quality.py output (for the oracle levels)")
    parser.add_argument("--policy", default="knee", help="a policy name of control_quality.py (default knee)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", action="append", default=None,
                        help="scenario to analyse (repeatable; default steady and the dynamic schedules)")
    args = parser.parse_args()
    records = json.loads(args.results.read_text())
    target_ms = float(records[0]["target_ms"])
    base, _ = load_base_slo(None)
    backend = SimBackend(SimConfig(base_slo=base))
    for name in args.scenario or ["steady", *DYNAMIC_SCHEDULES]:
        schedule = cq.SCENARIOS[name]
        mine = {r["policy"]: r for r in records if r["scenario"] == name}
        level = mine["oracle"]["oracle_level"]
        runs = {
            "oracle": cq._run(schedule, cq._slo("oracle", base, target_ms, backend, level), args.seed).series,
            args.policy: cq._run(schedule, cq._slo(args.policy, base, target_ms, backend), args.seed).series,
        }
        for ref, seconds in (("clairvoyant", cq.PIECE_SECONDS), ("phase-oracle", schedule.duration_seconds)):
            if ref in mine:
                runs[ref] = cq.run_pieces(schedule, mine[ref]["piece_levels"], base, target_ms, backend, args.seed,
                                          seconds=seconds).series
        print(f"== {name} (seed {args.seed}): oracle level {level:.3f}")
        totals = dict.fromkeys(runs, 0.0)
        for (start, end, what), phase in zip(schedule.segments(), schedule.phases):
            hp = f"{phase.hp_rate:g}" + (f"->{phase.hp_rate_end:g}" if phase.hp_rate_end is not None else "")
            line = f"  {start:4.0f}-{end:4.0f} s  HP {hp:>7}/s  LP {phase.lp:<6} {what:<9}"
            for key, series in runs.items():
                seg = _segment(series, start, end)
                lp = float(seg["lp_bytes_per_second"].fillna(0).sum()) / MIB
                totals[key] += lp
                line += (f" | {key}: level {seg['throttle_level'].mean():.3f} LP {lp / len(seg):6.1f} "
                         f"met {100 * _met(seg, target_ms):5.1f} % P95 {seg['hp_p95_ms'].mean():5.2f}")
            print(line)
        print("  LP as a share of the oracle's: " + ", ".join(
            f"{key} {100 * value / totals['oracle']:.0f} %" for key, value in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
