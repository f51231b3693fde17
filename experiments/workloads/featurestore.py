"""The HP service's data: a synthetic transaction graph and its on-disk feature store.

Built once by :func:`build_store` (``hp_gnn --setup-only`` or the first start of
the service) and read by :class:`FeatureStore` on every scoring request.

Layout of a data dir:

- ``indptr.npy`` (int64, nodes+1) and ``indices.npy`` (int32): the undirected
  graph in CSR form. Degrees are heavy-tailed (Pareto out-degrees, Zipf-like
  popularity of targets), as account/transaction graphs are: most nodes have a
  few neighbours, a few hubs have hundreds.
- ``features.dat``: one 4 KiB record per node. A record holds ``feature_dim``
  float32 features at offset 0, zero padding, and the node id as a uint64 in the
  last 8 bytes (so a reader can check it read the right record). One record per
  4 KiB block means one feature lookup is exactly one aligned O_DIRECT read.
- ``manifest.json``: what was built (format version, seed, sizes). Written last,
  after everything is fsync'd, so a half-built store is never reused.

Everything is a pure function of the seed and the sizes: two builds with the
same spec give byte-identical files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments.workloads.direct_io import aligned_buffer, open_direct, pread_exact

__all__ = ["FORMAT_VERSION", "RECORD_BYTES", "FeatureStore", "StoreSpec", "build_store", "ensure_store"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the file layout or the generator changes, so old stores are rebuilt."""

RECORD_BYTES = 4096
"""One record per node, one O_DIRECT block per record."""

_ID_OFFSET = RECORD_BYTES - 8
_CHUNK_NODES = 4096  # records generated and written per step (16 MiB): bounded memory

MANIFEST = "manifest.json"
FEATURES = "features.dat"
INDPTR = "indptr.npy"
INDICES = "indices.npy"


@dataclass(frozen=True)
class StoreSpec:
    """What to build. The defaults give a 512 MiB store: far larger than the
    device's on-board cache, and with O_DIRECT the page cache plays no part."""

    seed: int = 7
    nodes: int = 131_072
    """Accounts in the graph; the store is ``nodes * 4 KiB``."""
    feature_dim: int = 64
    """float32 features per node (must fit a 4 KiB record with the id)."""
    mean_out_degree: float = 4.0
    """Mean of the Pareto out-degree before symmetrisation (the graph's mean degree is about twice this)."""

    def __post_init__(self) -> None:
        errors = []
        if self.nodes < 2:
            errors.append(f"nodes must be >= 2, got {self.nodes}")
        if not 1 <= self.feature_dim <= _ID_OFFSET // 4:
            errors.append(f"feature_dim must be in 1..{_ID_OFFSET // 4}, got {self.feature_dim}")
        if self.mean_out_degree < 1:
            errors.append(f"mean_out_degree must be >= 1, got {self.mean_out_degree}")
        if errors:
            raise ValueError("bad feature-store spec: " + "; ".join(errors))

    @property
    def store_bytes(self) -> int:
        return self.nodes * RECORD_BYTES


