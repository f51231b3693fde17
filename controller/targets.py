"""From a policy's level to concrete ``io.max`` / ``io.weight`` targets per LP group.

Called by the loop after every policy step. Pure functions: the level of
each SLO goes in, the wire models of :mod:`writer.api` come out.

Interpolation is geometric between an SLO's floor (level 0) and ceiling
(level 1): equal level steps are equal ratios of bandwidth, which is how disk
contention responds. Where several SLOs govern the same LP group the most
restrictive (lowest) level wins, and the overlap is reported as a conflict
so an operator can see that one SLO's wish was overruled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from controller.config import RateRange, SloConfig, ThrottleConfig, WeightRange
from writer.api import DeviceNumber, GroupTarget, IoMax, MountRef

__all__ = ["interpolate", "rate_at", "weight_at", "group_target", "GroupDecision", "resolve_groups"]

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


@dataclass(frozen=True)
class GroupDecision:
    """The target in force for one LP group and the SLOs that asked for it."""

    group: str
    level: float
    target: GroupTarget
    #: SLO whose level won (the most restrictive).
    winner: str
    #: Every SLO governing this group, in config order.
    slos: tuple[str, ...]

    @property
    def conflict(self) -> bool:
        return len(self.slos) > 1


def resolve_groups(decisions: Sequence[tuple[SloConfig, float]]) -> list[GroupDecision]:
    """Merge per-SLO levels into one target per LP group; the lowest level wins.

    Ties go to the SLO listed first, so the result does not depend on dict order.
    """
    by_group: dict[str, list[tuple[SloConfig, float]]] = {}
    for slo, level in decisions:
        by_group.setdefault(slo.throttle.group_name, []).append((slo, level))
    out = []
    for group, entries in by_group.items():
        winner, level = min(entries, key=lambda e: e[1])
        out.append(
            GroupDecision(
                group=group,
                level=level,
                target=group_target(winner.throttle, level),
                winner=winner.name,
                slos=tuple(s.name for s, _ in entries),
            )
        )
    return out
