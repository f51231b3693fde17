"""From a policy's level to concrete ``io.max`` / ``io.weight`` targets per LP group.

Called by the loop after every policy step. Pure functions: the level of
each SLO goes in, the wire models of :mod:`writer.api` come out.

Interpolation is geometric between an SLO's floor (level 0) and ceiling
(level 1): equal level steps are equal ratios of bandwidth, which is how disk
contention responds.

Where several SLOs govern the same LP group, the group gets the most
restrictive *concrete* value per key (``rbps``, ``wbps``, ``riops``,
``wiops``, weight), not the targets of whichever SLO has the lowest level:
levels of different ranges do not compare (level 0.3 of a 100M-200M range is
looser than level 0.5 of a 1M-max range). Groups whose selectors differ but
overlap (a pod could match both, e.g. ``{group-id: lp}`` and ``{group-id: lp,
tier: batch}``) are reported as conflicts too, not settled by push order;
the writer gives such a pod the most restrictive value per key of the groups
that select it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.config import RateRange, SloConfig, ThrottleConfig, WeightRange
from writer.api import DeviceNumber, GroupTarget, IoMax, MountRef

__all__ = [
    "interpolate", "rate_at", "weight_at", "group_target", "GroupDecision", "resolve_groups",
    "tightest_io_max", "selectors_overlap",
]

#: Levels this close to 1 count as 1 (limit lifted): float noise must not keep a ``max`` limit on.
_FREE_EPSILON = 1e-9


def interpolate(low: float, high: float, level: float) -> float:
    """Geometric interpolation: ``low`` at 0, ``high`` at 1, equal ratios per equal step."""
    if not 0.0 <= level <= 1.0 or math.isnan(level):
        raise ValueError(f"level must be in [0, 1], got {level}")
    if low <= 0 or high < low:
        raise ValueError(f"need 0 < low <= high, got {low}, {high}")
    return float(low * (high / low) ** level)


def rate_at(rng: RateRange, level: float) -> int | None:
    """The limit (bytes/s or IOPS) at ``level``; None means unlimited (``max``)."""
    if level >= 1.0 - _FREE_EPSILON:
        return rng.max
    return max(1, int(round(interpolate(rng.min, rng.finite_top, level))))


def weight_at(rng: WeightRange, level: float) -> int:
    return int(round(interpolate(rng.min, rng.max, level)))


def group_target(throttle: ThrottleConfig, level: float) -> GroupTarget:
    """The wire target for one LP group at ``level``."""

    def rate(r: RateRange | None) -> int | None:
        return None if r is None else rate_at(r, level)

    devices: str | list[DeviceNumber | MountRef] = throttle.devices if throttle.devices == "auto" else list(throttle.devices)
    return GroupTarget(
        name=throttle.group_name,
        selector=dict(throttle.selector),
        devices=devices,
        io_max=IoMax(
            rbps=rate(throttle.rbps), wbps=rate(throttle.wbps), riops=rate(throttle.riops), wiops=rate(throttle.wiops)
        ),
        io_weight=None if throttle.weight is None else weight_at(throttle.weight, level),
        level=level,
    )


_KEYS = ("rbps", "wbps", "riops", "wiops")


def _tightest(values: Sequence[int | None]) -> int | None:
    """The most restrictive of several limits; ``None`` (no limit) only if all are ``None``."""
    given = [v for v in values if v is not None]
    return min(given) if given else None


def tightest_io_max(limits: Sequence[IoMax]) -> IoMax:
    """Per key, the most restrictive value of ``limits``."""
    return IoMax(**{k: _tightest([getattr(m, k) for m in limits]) for k in _KEYS})


def selectors_overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether one pod could match both equality selectors (no shared key with different values)."""
    return all(a[k] == b[k] for k in a.keys() & b.keys())


@dataclass(frozen=True)
class GroupDecision:
    """The target in force for one LP group and the SLOs that asked for it."""

    group: str
    level: float
    target: GroupTarget
    #: SLO with the lowest level (informational: the limits are chosen per key, see ``limits_from``).
    winner: str
    #: Every SLO governing this group, in config order.
    slos: tuple[str, ...]
    #: Per key in force, the SLO whose value it is (ties: the SLO listed first).
    limits_from: Mapping[str, str] = field(default_factory=dict)
    #: Other groups whose selectors differ from this one's but overlap it.
    overlaps: tuple[str, ...] = ()

    @property
    def conflict(self) -> bool:
        return len(self.slos) > 1 or bool(self.overlaps)


def resolve_groups(
    decisions: Sequence[tuple[SloConfig, float]], *, failsafe_level: float | None = None
) -> list[GroupDecision]:
    """Merge per-SLO levels into one target per LP group: the most restrictive value per key.

    With ``failsafe_level`` each group's target also carries the limits the
    writers fall back to when the controller's lease runs out (the same
    per-key merge at that level), so both fail-safes tell one story.
    """
    by_group: dict[str, list[tuple[SloConfig, float]]] = {}
    for slo, level in decisions:
        by_group.setdefault(slo.throttle.group_name, []).append((slo, level))
    selectors = {g: dict(entries[0][0].throttle.selector) for g, entries in by_group.items()}
    out = []
    for group, entries in by_group.items():
        targets = [(slo.name, group_target(slo.throttle, level)) for slo, level in entries]
        limits_from: dict[str, str] = {}
        for key in _KEYS:
            best = _tightest([getattr(t.io_max, key) for _, t in targets])
            if best is not None:
                limits_from[key] = next(n for n, t in targets if getattr(t.io_max, key) == best)
        weight = _tightest([t.io_weight for _, t in targets])
        if weight is not None:
            limits_from["weight"] = next(n for n, t in targets if t.io_weight == weight)
        winner, level = min(((s.name, lv) for s, lv in entries), key=lambda e: e[1])
        failsafe = None
        if failsafe_level is not None:
            failsafe = tightest_io_max([group_target(s.throttle, failsafe_level).io_max for s, _ in entries])
        first = targets[0][1]
        target = first.model_copy(
            update={
                "io_max": tightest_io_max([t.io_max for _, t in targets]),
                "io_weight": weight,
                "level": level,
                "failsafe": failsafe,
            }
        )
        overlaps = tuple(
            other
            for other, sel in selectors.items()
            if other != group and sel != selectors[group] and selectors_overlap(sel, selectors[group])
        )
        out.append(
            GroupDecision(
                group=group,
                level=level,
                target=GroupTarget.model_validate(target.model_dump()),
                winner=winner,
                slos=tuple(s.name for s, _ in entries),
                limits_from=limits_from,
                overlaps=overlaps,
            )
        )
    return out
