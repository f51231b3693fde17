"""Sharding the writers across controller replicas: replica k of n pushes to its own slice.

Used where one controller process cannot push to every node within a tick
(see the README's "Scale" section for where that starts on real figures).
Replica ``k`` of ``n`` takes the writers whose *node name* hashes to ``k``:
``blake2b(node) mod n``, a hash that is the same in every process (Python's
``hash()`` is salted per process, so it would not do). Each writer is pushed
by exactly one replica, so its generations stay monotonic (they come from
that replica's wall clock), and adding or removing a node never moves any
other node to another replica. On Kubernetes the replicas are a StatefulSet
and ``k`` is the pod's ordinal (the ``apps.kubernetes.io/pod-index`` label
through the downward API).

How the replicas agree on the decisions: each replica computes them itself,
from the same Prometheus data. The policies are deterministic functions of
their observation sequence, and with ``--shards`` the evaluation time is
aligned to the interval grid (:func:`aligned_clock`), so replicas that tick
in the same grid slot send Prometheus identical queries at an identical
evaluation time and read identical answers. The alternative, one replica
deciding and the others only fanning out, would need a replica-to-replica
channel and make the decider a single point of failure for every shard;
independent computation needs neither. What it cannot guarantee is
identity across different *histories*: a replica restarted mid-run starts
its policies afresh from the level its writers hold (``start_level:
in-force``, or the fail-safe level) and converges from there, like any
restarted controller.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from controller.push import WriterDirectory

__all__ = ["Shard", "ShardedWriters", "shard_of", "aligned_clock", "host_of"]


@dataclass(frozen=True)
class Shard:
    """Replica ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"the number of shards must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1}, got {self.index}")

    def owns(self, node: str) -> bool:
        return shard_of(node, self.count) == self.index


def shard_of(node: str, count: int) -> int:
    """The replica (0..count-1) that pushes to ``node``; the same in every process and run."""
    digest = hashlib.blake2b(node.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def host_of(url: str) -> str:
    """The ``host:port`` of a writer URL: its identity when no node name is known (static lists)."""
    return urlsplit(url).netloc


class ShardedWriters:
    """The writers of ``inner`` that belong to ``shard``; ``node_of`` names a writer's node."""

    def __init__(self, inner: WriterDirectory, shard: Shard, *, node_of: Callable[[str], str] = host_of) -> None:
        self.inner = inner
        self.shard = shard
        self._node_of = node_of

    def writers(self) -> list[str]:
        return [w for w in self.inner.writers() if self.shard.owns(self._node_of(w))]


def aligned_clock(interval_seconds: float, clock: Callable[[], float]) -> Callable[[], float]:
    """A wall clock that reads the start of the current interval slot (so replicas evaluate at the same time)."""

    def now() -> float:
        return math.floor(clock() / interval_seconds) * interval_seconds

    return now
