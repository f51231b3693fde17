"""The HP service's data: deterministic graph and feature store, read back with O_DIRECT."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from experiments.workloads.featurestore import (
    FEATURES,
    RECORD_BYTES,
    FeatureStore,
    StoreSpec,
    build_store,
    ensure_store,
)
from tests.experiments.test_workloads_support import scratch  # noqa: F401  (fixture)

SMALL = StoreSpec(seed=3, nodes=512)  # 2 MiB: enough records for a graph with hubs, quick to build


def _digest(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data_dir.iterdir())}


def test_the_same_seed_builds_byte_identical_stores(scratch: Path) -> None:
    build_store(scratch / "a", SMALL)
    build_store(scratch / "b", SMALL)
    build_store(scratch / "c", StoreSpec(seed=4, nodes=512))
    assert _digest(scratch / "a") == _digest(scratch / "b")
    assert _digest(scratch / "a")[FEATURES] != _digest(scratch / "c")[FEATURES]


def test_a_matching_store_is_reused_and_a_different_spec_rebuilds_it(scratch: Path) -> None:
    _, built_first = ensure_store(scratch, SMALL)
    _, built_again = ensure_store(scratch, SMALL)
    manifest, built_other = ensure_store(scratch, StoreSpec(seed=9, nodes=512))
    assert (built_first, built_again, built_other) == (True, False, True)
    assert manifest["seed"] == 9


def test_a_truncated_store_is_not_reused(scratch: Path) -> None:
    ensure_store(scratch, SMALL)
    os.truncate(scratch / FEATURES, RECORD_BYTES * 10)
    _, built = ensure_store(scratch, SMALL)
    assert built
    assert (scratch / FEATURES).stat().st_size == SMALL.store_bytes


def test_the_store_is_one_4k_record_per_node_and_is_read_with_o_direct(scratch: Path) -> None:
    build_store(scratch, SMALL)
    assert (scratch / FEATURES).stat().st_size == SMALL.nodes * RECORD_BYTES
    with FeatureStore(scratch, SMALL) as store:
        assert store.open_flags & os.O_DIRECT
        nodes = [0, 17, SMALL.nodes - 1]
        features = store.read_features(nodes)
    raw = (scratch / FEATURES).read_bytes()
    for row, node in zip(features, nodes):
        expected = np.frombuffer(raw, dtype=np.float32, count=SMALL.feature_dim, offset=node * RECORD_BYTES)
        np.testing.assert_array_equal(row, expected)


def test_reading_a_node_outside_the_store_says_which_and_the_range(scratch: Path) -> None:
    build_store(scratch, SMALL)
    with FeatureStore(scratch, SMALL) as store, pytest.raises(IndexError, match=r"node 512 outside.*0\.\.511"):
        store.read_features([512])


def test_the_graph_is_undirected_without_self_loops_and_has_hubs(scratch: Path) -> None:
    spec = StoreSpec(seed=1, nodes=4096)
    build_store(scratch, spec)
    with FeatureStore(scratch, spec) as store:
        degrees = np.diff(store.indptr)
        edges = {(u, int(v)) for u in range(spec.nodes) for v in store.neighbours(u)}
    assert all((v, u) in edges for u, v in edges)
    assert all(u != v for u, v in edges)
    assert degrees.min() >= 1
    assert degrees.max() >= 20 * np.median(degrees)  # heavy tail: a few hubs, most nodes small


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nodes": 1}, "nodes must be >= 2"),
        ({"feature_dim": 2000}, "feature_dim must be in 1..1022"),
        ({"mean_out_degree": 0.5}, "mean_out_degree must be >= 1"),
    ],
    ids=["too-few-nodes", "features-overflow-the-record", "degree-below-one"],
)
def test_a_bad_spec_is_rejected_with_what_is_wrong(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StoreSpec(**kwargs)  # type: ignore[arg-type]
