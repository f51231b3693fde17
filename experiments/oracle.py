"""The honest oracle: the best fixed level, found by bisection until its LP throughput is pinned.

Used by the scenario runner (the ``oracle`` scenario) and by
``benchmarks/control_quality.py``. A fixed grid of levels overstates or
understates the best fixed limit by up to a grid step (the README's first
runs: the true best lay between sweep-3 at 98 MiB/s and sweep-4 at 208
MiB/s). Here the level is bisected between one that meets the SLO and one
that does not, until the LP throughput of the two differs by at most
``tolerance`` (5 %): the best fixed limit's throughput lies between them,
and that interval is the oracle's own uncertainty, reported with it.

Each probe is a whole run at a fixed level (for a dynamic schedule, the whole
schedule), judged by the caller's ``probe`` function. It assumes what the
plant shows: more level, more LP bytes and more HP latency. Noise can break
that assumption near the knee; the caller should give every probe the same
seed where it can (the simulator does), so probes differ only in the level.
A real host breaks it too, when it stalls during one probe: that probe
misses the target far more often than a higher level did. Given
``recheck_gap``, such a probe is run once more at the same level and the
later run stands (a lower limit cannot slow HP down more, so the first run
measured the host, not the level).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Probe", "OracleResult", "bisect_oracle", "bisect_pieces", "PiecesResult", "ascend_pieces"]


@dataclass(frozen=True)
class Probe:
    """One fixed-level run: its level, LP bytes/s, whether it met the SLO, and (if measured) how often.

    attainment: the share of intervals that met the target, or None; what
        ``bisect_oracle``'s ``recheck_gap`` compares.
    """

    level: float
    lp_bytes_per_second: float
    meets: bool
    attainment: float | None = None


@dataclass(frozen=True)
class OracleResult:
    """The best fixed level found and how sure we are.

    level / lp_bytes_per_second: the highest probed level that met the SLO
        (None if even level 0 missed it: no fixed limit in the range meets the SLO).
    upper_level / upper_lp_bytes_per_second: the lowest probed level that
        missed it (None if level 1 met it: the oracle is exact, "no limit").
    uncertainty: ``upper_lp / lp - 1``, the most the true best fixed limit
        can move beyond ``lp_bytes_per_second``; 0 when exact.
    probes: every probe, in order.
    """

    level: float | None
    lp_bytes_per_second: float
    upper_level: float | None
    upper_lp_bytes_per_second: float
    uncertainty: float
    probes: list[Probe] = field(default_factory=list)

    def describe(self) -> str:
        if self.level is None:
            return f"no fixed level meets the SLO (level 0 misses it; {len(self.probes)} probes)"
        if self.upper_level is None:
            return f"level {self.level:.3f} (no limit needed; {len(self.probes)} probes)"
        return (f"level {self.level:.3f} .. {self.upper_level:.3f}, LP {self.lp_bytes_per_second / 2**20:.1f} .. "
                f"{self.upper_lp_bytes_per_second / 2**20:.1f} MiB/s (+{100 * self.uncertainty:.1f} %; "
                f"{len(self.probes)} probes)")


def bisect_oracle(probe: Callable[[float], Probe], *, tolerance: float = 0.05, max_probes: int = 14,
                  min_step: float = 1e-3, recheck_gap: float | None = None) -> OracleResult:
    """Bisect the level in [0, 1] until the met / missed bracket's LP throughputs differ by at most ``tolerance``.

    Probes level 1 first (if it meets the SLO, no limit is needed), then 0,
    then midpoints. Stops at ``max_probes`` or when the bracket is narrower
    than ``min_step`` in level, and reports the uncertainty it reached.
    With ``recheck_gap``, a probe that misses with an attainment more than
    that below an earlier probe's at a higher level is run once more (if the
    cap allows), and the repeat stands; ``probes`` lists both runs. ``probe``
    is called with the same level twice only then.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    probes: list[Probe] = []

    def disagrees(p: Probe) -> bool:
        return (recheck_gap is not None and not p.meets and p.attainment is not None
                and any(q.level > p.level and q.attainment is not None and q.attainment - p.attainment > recheck_gap
                        for q in probes))

    def run(level: float) -> Probe:
        p = probe(level)
        again = disagrees(p) and len(probes) + 1 < max_probes
        probes.append(p)
        if again:
            p = probe(level)
            probes.append(p)
        return p

    hi = run(1.0)
    if hi.meets:
        return OracleResult(1.0, hi.lp_bytes_per_second, None, math.nan, 0.0, probes)
    lo = run(0.0)
    if not lo.meets:
        return OracleResult(None, 0.0, 0.0, lo.lp_bytes_per_second, math.inf, probes)

    def spread(a: Probe, b: Probe) -> float:
        return b.lp_bytes_per_second / a.lp_bytes_per_second - 1 if a.lp_bytes_per_second > 0 else math.inf

    while (spread(lo, hi) > tolerance and len(probes) < max_probes and hi.level - lo.level > min_step):
        mid = run((lo.level + hi.level) / 2)
        if mid.meets:
            lo = mid
        else:
            hi = mid
    return OracleResult(lo.level, lo.lp_bytes_per_second, hi.level, hi.lp_bytes_per_second, spread(lo, hi), probes)


