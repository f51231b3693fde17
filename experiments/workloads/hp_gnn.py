"""The high-priority (HP) service: a small GNN fraud-scoring HTTP service whose requests hit the disk.

Run by the experiment orchestrator as a subprocess (and by hand)::

    python -m experiments.workloads.hp_gnn --data-dir D --host 127.0.0.1 --port P [--seed S] [--nodes N]
    python -m experiments.workloads.hp_gnn --data-dir D --setup-only

A request ``GET /score?tx=ID`` (or ``POST /score`` with ``{"tx": ID}``) scores one
transaction: the transaction's account is a node of the graph; the service samples
up to ``hop1`` neighbours of it and up to ``hop2`` neighbours of each of those,
reads their feature records from the store with O_DIRECT (typically 4–13 reads of
4 KiB, one after the other), runs a fixed two-layer mean-aggregation GNN plus an
MLP in NumPy, and answers ``{tx, node, score, neighbours, reads}``. The weights
are seeded, not trained: the score is a deterministic function of the
neighbourhood, which is all the experiment needs; the disk reads are the point.

Scoring runs in a thread pool (blocking reads must not stall the event loop);
the latency recorded in ``gnn_request_latency_seconds`` is measured around the
whole request inside the app (thread-pool queueing and response writing included). ``/metrics``
serves this process's own registry; ``/health`` answers once the store is open.
On start-up it prints one JSON line ``{"event": "ready", ...}`` on stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import AsyncIterator

import click
import numpy as np
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from experiments.workloads.direct_io import backing_device
from experiments.workloads.featurestore import FeatureStore, StoreSpec, ensure_store

__all__ = [
    "LATENCY_BUCKETS_SECONDS",
    "GnnModel",
    "HpMetrics",
    "Scorer",
    "ServiceConfig",
    "build_app",
    "geometric_buckets",
    "main",
    "node_for_tx",
]

log = logging.getLogger("hp_gnn")


def geometric_buckets(low: float, high: float, per_decade: int) -> tuple[float, ...]:
    """Bucket edges ``low * 10**(k/per_decade)`` up to ``high``, rounded to 6 significant digits."""
    steps = round(math.log10(high / low) * per_decade)
    return tuple(float(f"{low * 10 ** (k / per_decade):.6g}") for k in range(steps + 1))


LATENCY_BUCKETS_PER_DECADE = 14
LATENCY_BUCKETS_SECONDS = geometric_buckets(1e-4, 10.0, LATENCY_BUCKETS_PER_DECADE)
"""Edges of ``gnn_request_latency_seconds``: 0.1 ms to 10 s, 14 per decade (each edge
17.9 % above the last), every power of ten an exact edge. ``histogram_quantile``
interpolates linearly inside a bucket, so a P95 read from this histogram is within
one bucket ratio (x1.179) of the true one, wherever the SLO target sits."""

LATENCY_BUCKET_RATIO = 10 ** (1 / LATENCY_BUCKETS_PER_DECADE)

GIL_SWITCH_INTERVAL_SECONDS = 0.0002

RISK_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 21))


def node_for_tx(tx: int, nodes: int) -> int:
    """The account node a transaction id belongs to (a fixed multiplicative hash, so any id is valid
    and consecutive ids spread over the graph and the store)."""
    return ((tx * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) % nodes


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


@dataclass(frozen=True)
class GnnModel:
    """Two mean-aggregation (GraphSAGE-style) layers and a two-layer MLP with seeded weights."""

    w1: np.ndarray  # (2F, H): [self, mean of neighbours] -> hidden
    w2: np.ndarray  # (2H, H)
    w3: np.ndarray  # (H, H)
    w4: np.ndarray  # (H,)
    bias: float

    @classmethod
    def seeded(cls, seed: int, feature_dim: int, hidden: int = 32) -> GnnModel:
        rng = np.random.default_rng([seed, 2])

        def glorot(fan_in: int, fan_out: int) -> np.ndarray:
            return (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / (fan_in + fan_out))).astype(np.float32)

        return cls(glorot(2 * feature_dim, hidden), glorot(2 * hidden, hidden), glorot(hidden, hidden),
                   glorot(hidden, 1)[:, 0], -1.0)

    def score(self, x_self: np.ndarray, x_hop1: np.ndarray, hop2_means: np.ndarray) -> float:
        """Risk in [0, 1] of a node from its features, its sampled neighbours' features
        (k, F) and, per neighbour, the mean of its own sampled neighbours' features (k, F)."""
        relu = _relu
        if len(x_hop1):
            h1_self = relu(np.concatenate([x_self, x_hop1.mean(axis=0)]) @ self.w1)
            h1_nb = relu(np.concatenate([x_hop1, hop2_means], axis=1) @ self.w1)
            h2 = relu(np.concatenate([h1_self, h1_nb.mean(axis=0)]) @ self.w2)
        else:  # an isolated node aggregates nothing
            h1_self = relu(np.concatenate([x_self, np.zeros_like(x_self)]) @ self.w1)
            h2 = relu(np.concatenate([h1_self, np.zeros_like(h1_self)]) @ self.w2)
        logit = float(relu(h2 @ self.w3) @ self.w4) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))


