"""The controller's lease on this writer, and what the fail-safe means.

The reconciler (:mod:`writer.reconcile`) owns one :class:`Lease`: every
accepted push renews it with the push's ``lease_ttl_seconds``; before the
first push the configured ``failsafe.ttl`` runs from start. When it runs out
the reconciler stops following the last push and applies the fail-safe
(:class:`Failsafe`). The clock is injected, so tests expire a lease by moving
a fake clock instead of sleeping.

Generations: a push lower than the last accepted one is stale (an old
controller or a reordered request) and refused; an equal one is a replay of
the same desired state and is applied again (idempotent) and renews the lease,
but only if its body is the same: a replayed generation with a different body
is refused (the reconciler compares them).

TTL cap: a push asks for its own lease TTL, but the writer's config caps it
(``failsafe.max_ttl``, default 5 minutes), so a broken or hostile controller
cannot hold off the fail-safe for a day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from writer.cgroups import UNLIMITED, Limits

__all__ = ["FailsafeMode", "Failsafe", "Lease", "LeaseState", "GenerationCheck"]

FailsafeMode = Literal["static", "release", "hold"]
GenerationCheck = Literal["new", "replay", "stale"]


def _bound(pushed: int | None, ceiling: int | None, floor: int) -> int | None:
    value = pushed if ceiling is None else ceiling if pushed is None else min(pushed, ceiling)
    return None if value is None else max(value, floor)


@dataclass(frozen=True)
class Failsafe:
    """The configured fail-safe: ``static`` limits, ``release`` (lift all) or ``hold`` (write nothing).

    In ``static`` mode a push may say what to fall back to per group (the
    controller's ``failsafe.level`` as limits, :attr:`writer.api.GroupTarget.failsafe`).
    The writer's own config bounds it: never looser than :attr:`limits` (the
    static limits are the loosest fail-safe this node accepts), never tighter
    than :attr:`floor_bps` / :attr:`floor_iops` (a broken controller must not
    starve LP to a standstill when it goes away).
    """

    mode: FailsafeMode = "static"
    #: The static limits (only used in ``static`` mode); default read 200M, write 50M.
    limits: Limits = Limits(rbps=200 * 1024**2, wbps=50 * 1024**2)
    #: Lowest bandwidth (bytes/s) a pushed fail-safe may set.
    floor_bps: int = 1024**2
    #: Lowest IOPS a pushed fail-safe may set.
    floor_iops: int = 10

    def bounded(self, pushed: Limits | None) -> Limits | None:
        """The limits to apply on expiry for a group whose last push said ``pushed``."""
        base = self.limits_in_failsafe()
        if self.mode != "static" or pushed is None or base is None:
            return base
        return Limits(
            rbps=_bound(pushed.rbps, base.rbps, self.floor_bps),
            wbps=_bound(pushed.wbps, base.wbps, self.floor_bps),
            riops=_bound(pushed.riops, base.riops, self.floor_iops),
            wiops=_bound(pushed.wiops, base.wiops, self.floor_iops),
        )

    def limits_in_failsafe(self) -> Limits | None:
        """The limits to enforce while failed safe; ``None`` for ``hold`` (leave the files alone)."""
        if self.mode == "static":
            return self.limits
        if self.mode == "release":
            return UNLIMITED
        return None


@dataclass(frozen=True)
class LeaseState:
    """A snapshot for /status and metrics."""

    generation: int | None
    ttl_seconds: float
    seconds_left: float
    expired: bool
    #: Whether any push was ever accepted (before that, ``ttl_seconds`` is the file's failsafe.ttl).
    pushed: bool


class Lease:
    """Tracks the last accepted generation and when the lease runs out. Not thread-safe: the reconciler locks."""

    def __init__(self, *, initial_ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if initial_ttl_seconds <= 0:
            raise ValueError(f"initial_ttl_seconds must be > 0, got {initial_ttl_seconds}")
        self._clock = clock
        self._renewed_at = clock()
        self._ttl = initial_ttl_seconds
        self._generation: int | None = None

    @property
    def generation(self) -> int | None:
        return self._generation

    def check(self, generation: int) -> GenerationCheck:
        """Classify a push's generation against the last accepted one."""
        if self._generation is None or generation > self._generation:
            return "new"
        return "replay" if generation == self._generation else "stale"

    def renew(self, generation: int, ttl_seconds: float) -> None:
        """Accept a push: remember its generation and restart the lease with its TTL."""
        if self.check(generation) == "stale":
            raise ValueError(f"generation {generation} is older than {self._generation}")
        self._generation = generation
        self._ttl = ttl_seconds
        self._renewed_at = self._clock()

    def expired(self) -> bool:
        return self._clock() - self._renewed_at > self._ttl

    def state(self) -> LeaseState:
        left = self._ttl - (self._clock() - self._renewed_at)
        return LeaseState(
            generation=self._generation,
            ttl_seconds=self._ttl,
            seconds_left=max(0.0, left),
            expired=left < 0,
            pushed=self._generation is not None,
        )