def bisect_pieces(meets: Callable[[Sequence[float], int], bool], held: Sequence[bool], *,
                  resolution: float = 0.01, first_step: float = 0.04) -> list[float]:
    """Levels for consecutive pieces of a run, each the highest that meets the SLO given the ones before it.

    The clairvoyant reference of ``benchmarks/control_quality.py``: what a
    loop that knew each piece's best level at once would set. Greedy in time
    order: piece ``i``'s level is searched in [0, 1] to ``resolution``, with
    the earlier pieces at the levels already found and the later ones at 0;
    ``meets(levels, i)`` judges piece ``i`` (the caller decides what counts,
    e.g. its intervals and the window that spills into the next piece).
    The search starts at the level before (0.5 for the first piece) and
    gallops away from it by ``first_step``, doubling, until it brackets the
    answer, then bisects: neighbouring pieces mostly differ by little, so
    that takes fewer probes than bisecting all of [0, 1].
    A ``held`` piece is not searched: it keeps the level before it (piece 0
    is never held), as a loop that cannot see the load in it must (no HP
    traffic to measure, or LP idle).

    A piece that misses even at level 0 (the plant misses without LP) gets
    0. Greedy is not optimal over the whole run (a lower level now may allow
    a higher one next), so this is a reference, not a bound.
    """
    if not 0 < resolution < 1:
        raise ValueError(f"resolution must be in (0, 1), got {resolution}")
    if not 0 < first_step <= 1:
        raise ValueError(f"first_step must be in (0, 1], got {first_step}")
    levels = [0.0] * len(held)
    for i, keep in enumerate(held):
        if keep and i > 0:
            levels[i] = levels[i - 1]
            continue
        trial = list(levels)

        def ok(level: float) -> bool:
            trial[i] = level
            return meets(trial, i)

        guess = levels[i - 1] if i > 0 else 0.5
        # lo: highest level seen to meet (-1: none yet); hi: lowest seen to miss (2: none yet).
        lo, hi = (guess, 2.0) if ok(guess) else (-1.0, guess)
        step = first_step
        while 0.0 <= lo < 1.0 < hi:  # gallop up until a level misses or 1 meets
            candidate = min(1.0, lo + step)
            lo, hi = (candidate, hi) if ok(candidate) else (lo, candidate)
            step *= 2
        while lo < 0.0 < hi:  # gallop down until a level meets or 0 misses
            candidate = max(0.0, hi - step)
            lo, hi = (candidate, hi) if ok(candidate) else (lo, candidate)
            step *= 2
        if lo < 0.0 or hi > 1.0:
            levels[i] = max(0.0, lo)
            continue
        while hi - lo > resolution:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        levels[i] = lo
    return levels