@dataclass(frozen=True)
class Scored:
    tx: int
    node: int
    score: float
    neighbours: list[int]
    reads: int


class Scorer:
    """Sample, read, aggregate, score. Blocking (disk reads); call it from a worker thread."""

    def __init__(self, store: FeatureStore, model: GnnModel, *, hop1: int, hop2: int) -> None:
        self.store, self.model, self.hop1, self.hop2 = store, model, hop1, hop2

    def _sample(self, rnd: random.Random, node: int, k: int) -> list[int]:
        nbrs = self.store.neighbours(node)
        if len(nbrs) <= k:
            return [int(n) for n in nbrs]
        return [int(nbrs[i]) for i in rnd.sample(range(len(nbrs)), k)]

    def score(self, tx: int) -> Scored:
        node = node_for_tx(tx, self.store.nodes)
        rnd = random.Random(tx)  # same tx, same sample, same score
        hop1 = self._sample(rnd, node, self.hop1)
        hop2 = [self._sample(rnd, u, self.hop2) for u in hop1]
        # Two dependent rounds of reads, as a real lookup would do: this node and its neighbours,
        # then the neighbours' neighbours. Each distinct node is read once.
        first = list(dict.fromkeys([node, *hop1]))
        feats = dict(zip(first, self.store.read_features(first)))
        second = [v for v in dict.fromkeys(v for vs in hop2 for v in vs) if v not in feats]
        feats.update(zip(second, self.store.read_features(second)))
        x_self = feats[node]
        x_hop1 = np.array([feats[u] for u in hop1], dtype=np.float32).reshape(len(hop1), -1)
        hop2_means = np.array(
            [np.mean([feats[v] for v in vs], axis=0) if vs else np.zeros_like(x_self) for vs in hop2],
            dtype=np.float32,
        ).reshape(len(hop1), -1)
        return Scored(tx, node, self.model.score(x_self, x_hop1, hop2_means), hop1, len(first) + len(second))


@dataclass
class HpMetrics:
    """The service's metrics, in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.latency = Histogram("gnn_request_latency_seconds",
                                 "Whole /score request latency, measured in the app (thread-pool wait and "
                                 "response write included)", buckets=LATENCY_BUCKETS_SECONDS, registry=r)
        self.requests = Counter("gnn_requests_total", "Scoring requests answered, by HTTP status", ["status"],
                                registry=r)
        self.active = Gauge("gnn_active_requests", "Scoring requests in progress", registry=r)
        self.risk = Histogram("gnn_risk_score", "Risk scores returned", buckets=RISK_BUCKETS, registry=r)
        self.reads = Counter("gnn_feature_reads_total", "4 KiB O_DIRECT feature-record reads", registry=r)


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    spec: StoreSpec = field(default_factory=StoreSpec)
    hop1: int = 4
    """Neighbours sampled per transaction's node (first hop)."""
    hop2: int = 2
    """Neighbours sampled per first-hop neighbour; reads per request <= 1 + hop1 * (1 + hop2)."""
    threads: int = 32
    """Scoring threads: the service's disk queue depth under load. A request makes ~10 dependent
    reads; when LP contention stretches each read to ~5-10 ms, 8 threads cap the service near
    100 requests/s and it collapses into seconds of queueing. 32 keeps it degraded, not collapsed."""

    def __post_init__(self) -> None:
        errors = [f"{name} must be >= {low}, got {value}" for name, value, low in
                  (("hop1", self.hop1, 1), ("hop2", self.hop2, 0), ("threads", self.threads, 1)) if value < low]
        if errors:
            raise ValueError("bad HP service config: " + "; ".join(errors))


