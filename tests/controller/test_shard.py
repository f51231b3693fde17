"""Sharding writers across controller replicas: every node pushed by exactly one replica, stably."""

from __future__ import annotations

import hashlib

import pytest

from controller.push import StaticWriters
from controller.shard import Shard, ShardedWriters, aligned_clock, shard_of

URLS = [f"http://10.0.{i // 250}.{i % 250}:9100" for i in range(1000)]


def test_every_writer_belongs_to_exactly_one_of_n_replicas() -> None:
    slices = [ShardedWriters(StaticWriters(URLS), Shard(k, 3)).writers() for k in range(3)]
    assert sorted(u for s in slices for u in s) == sorted(URLS)
    assert all(250 < len(s) < 420 for s in slices), [len(s) for s in slices]  # roughly even


@pytest.mark.parametrize("node", ["node-a", "ip-10-0-3-17.ec2.internal", "gke-pool-1-abcd"])
def test_the_assignment_is_blake2b_of_the_node_name_so_every_process_and_version_agrees(node: str) -> None:
    # Not Python's hash(), which is salted per process: two replicas must agree, and so must two versions
    # of the controller during a rolling update. The rule is the documented one, computed independently here.
    expected = {n: int.from_bytes(hashlib.blake2b(node.encode(), digest_size=8).digest(), "big") % n for n in (2, 3, 7)}
    assert {n: shard_of(node, n) for n in (2, 3, 7)} == expected


def test_a_node_joining_moves_no_other_node() -> None:
    before = {u: k for k in range(2) for u in ShardedWriters(StaticWriters(URLS[:-1]), Shard(k, 2)).writers()}
    after = {u: k for k in range(2) for u in ShardedWriters(StaticWriters(URLS), Shard(k, 2)).writers()}
    assert all(after[u] == k for u, k in before.items())


def test_writers_are_sharded_by_node_name_when_the_directory_knows_it() -> None:
    nodes = {"http://10.0.0.1:9100": "node-a", "http://10.0.0.2:9100": "node-b"}
    mine = {k: ShardedWriters(StaticWriters(list(nodes)), Shard(k, 2), node_of=nodes.__getitem__).writers() for k in range(2)}
    for url, node in nodes.items():
        assert url in mine[shard_of(node, 2)]


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 2), (0, 0)], ids=["index-too-big", "negative", "no-shards"])
def test_an_impossible_shard_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        Shard(index, count)


def test_replicas_evaluate_at_the_start_of_the_same_interval_slot() -> None:
    a = aligned_clock(5.0, lambda: 1_700_000_003.2)
    b = aligned_clock(5.0, lambda: 1_700_000_001.9)
    assert a() == b() == 1_700_000_000.0