@dataclass(frozen=True)
class PiecesResult:
    """Levels per piece from :func:`ascend_pieces`, the whole run's attainment and LP bytes at them, and the cost."""

    levels: list[float]
    attainment: float
    lp_bytes: float
    evaluations: int


def ascend_pieces(judge: Callable[[Sequence[float]], tuple[float, float]], start: Sequence[float],
                  held: Sequence[bool], *, bar: float, steps: Sequence[float] = (0.04, 0.02, 0.01)) -> PiecesResult:
    """Levels for consecutive pieces of a run that share one miss budget: the most LP bytes while the run meets ``bar``.

    The phase reference of ``benchmarks/control_quality.py``: what setting
    each phase's level at once, chosen in hindsight, moves, held to the same
    bar as the oracle static (the attainment of the whole run), so the misses
    that bar allows are spent where they buy the most LP. ``judge(levels)``
    runs the whole schedule with piece ``i`` at ``levels[i]`` and returns
    (attainment, LP bytes).

    Starts from ``start``, which must meet ``bar`` (the oracle static's level
    everywhere: the result then moves at least the oracle's bytes), and
    climbs: at each step size in turn (coarse to fine), it raises by that
    step the one piece whose raise moves the most bytes, as long as the run
    keeps its attainment (the coarse steps only take up headroom); at the
    last, finest step it spends the budget: the raise that buys the most
    bytes per attainment given up (one that gives none up first), as long
    as the run still meets ``bar``. When no raise qualifies, it goes on with
    the next step size. Spending only in fine steps keeps a coarse step from
    overshooting one piece's knee with budget another piece would have used
    better. Levels stay within [0, 1]. A ``held`` piece is never chosen: it
    keeps the level of the piece before it (piece 0 is never held), as a
    loop that cannot see the load in it must (no HP traffic to measure, or
    LP idle).

    Greedy and local (a lower level in one piece never frees budget for
    another), so this is a reference, not a bound.
    """
    if len(start) != len(held):
        raise ValueError(f"start has {len(start)} levels for {len(held)} pieces")
    if not steps or any(not 0 < step <= 1 for step in steps):
        raise ValueError(f"steps must be in (0, 1], got {list(steps)}")
    seen: dict[tuple[float, ...], tuple[float, float]] = {}

    def follow(levels: Sequence[float]) -> tuple[float, ...]:
        out: list[float] = []
        for i, level in enumerate(levels):
            out.append(out[-1] if held[i] and i > 0 else round(min(1.0, max(0.0, level)), 6))
        return tuple(out)

    def judged(levels: tuple[float, ...]) -> tuple[float, float]:
        if levels not in seen:
            seen[levels] = judge(list(levels))
        return seen[levels]

    current = follow(start)
    attainment, lp = judged(current)
    if attainment < bar:
        raise ValueError(f"the start levels {list(current)} do not meet the bar ({attainment:.4f} < {bar})")
    free = [i for i, keep in enumerate(held) if not (keep and i > 0)]
    for n, step in enumerate(steps):
        while True:
            floor = bar if n == len(steps) - 1 else attainment  # coarse steps keep the attainment, the last spends
            best: tuple[float, float, tuple[float, ...]] | None = None  # (bytes per attainment, bytes, levels)
            for i in free:
                if current[i] >= 1.0:
                    continue
                trial = follow([*current[:i], current[i] + step, *current[i + 1:]])
                t_attainment, t_lp = judged(trial)
                if t_attainment < floor or t_lp <= lp:
                    continue
                worth = (t_lp - lp) / (attainment - t_attainment) if attainment > t_attainment else math.inf
                if best is None or (worth, t_lp) > best[:2]:
                    best = (worth, t_lp, trial)
            if best is None:
                break
            current = best[2]
            attainment, lp = judged(current)
    return PiecesResult(list(current), attainment, lp, len(seen))
