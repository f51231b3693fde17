"""Convergence figures of a controlled run: settling after every load step, reaction to every violation.

Used by the report (``report.md``'s convergence table for drcio and dynamic
scenarios) and by ``benchmarks/control_quality.py``. Works on the exported
series frame (1 s rows: ``elapsed_seconds``, ``hp_p95_ms``, ``throttle_level``)
and the load steps ``(start, end, what)`` of the scenario
(:meth:`experiments.schedules.Schedule.segments`; a steady scenario has one,
its start). Counted in intervals = rows.

* **Settling** after a step: intervals until the level stays within
  ``band`` (default 0.05, about 30 % of bandwidth in the SLO's geometric
  range) of where it ends the segment (mean of its last five intervals).
* **SLO settling**: intervals until the P95 meets the target for the rest
  of the segment (intervals without a P95 do not count against it).
* **Reaction** to a violation: from its onset (an interval over the target
  after one within it) to the first interval with a tighter limit in force
  than the one before the onset (a lower level; 0 when the loop cut on the
  onset's own tick); -1 when no tighter limit came.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["SETTLE_BAND", "settling", "slo_settling", "reactions", "step_table"]

SETTLE_BAND = 0.05


def _segment(series: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    return series[(series["elapsed_seconds"] >= start) & (series["elapsed_seconds"] < end)]


def settling(series: pd.DataFrame, start: float, end: float, *, band: float = SETTLE_BAND) -> int:
    """Intervals after ``start`` until the level stays within ``band`` of where the segment ends."""
    seg = _segment(series, start, end)
    if seg.empty:
        return 0
    level = seg["throttle_level"].fillna(1.0).to_numpy()
    final = float(np.mean(level[-min(5, len(level)):]))
    bad = np.flatnonzero(np.abs(level - final) > band)
    return 0 if len(bad) == 0 else int(bad[-1]) + 1


def slo_settling(series: pd.DataFrame, start: float, end: float, target_ms: float) -> int:
    """Intervals after ``start`` until the P95 meets ``target_ms`` for the rest of the segment."""
    seg = _segment(series, start, end)
    bad = np.flatnonzero((seg["hp_p95_ms"] > target_ms).to_numpy())
    return 0 if len(bad) == 0 else int(bad[-1]) + 1


def reactions(series: pd.DataFrame, target_ms: float, *, from_seconds: float = 0.0) -> list[tuple[float, int]]:
    """(onset elapsed seconds, intervals to a tighter limit or -1) for every violation onset after ``from_seconds``."""
    s = series[series["elapsed_seconds"] >= from_seconds].reset_index(drop=True)
    over = (s["hp_p95_ms"] > target_ms).to_numpy()
    level = s["throttle_level"].fillna(1.0).to_numpy()
    out = []
    for i in range(len(s)):
        if over[i] and (i == 0 or not over[i - 1]):
            before = level[i - 1] if i > 0 else level[i]  # the limit the violation happened under
            later = np.flatnonzero(level[i:] < before - 1e-6)
            out.append((float(s["elapsed_seconds"].iloc[i]), int(later[0]) if len(later) else -1))
    return out


def step_table(series: pd.DataFrame, steps: Sequence[tuple[float, float, str]], target_ms: float) -> pd.DataFrame:
    """One row per load step: when, what, settling, SLO settling, and the worst reaction inside it."""
    found = reactions(series, target_ms)
    rows = []
    for start, end, what in steps:
        inside = [r for t, r in found if start <= t < end]
        worst = None if not inside else (-1 if -1 in inside else max(inside))
        rows.append({"at_seconds": start, "step": what, "settling_intervals": settling(series, start, end),
                     "slo_settling_intervals": slo_settling(series, start, end, target_ms),
                     "violations": len(inside), "worst_reaction_intervals": worst})
    return pd.DataFrame(rows, columns=["at_seconds", "step", "settling_intervals", "slo_settling_intervals",
                                       "violations", "worst_reaction_intervals"])