def _generate_graph(spec: StoreSpec) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed undirected graph as (indptr, indices), sorted, no self-loops, no duplicates."""
    rng = np.random.default_rng([spec.seed, 0])
    n = spec.nodes
    # Pareto(a=2) has mean 1/(a-1) = 1, so 1 + (m-1) * pareto gives mean m and a heavy tail.
    out_deg = 1 + np.floor((spec.mean_out_degree - 1) * rng.pareto(2.0, size=n)).astype(np.int64)
    out_deg = np.minimum(out_deg, min(1000, n - 1))
    src = np.repeat(np.arange(n, dtype=np.int64), out_deg)
    # Popularity of targets follows a Zipf-like law over a random permutation of nodes: hubs exist
    # but are spread over the id space (not all at the start of the file).
    popularity = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** 0.8
    popularity = popularity[rng.permutation(n)]
    popularity /= popularity.sum()
    dst = rng.choice(n, size=src.size, p=popularity).astype(np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    keys = np.unique(np.concatenate([src * n + dst, dst * n + src]))  # both directions, sorted by (src, dst)
    rows, cols = keys // n, keys % n
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols.astype(np.int32)


def _write_features(spec: StoreSpec, path: Path) -> None:
    rng = np.random.default_rng([spec.seed, 1])
    floats_per_record = RECORD_BYTES // 4
    with open(path, "wb") as f:
        for start in range(0, spec.nodes, _CHUNK_NODES):
            count = min(_CHUNK_NODES, spec.nodes - start)
            chunk = np.zeros((count, floats_per_record), dtype=np.float32)
            chunk[:, : spec.feature_dim] = rng.standard_normal((count, spec.feature_dim), dtype=np.float32)
            chunk.view(np.uint64)[:, -1] = np.arange(start, start + count, dtype=np.uint64)
            f.write(chunk.tobytes())
        f.flush()
        os.fsync(f.fileno())
        # The bytes are on disk now; drop them from the page cache so nothing is served from memory.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _manifest_for(spec: StoreSpec, edges: int) -> dict[str, object]:
    return {"format_version": FORMAT_VERSION, **asdict(spec), "record_bytes": RECORD_BYTES, "edges": edges,
            "store_bytes": spec.store_bytes}


def _existing_manifest(data_dir: Path, spec: StoreSpec) -> dict[str, object] | None:
    """The manifest if the store in ``data_dir`` was built from ``spec`` and is complete, else None."""
    try:
        manifest = json.loads((data_dir / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return None
    expected = {"format_version": FORMAT_VERSION, **asdict(spec), "record_bytes": RECORD_BYTES,
                "store_bytes": spec.store_bytes}
    if any(manifest.get(k) != v for k, v in expected.items()):
        return None
    features = data_dir / FEATURES
    if not features.exists() or features.stat().st_size != spec.store_bytes:
        return None
    if not (data_dir / INDPTR).exists() or not (data_dir / INDICES).exists():
        return None
    return dict(manifest)


def build_store(data_dir: Path, spec: StoreSpec) -> dict[str, object]:
    """Generate graph and feature store into ``data_dir`` (overwriting), return the manifest."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)  # invalidate first: a crash mid-build leaves no manifest
    indptr, indices = _generate_graph(spec)
    np.save(data_dir / INDPTR, indptr)
    np.save(data_dir / INDICES, indices)
    _write_features(spec, data_dir / FEATURES)
    manifest = _manifest_for(spec, int(indices.size))
    tmp = data_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(data_dir / MANIFEST)
    return manifest


def ensure_store(data_dir: Path, spec: StoreSpec) -> tuple[dict[str, object], bool]:
    """Reuse the store in ``data_dir`` if its manifest matches ``spec``, else build it.

    Returns the manifest and whether it was (re)built.
    """
    manifest = _existing_manifest(data_dir, spec)
    if manifest is not None:
        return manifest, False
    log.info("building feature store in %s (%d nodes, %d MiB)", data_dir, spec.nodes, spec.store_bytes >> 20)
    return build_store(data_dir, spec), True


class FeatureStore:
    """Read access to a built store: neighbour lists from memory, features from disk with O_DIRECT.

    Thread-safe: ``os.preadv`` on a shared fd is positional, and each thread
    keeps its own aligned buffer. Close it (or use it as a context manager).
    """

    def __init__(self, data_dir: Path, spec: StoreSpec) -> None:
        manifest = _existing_manifest(data_dir, spec)
        if manifest is None:
            raise FileNotFoundError(f"{data_dir}: no complete feature store for {spec}; build it first")
        self.data_dir = data_dir
        self.spec = spec
        self.manifest = manifest
        self.indptr: np.ndarray = np.load(data_dir / INDPTR)
        self.indices: np.ndarray = np.load(data_dir / INDICES)
        self._fd = open_direct(data_dir / FEATURES)
        self._local = threading.local()

    @property
    def nodes(self) -> int:
        return self.spec.nodes

    @property
    def open_flags(self) -> int:
        """The fd's status flags as the kernel reports them (``O_DIRECT`` is among them)."""
        return fcntl.fcntl(self._fd, fcntl.F_GETFL)

    def neighbours(self, node: int) -> np.ndarray:
        return self.indices[self.indptr[node] : self.indptr[node + 1]]

    def read_features(self, nodes: Sequence[int]) -> np.ndarray:
        """Features of ``nodes`` as a (len(nodes), feature_dim) float32 array; one disk read each.

        Reads are issued one after the other, as a lookup service's dependent
        round-trips are, so a request's latency adds up the disk's.
        """
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = aligned_buffer(RECORD_BYTES)
        out = np.empty((len(nodes), self.spec.feature_dim), dtype=np.float32)
        for i, node in enumerate(nodes):
            if not 0 <= node < self.spec.nodes:
                raise IndexError(f"node {node} outside the store (0..{self.spec.nodes - 1})")
            pread_exact(self._fd, buf, node * RECORD_BYTES)
            stored_id = int.from_bytes(buf[_ID_OFFSET:RECORD_BYTES], "little")
            if stored_id != node:
                raise OSError(f"{self.data_dir / FEATURES}: record {node} holds id {stored_id}; the store is corrupt")
            out[i] = np.frombuffer(buf, dtype=np.float32, count=self.spec.feature_dim)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