def _parse_tx(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ValueError(f"tx must be a non-negative integer, got {raw!r}")
    try:
        tx = int(raw)
    except ValueError:
        raise ValueError(f"tx must be a non-negative integer, got {raw!r}") from None
    if tx < 0:
        raise ValueError(f"tx must be a non-negative integer, got {raw!r}")
    return tx


def build_app(scorer: Scorer, metrics: HpMetrics, *, threads: int) -> ASGIApp:
    """The ASGI app: ``/score`` (GET ?tx= / POST {"tx"}), ``/metrics``, ``/health``."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The pool lives exactly as long as the server: created at start-up, drained at shutdown.
        app.state.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score")
        try:
            yield
        finally:
            app.state.pool.shutdown(wait=True, cancel_futures=True)

    async def score(request: Request) -> Response:
        status = 200
        try:
            try:
                if request.method == "POST":
                    try:
                        body = await request.json()
                    except ValueError:
                        raise ValueError("POST /score needs a JSON body like {\"tx\": 123}") from None
                    raw = body.get("tx") if isinstance(body, dict) else None
                else:
                    raw = request.query_params.get("tx")
                if raw is None:
                    raise ValueError("missing tx: use GET /score?tx=ID or POST /score {\"tx\": ID}")
                tx = _parse_tx(raw)
            except ValueError as e:
                status = 400
                return JSONResponse({"error": str(e)}, status_code=400)
            try:
                pool: ThreadPoolExecutor = request.app.state.pool
                result = await asyncio.get_running_loop().run_in_executor(pool, scorer.score, tx)
            except Exception as e:  # a failed read is a 500 with the reason, never a dead service
                log.exception("scoring tx %d failed", tx)
                status = 500
                return JSONResponse({"error": f"scoring failed: {e}"}, status_code=500)
            metrics.reads.inc(result.reads)
            metrics.risk.observe(result.score)
            return JSONResponse({"tx": result.tx, "node": result.node, "score": result.score,
                                 "neighbours": result.neighbours, "reads": result.reads})
        finally:
            metrics.requests.labels(status=str(status)).inc()

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "nodes": scorer.store.nodes, "store": str(scorer.store.data_dir)})

    app = Starlette(
        routes=[
            Route("/score", score, methods=["GET", "POST"]),
            Route("/metrics", metrics_endpoint),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )
    return _TimedScoring(app, metrics)


class _TimedScoring:
    """Pure ASGI wrapper that times every ``/score`` request as a whole: from the moment the
    app receives it to the moment the last byte of the response is handed to the transport
    (routing, body parsing, thread-pool wait, scoring, JSON encoding). Timing only the
    scoring call would miss the queueing that builds up under load."""

    def __init__(self, app: ASGIApp, metrics: HpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/score":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        self.metrics.active.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.active.dec()
            self.metrics.latency.observe(time.perf_counter() - start)


async def _serve(server: uvicorn.Server, ready_line: dict[str, object]) -> None:
    task = asyncio.create_task(server.serve())
    # Bounded: ends when the server has bound its socket or has stopped (e.g. port in use).
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(json.dumps(ready_line), flush=True)
        log.info("ready: %s", ready_line["url"])
    await task


def _ignore_after_shutdown(signum: int, frame: FrameType | None) -> None:
    log.info("stopped on signal %d", signum)


def run(config: ServiceConfig, *, host: str, port: int) -> int:
    """Build or reuse the store, open it, serve until SIGTERM/SIGINT. Returns the exit code."""
    t0 = time.monotonic()
    # A thread back from a disk read waits for the GIL up to the switch interval (5 ms by
    # default) while the event loop or another scorer runs Python code; that wait would
    # dominate a ~1 ms request. 0.2 ms keeps the hand-over well under the disk's latency.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    manifest, built = ensure_store(config.data_dir, config.spec)
    with FeatureStore(config.data_dir, config.spec) as store:
        scorer = Scorer(store, GnnModel.seeded(config.spec.seed, config.spec.feature_dim),
                        hop1=config.hop1, hop2=config.hop2)
        app = build_app(scorer, HpMetrics(), threads=config.threads)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                               lifespan="on"))
        device = backing_device(config.data_dir)
        if device is None:
            log.warning("%s is on a file system without a block device (tmpfs?): feature reads will not reach "
                        "a disk", config.data_dir)
        ready = {"event": "ready", "service": "hp_gnn", "url": f"http://{host}:{port}", "nodes": store.nodes,
                 "edges": manifest["edges"], "store_built": built, "device": device,
                 "startup_seconds": round(time.monotonic() - t0, 3)}
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then restores the previous handlers and
        # re-raises the signal; with these no-op handlers in place that ends in a clean exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore_after_shutdown)
        asyncio.run(_serve(server, ready))
        return 0 if server.started else 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the graph and the feature store live (on a real disk; reused when they match).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), help="HTTP port (required unless --setup-only).")
@click.option("--seed", default=StoreSpec.seed, show_default=True, help="Seed of graph, features and weights.")
@click.option("--nodes", type=click.IntRange(min=2), default=StoreSpec.nodes, show_default=True,
              help="Graph nodes; the store is nodes x 4 KiB.")
@click.option("--hop1", type=click.IntRange(min=1), default=ServiceConfig.hop1, show_default=True)
@click.option("--hop2", type=click.IntRange(min=0), default=ServiceConfig.hop2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=ServiceConfig.threads, show_default=True,
              help="Scoring threads (disk queue depth).")
@click.option("--setup-only", is_flag=True, help="Build (or verify) the store and exit.")
def main(data_dir: Path, host: str, port: int | None, seed: int, nodes: int, hop1: int, hop2: int, threads: int,
         setup_only: bool) -> None:
    """Serve GNN fraud scores whose feature lookups go to disk with O_DIRECT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hp_gnn %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = ServiceConfig(data_dir, StoreSpec(seed=seed, nodes=nodes), hop1=hop1, hop2=hop2, threads=threads)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if setup_only:
        manifest, built = ensure_store(config.data_dir, config.spec)
        print(json.dumps({"event": "setup", "service": "hp_gnn", "built": built, **manifest}), flush=True)
        return
    if port is None:
        raise click.UsageError("--port is required unless --setup-only")
    sys.exit(run(config, host=host, port=port))


if __name__ == "__main__":
    main()
