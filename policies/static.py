"""The static policy: a fixed level, whatever the sensor says.

Built by :func:`policies.registry.build_policy` from ``{kind: static, level}``.
It is the classic fixed ``io.max`` expressed as a level: the baseline the
experiments compare the closed-loop policies against, and a safe choice for
an SLO whose sensor cannot be trusted. It ignores the sensor entirely, so it
has no fail-safe to fall back to (the fail-safe argument is accepted for a
uniform constructor and unused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from policies.base import FailSafe, Observation, checked_initial_level, range_problem, raise_problems

__all__ = ["StaticParams", "StaticPolicy"]


@dataclass(frozen=True)
class StaticParams:
    """level: the LP allowance in [0, 1], always. Required: there is no
    sensible default for a fixed limit, so the SLO file must say it."""

    kind: ClassVar[str] = "static"

    level: float

    def __post_init__(self) -> None:
        raise_problems("static policy", [range_problem("level", self.level, ge=0, le=1)])


class StaticPolicy:
    """Always answers ``params.level``."""

    def __init__(self, params: StaticParams, *, failsafe: FailSafe = FailSafe(), initial_level: float = 1.0) -> None:
        self._initial_level = checked_initial_level("static", params, StaticParams, initial_level)
        self.params = params
        # Before the first step the "last output" is the initial level, as for
        # the other policies; from then on it is the fixed level.
        self._level = self._initial_level

    @property
    def level(self) -> float:
        return self._level

    @property
    def terms(self) -> dict[str, float]:
        return {"static_level": float(self.params.level)}

    def reset(self) -> None:
        self._level = self._initial_level

    def step(self, observation: Observation) -> float:
        self._level = float(self.params.level)
        return self._level
