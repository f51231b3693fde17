"""How the cost of one controller step grows with writers (nodes) and SLOs, on this machine.

    .venv/bin/python benchmarks/scale.py [--quick] --output benchmarks/results/scale.json

Three parts, each printed as a table while it runs and written to the JSON:

* **controller** — one full step (``Controller.step``: query the real
  Prometheus, run the policies, map levels to targets, push over real HTTP)
  against N writers: 10, 100, 1000, 5000 and 10000 writers with 1, 10 and
  100 SLOs (the grid is :data:`FULL`), at 5000 and 10000 also with the
  writers sharded across 2 controller replicas (:mod:`controller.shard`).
  The writers are real :class:`writer.reconcile.Reconciler` objects on fake
  cgroup v2 trees, two LP cgroups each, started once by
  ``benchmarks/scale_fleet.py`` in 4 processes: every writer is served by
  the writer's own FastAPI application (``fleet: app``; one socket per
  writer, one uvicorn server per process accepting on all of them) and, on a
  second socket, by a minimal HTTP server around the same Reconciler
  (``fleet: lean``), which shows the controller's step apart from FastAPI's
  CPU on the shared cores. The fleet and every controller replica are
  separate processes, so the controller's CPU seconds and peak RSS are its
  own (the fleet's CPU per step is reported too). Steps run back to back
  after one warm-up step (which opens the connections; reported as
  ``first_step_s``). Replicas step together: the parent releases both, and a
  step lasts until the slower one is done.
* **prometheus** — with 1, 10 and 100 SLOs, how many HTTP requests one tick
  sends to the real Prometheus and how long they take, per SLO
  (:class:`controller.sensor.PrometheusSensor`, two queries per SLO) and
  batched (:class:`controller.sensor_batch.BatchedPrometheusSensor`, one).
* **writer_apply** — a writer's ``push`` that changes the limits of 10, 100
  and 1000 LP cgroups (and one that changes nothing), on a fake v2 tree, a
  fake v1 tree and the real v1 kernel (``/sys/fs/cgroup/blkio/drcio-t10-*``,
  removed afterwards).

Everything runs on the same cores as whatever else is running: the load
average is recorded with every row. A plot of step time against N goes next
to the JSON (``.png``), and ``--profile`` writes a cProfile of the largest
single-replica step (``-profile.txt``).
"""

from __future__ import annotations

import cProfile
import io
import itertools
import json
import logging
import math
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.config import ControllerConfig, PrometheusConfig, SloConfig, parse_config
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.push import HttpPusher, StaticWriters, WriterDirectory, raise_open_files_limit
from controller.sensor import PrometheusSensor
from controller.sensor_batch import BatchedPrometheusSensor
from controller.shard import Shard, ShardedWriters
from experiments.prometheus_server import PrometheusServer, ScrapeTarget, free_port
from writer.api import GroupTarget, IoMax, TargetsPush
from writer.cgroups import Hierarchy
from writer.discovery import LocalDiscovery, LocalEntry
from writer.lease import Failsafe, Lease
from writer.reconcile import Reconciler

HERE = Path(__file__).resolve().parent
FLEET = HERE / "scale_fleet.py"
METRIC = "scale_hp_latency_seconds"
KERNEL_V1 = Path("/sys/fs/cgroup/blkio")
CGROUP_PREFIX = "drcio-t10-scale"



@dataclass(frozen=True)
class Run:
    """One fleet and the configurations measured against it."""

    fleet: str  # "app": the writer's FastAPI app; "lean": the same Reconciler behind a minimal HTTP server
    writers: int
    slos: tuple[int, ...]
    replicas: tuple[int, ...]
    steps: int


#: The writer's own app from 10 to 10,000 writers; at 10,000 the app fleet needs several times the
#: controller's CPU on the same two cores, so the lean fleet measures 1,000 and 10,000 again to show
#: the controller's step apart from the fleet's (README "Scale").
FULL = (
    Run("app", 10, (1, 10, 100), (1,), 10),
    Run("app", 100, (1, 10, 100), (1,), 10),
    Run("app", 1000, (1, 10, 100), (1,), 10),
    Run("app", 5000, (100,), (1, 2), 3),
    Run("app", 10000, (100,), (1, 2), 3),
    Run("lean", 1000, (1, 100), (1,), 5),
    Run("lean", 10000, (1, 100), (1, 2), 3),
)
QUICK = (
    Run("app", 1000, (1, 100), (1,), 5),
    Run("app", 10000, (100,), (1, 2), 3),
    Run("lean", 1000, (100,), (1,), 3),
    Run("lean", 10000, (100,), (1, 2), 3),
)
#: Checks that the benchmark runs (seconds, not figures).
SMOKE = (Run("app", 40, (1, 10), (1, 2), 2), Run("lean", 40, (10,), (1,), 2))
SLO_COUNTS = (1, 10, 100)
LP_COUNTS = (10, 100, 1000)


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- SLOs and Prometheus


def slo_dicts(n: int) -> list[dict[str, Any]]:
    """``n`` SLOs on the exporter's series; SLO i throttles LP group ``lp<i mod 20>`` (several SLOs per group)."""
    groups = min(n, 20)
    return [
        {
            "name": f"slo-{i:03d}",
            "metric": METRIC,
            "labels": {"slo": f"s{i}"},
            "window": "10s",
            "target": "100ms",
            "min_rate": 0.5,
            "policy": {"kind": "pid", "kp": 0.5, "ki": 0.1, "kd": 0.0},
            "throttle": {
                "group": f"lp{i % groups}",
                "selector": {"group-id": f"lp{i % groups}"},
                "devices": ["254:0"],
                "rbps": {"min": "10M", "max": "max"},
                "wbps": {"min": "5M", "max": "max"},
            },
        }
        for i in range(n)
    ]


def controller_config(slos: int, prometheus_url: str, writers: Sequence[str]) -> ControllerConfig:
    return parse_config(
        {
            "interval": "5s",
            "prometheus": {"url": prometheus_url, "timeout": "2s"},
            "writers": {"static": list(writers) or ["http://127.0.0.1:1"], "timeout": "2s"},
            "slos": slo_dicts(slos),
        },
        source="benchmark",
    )


def run_exporter(port: int, slos: int) -> None:
    """Role ``exporter``: an HP-like histogram per SLO, ~20 requests/s each, until killed."""
    registry = CollectorRegistry()
    hist = Histogram(METRIC, "benchmark HP latency", ["slo"], registry=registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
    start_http_server(port, addr="127.0.0.1", registry=registry)
    children = [hist.labels(slo=f"s{i}") for i in range(slos)]
    k = 0
    while True:
        for j, child in enumerate(children):
            child.observe(0.02 + 0.06 * (((k + j) * 0.618) % 1.0))
            child.observe(0.03 + 0.04 * (((k + 2 * j) * 0.382) % 1.0))
        k += 1
        time.sleep(0.1)


@contextmanager
def prometheus_with_data(slos: int, console: Console) -> Iterator[str]:
    """A real Prometheus scraping an exporter of ``slos`` HP histograms; yields its URL once rates exist."""
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, __file__, "--role", "exporter", "--exporter-port", str(port), "--exporter-slos", str(slos)],
        stdin=subprocess.DEVNULL,
    )
    try:
        with PrometheusServer(targets=[ScrapeTarget(job="scale-hp", address=f"127.0.0.1:{port}")], scrape_interval_seconds=1.0) as prom:
            console.print(f"[dim]Prometheus {prom.url} scraping the exporter on :{port}; waiting for rates[/]")
            prom.wait_for_samples(f'sum(rate({METRIC}_count{{slo="s{slos - 1}"}}[10s])) > 0', timeout_seconds=60)
            time.sleep(5.0)  # readiness: enough scrapes in the 10 s window for every evaluation time used below
            yield prom.url
    finally:
        exporter.kill()
        exporter.wait()


class CountingSensor(PrometheusSensor):
    """The per-SLO sensor, counting its HTTP requests."""

    requests = 0

    def _instant(self, query: str, at: float) -> list[dict[str, Any]]:
        self.requests += 1
        return super()._instant(query, at)


def measure_prometheus(url: str, slo_counts: Sequence[int], reps: int) -> list[dict[str, Any]]:
    rows = []
    for n in slo_counts:
        config = controller_config(n, url, [])
        sensors: dict[str, CountingSensor | BatchedPrometheusSensor] = {
            "per_slo": CountingSensor(config.prometheus),
            "batched": BatchedPrometheusSensor(config.prometheus, config.slos),
        }
        readings: dict[str, list[Any]] = {}
        ats = [round(time.time() - 1.0 - r * 0.2, 3) for r in range(reps)]  # the same evaluation times for both modes
        for mode, sensor in sensors.items():
            times, requests = [], []
            for at in ats:
                before = sensor.requests
                t0 = time.perf_counter()
                got = [sensor.read(slo, at) for slo in config.slos]
                times.append(time.perf_counter() - t0)
                requests.append(sensor.requests - before)
            readings[mode] = got
            statuses = Counter(g.status.value for g in got)
            rows.append(
                {
                    "slos": n,
                    "mode": mode,
                    "requests_per_tick": statistics.median(requests),
                    "tick_query_p50_s": round(statistics.median(times), 4),
                    "tick_query_max_s": round(max(times), 4),
                    "statuses": dict(statuses),
                    "load1": load(),
                }
            )
        same = all(
            a.status == b.status and (a.latency_seconds == b.latency_seconds or a.latency_seconds is None)
            for a, b in zip(readings["per_slo"], readings["batched"])
        )
        rows[-1]["same_readings_as_per_slo"] = same
    return rows


# ---------------------------------------------------------------- the writer fleet


@dataclass
class Fleet:
    """The writer processes, and which of their writers (how many, served how) a measurement uses."""

    procs: list[subprocess.Popen[str]]
    all_urls: dict[str, list[str]]
    rss_mb: float
    started_s: float
    kind: str = "app"
    writers: int = 0

    @property
    def urls(self) -> list[str]:
        return self.all_urls[self.kind][: self.writers]

    def use(self, kind: str, writers: int) -> Fleet:
        if writers > len(self.all_urls[kind]):
            raise ValueError(f"the fleet has {len(self.all_urls[kind])} writers, {writers} asked")
        self.kind, self.writers = kind, writers
        return self

    def cpu_s(self) -> float:
        """CPU seconds the fleet processes have used so far (user + system, from /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_fleet(n: int, root: Path, parts: int = 4) -> Fleet:
    """``n`` writers in ``parts`` processes; the URL lists interleave the processes, so any prefix spreads over all."""
    sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
    t0 = time.perf_counter()
    procs, first = [], 0
    for i, size in enumerate(sizes):
        procs.append(
            subprocess.Popen(
                [sys.executable, str(FLEET), "--writers", str(size), "--root", str(root / f"f{i}"), "--first", str(first)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
        )
        first += size
    per_proc: list[dict[str, list[str]]] = []
    rss = 0.0
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("a fleet process died while starting (see its stderr above)")
        ready = json.loads(line)
        per_proc.append(ready["urls"])
        rss += ready["rss_mb"]
    urls: dict[str, list[str]] = {}
    for kind in ("app", "lean"):
        urls[kind] = [u for group in itertools.zip_longest(*(p[kind] for p in per_proc)) for u in group if u is not None]
    return Fleet(procs, urls, rss, time.perf_counter() - t0)


# ---------------------------------------------------------------- controller replicas


def run_controller_worker(spec_path: Path) -> None:
    """Role ``controller``: build one controller replica, then run a step per ``step`` line on stdin."""
    spec = json.loads(spec_path.read_text())
    urls: list[str] = spec["urls"]
    raise_open_files_limit(len(urls) + 512)
    config = controller_config(spec["slos"], spec["prometheus"], urls)
    directory: WriterDirectory = StaticWriters(urls)
    if spec["shards"] > 1:
        directory = ShardedWriters(directory, Shard(spec["index"], spec["shards"]))
    pusher = HttpPusher(token=None, timeout_seconds=config.writers.timeout_seconds)
    controller = Controller(
        config,
        sensor=BatchedPrometheusSensor(config.prometheus, config.slos),
        pusher=pusher,
        writers=directory,
        metrics=ControllerMetrics(),
        name=f"scale-{spec['index']}",
    )
    mine = len(directory.writers())
    print(json.dumps({"ready": True, "writers": mine}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        profiler = cProfile.Profile() if command.startswith("profile") else None
        opened = pusher.connections_opened
        cpu0, t0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = controller.step(time.time())
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        outcomes = Counter(p.outcome for p in result.pushes)
        out: dict[str, Any] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "pushes": len(result.pushes),
            "failed": sum(v for k, v in outcomes.items() if k != "ok"),
            "outcomes": dict(outcomes),
            "connections_opened": pusher.connections_opened - opened,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if profiler is not None:
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("cumulative").print_stats(30)
            stats.sort_stats("tottime").print_stats(25)
            Path(command.split(" ", 1)[1]).write_text(text.getvalue())
        print(json.dumps(out), flush=True)
    pusher.close()


def _readline(p: subprocess.Popen[str]) -> dict[str, Any]:
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        raise RuntimeError("a controller replica died (see its stderr above)")
    result: dict[str, Any] = json.loads(line)
    return result


def measure_controller(
    fleet: Fleet, *, slos: int, replicas: int, steps: int, prometheus: str, workdir: Path, profile_to: Path | None
) -> dict[str, Any]:
    workers: list[subprocess.Popen[str]] = []
    try:
        for k in range(replicas):
            spec = workdir / f"spec-{k}.json"
            spec.write_text(json.dumps({"urls": fleet.urls, "slos": slos, "prometheus": prometheus, "shards": replicas, "index": k}))
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--role", "controller", "--spec", str(spec)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )
            )
        shares = [_readline(w)["writers"] for w in workers]

        def step(command: str = "step") -> list[dict[str, Any]]:
            for w in workers:
                assert w.stdin is not None
                w.stdin.write(command + "\n")
                w.stdin.flush()
            return [_readline(w) for w in workers]

        load_before = load()
        first = step()
        fleet_cpu = fleet.cpu_s()
        measured = [step() for _ in range(steps)]
        fleet_cpu = fleet.cpu_s() - fleet_cpu
        if profile_to is not None:
            step(f"profile {profile_to}")
        walls = sorted(max(r["wall_s"] for r in s) for s in measured)
        cpus = [sum(r["cpu_s"] for r in s) for s in measured]
        return {
            "fleet": fleet.kind,
            "writers": len(fleet.urls),
            "slos": slos,
            "replicas": replicas,
            "writers_per_replica": shares,
            "steps": steps,
            "step_p50_s": round(statistics.median(walls), 4),
            "step_p99_s": round(_quantile(walls, 0.99), 4),
            "first_step_s": round(max(r["wall_s"] for r in first), 4),
            "cpu_s_per_step": round(statistics.median(cpus), 4),
            "cpu_s_per_step_per_replica": round(statistics.median(cpus) / replicas, 4),
            "peak_rss_mb": round(max(r["rss_mb"] for s in measured for r in s), 1),
            "failed_pushes": sum(r["failed"] for s in measured for r in s),
            "failed_pushes_first_step": sum(r["failed"] for r in first),
            "outcomes": dict(sum((Counter(r["outcomes"]) for s in measured for r in s), Counter())),
            "connections_opened_per_steady_step": statistics.median(sum(r["connections_opened"] for r in s) for s in measured),
            "fleet_cpu_s_per_step": round(fleet_cpu / steps, 4),
            "load1_before": load_before,
            "load1_after": load(),
        }
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile (with few steps, p99 is the slowest step)."""
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


# ---------------------------------------------------------------- writer apply time


_V2 = {"io.max": "", "io.weight": "default 100\n", "io.stat": "", "cgroup.procs": ""}
_V1 = {
    "blkio.throttle.read_bps_device": "", "blkio.throttle.write_bps_device": "", "blkio.throttle.read_iops_device": "",
    "blkio.throttle.write_iops_device": "", "blkio.throttle.io_service_bytes": "Total 0\n",
    "blkio.throttle.io_service_bytes_recursive": "Total 0\n", "blkio.bfq.weight": "100\n", "cgroup.procs": "",
}


def _push(generation: int, rbps: int) -> TargetsPush:
    return TargetsPush(
        generation=generation,
        lease_ttl_seconds=600,
        groups=[GroupTarget(name="lp", selector={"group-id": "lp"}, devices=["254:0"], io_max=IoMax(rbps=rbps, wbps=rbps // 2))],
    )


def measure_apply(tree: str, lp: int, workdir: Path) -> dict[str, Any]:
    """Time a writer's push that changes ``lp`` cgroups' limits, and one that changes nothing."""
    made: list[Path] = []
    if tree == "kernel-v1":
        if os.geteuid() != 0 or not (KERNEL_V1 / "blkio.throttle.read_bps_device").exists():
            return {"tree": tree, "lp_cgroups": lp, "skipped": "needs root and the v1 blkio hierarchy at /sys/fs/cgroup/blkio"}
        hierarchy = Hierarchy(1, KERNEL_V1)
        parent = KERNEL_V1 / f"{CGROUP_PREFIX}-{os.getpid()}"
    else:
        version: Literal[1, 2] = 2 if tree == "fake-v2" else 1
        root = workdir / f"{tree}-{lp}"
        root.mkdir(parents=True)
        (root / ("cgroup.controllers" if version == 2 else "blkio.throttle.read_bps_device")).write_text("io\n" if version == 2 else "")
        hierarchy = Hierarchy(version, root)
        parent = root / "kubepods"
    try:
        parent.mkdir()
        made.append(parent)
        entries = []
        for j in range(lp):
            d = parent / f"pod-{j}"
            d.mkdir()
            made.append(d)
            if tree != "kernel-v1":
                for name, text in (_V2 if hierarchy.version == 2 else _V1).items():
                    (d / name).write_text(text)
            entries.append(LocalEntry.model_validate({"name": f"lp-{j}", "path": str(d.relative_to(hierarchy.root)), "labels": {"group-id": "lp"}}))
        reconciler = Reconciler(
            hierarchy=hierarchy,
            discovery=LocalDiscovery(entries, hierarchy_root=hierarchy.root),
            lease=Lease(initial_ttl_seconds=600),
            failsafe=Failsafe(),
            resolve_devices=lambda devices: ["254:0"],
            scheduler_of=lambda dev: "mq-deadline",
            registry=CollectorRegistry(),
            node="bench",
        )
        changed, unchanged = [], []
        generation = 0
        for r in range(4):
            rbps = (20 + r) * 1024 * 1024
            generation += 1
            t0 = time.perf_counter()
            resp = reconciler.push(_push(generation, rbps))
            took = time.perf_counter() - t0
            if r > 0:  # the first push also writes wbps for the first time; count the steady changes
                changed.append(took)
            bad = [x for x in resp.results if x.outcome == "error"]
            if bad or sum(x.outcome == "applied" for x in resp.results) != lp:
                raise RuntimeError(f"{tree}: push did not apply to all {lp} cgroups: {bad[:2]}")
            generation += 1
            t0 = time.perf_counter()
            reconciler.push(_push(generation, rbps))
            unchanged.append(time.perf_counter() - t0)
        return {
            "tree": tree,
            "lp_cgroups": lp,
            "apply_changed_p50_s": round(statistics.median(changed), 4),
            "apply_changed_max_s": round(max(changed), 4),
            "apply_unchanged_p50_s": round(statistics.median(unchanged), 4),
            "load1": load(),
        }
    finally:
        for d in reversed(made):
            if tree == "kernel-v1":
                try:
                    d.rmdir()
                except OSError as err:
                    logging.warning("could not remove %s: %s", d, err)


# ---------------------------------------------------------------- output


def controller_table(rows: list[dict[str, Any]], status: str) -> Group:
    t = Table(title="controller step (query + decide + map + push), real HTTP on loopback")
    for col in ("fleet", "writers", "SLOs", "replicas", "p50 s", "p99 s", "first s", "CPU s/step", "peak RSS MB", "failed",
                "new conns/step", "fleet CPU s/step", "load"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["fleet"], str(r["writers"]), str(r["slos"]), str(r["replicas"]), f"{r['step_p50_s']:.3f}", f"{r['step_p99_s']:.3f}",
            f"{r['first_step_s']:.3f}", f"{r['cpu_s_per_step']:.3f}", f"{r['peak_rss_mb']:.0f}", str(r["failed_pushes"]),
            f"{r['connections_opened_per_steady_step']:g}", f"{r['fleet_cpu_s_per_step']:.2f}", f"{r['load1_before']:.1f}",
        )
    return Group(t, Text(status, style="dim"))


def simple_table(title: str, rows: list[dict[str, Any]], cols: Sequence[str]) -> Table:
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*(str(r.get(c, "")) for c in cols))
    return t


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, slos, replicas), group in sorted(_by(rows, ("fleet", "slos", "replicas")).items()):
        xs = [r["writers"] for r in group]
        ax.plot(xs, [r["step_p50_s"] for r in group], marker="o" if replicas == 1 else "s",
                linestyle=("-" if replicas == 1 else "--") if kind == "app" else ":",
                label=f"{kind} writers, {slos} SLOs, {replicas} replica{'s' if replicas > 1 else ''}")
    ax.scatter([1000], [0.5], marker="_", s=400, color="red", label="targets (1000: 0.5 s, 10000: 3 s)")
    ax.scatter([10000], [3.0], marker="_", s=400, color="red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("writers (nodes)")
    ax.set_ylabel("one controller step (p50), seconds")
    ax.set_title("drcio controller step vs writers (2-core box, fleet on the same cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: dict[str, Any]) -> str:
    """The results as the README's tables."""
    out = [f"Command: `{doc['command']}` — {doc['cpus']} cores, load average {doc['load1_at_start']} at the start, "
           f"{doc.get('load1_at_end', '?')} at the end ({doc['started']} .. {doc.get('finished', '?')}).", ""]
    out += ["| writers | fleet | SLOs | replicas | step p50 s | step p99 s | first step s | controller CPU s/step | "
            "peak RSS MB (per replica) | failed pushes | new connections/step | fleet CPU s/step | load |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["controller"]:
        out.append(f"| {r['writers']} | {r['fleet']} | {r['slos']} | {r['replicas']} | {r['step_p50_s']:.3f} | {r['step_p99_s']:.3f} | "
                   f"{r['first_step_s']:.3f} | {r['cpu_s_per_step']:.3f} | {r['peak_rss_mb']:.0f} | {r['failed_pushes']} | "
                   f"{r['connections_opened_per_steady_step']:g} | {r['fleet_cpu_s_per_step']:.2f} | {r['load1_before']:.1f} |")
    out += ["", "| SLOs | sensor | Prometheus requests/tick | tick's queries p50 s | max s | same readings |", "|---:|---|---:|---:|---:|---|"]
    for r in doc["prometheus"]:
        out.append(f"| {r['slos']} | {r['mode']} | {r['requests_per_tick']:g} | {r['tick_query_p50_s']:.3f} | {r['tick_query_max_s']:.3f} | "
                   f"{r.get('same_readings_as_per_slo', '')} |")
    out += ["", "| tree | LP cgroups | push changing all, p50 s | max s | push changing none, p50 s | load |", "|---|---:|---:|---:|---:|---:|"]
    for r in doc["writer_apply"]:
        if "skipped" in r:
            out.append(f"| {r['tree']} | {r['lp_cgroups']} | skipped: {r['skipped']} | | | |")
        else:
            out.append(f"| {r['tree']} | {r['lp_cgroups']} | {r['apply_changed_p50_s']:.3f} | {r['apply_changed_max_s']:.3f} | "
                       f"{r['apply_unchanged_p50_s']:.3f} | {r['load1']:.1f} |")
    return "\n".join(out) + "\n"


def _by(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Trimmed grid: 1000 and 10000 writers, fewer SLO counts and steps.")
@click.option("--smoke", is_flag=True, help="A tiny grid (40 writers, 10 LP cgroups) to check the benchmark runs; not for figures.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Results JSON (plot and profile go next to it).")
@click.option("--profile", is_flag=True, help="Also cProfile one step of the 10000-writer, 100-SLO, one-replica run (lean fleet).")
@click.option("--skip", multiple=True, type=click.Choice(["prometheus", "controller", "apply"]), help="Leave a part out.")
@click.option("--role", type=click.Choice(["main", "exporter", "controller"]), default="main", hidden=True)
@click.option("--spec", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("--exporter-port", type=int, default=0, hidden=True)
@click.option("--exporter-slos", type=int, default=100, hidden=True)
def main(
    quick: bool, smoke: bool, output: Path | None, profile: bool, skip: tuple[str, ...], role: str, spec: Path | None,
    exporter_port: int, exporter_slos: int,
) -> None:
    """Measure one controller step against 10..10,000 real writers, Prometheus' cost per tick, and writer apply time."""
    if role == "exporter":
        run_exporter(exporter_port, exporter_slos)
        return
    if role == "controller":
        assert spec is not None
        run_controller_worker(spec)
        return
    if output is None:
        raise click.UsageError("--output FILE.json is required")
    grid = SMOKE if smoke else QUICK if quick else FULL
    lp_counts = (10,) if smoke else LP_COUNTS
    console = Console(width=160)
    doc: dict[str, Any] = {
        "command": "python benchmarks/scale.py" + (" --quick" if quick else "") + (" --smoke" if smoke else "")
        + (" --profile" if profile else "") + f" --output {output}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load1_at_start": load(),
        "method": {
            "fleet": "writer FastAPI apps (writer.server.build_app) over real Reconcilers on fake v2 trees, 2 LP cgroups each; "
            "one socket per writer, one uvicorn server per fleet process (benchmarks/scale_fleet.py)",
            "controller": "Controller.step with BatchedPrometheusSensor (real Prometheus) and HttpPusher, in its own process per replica",
            "step_p99": "nearest rank over the measured steps (with <100 steps: the slowest)",
            "grid": [r.__dict__ for r in grid],
        },
        "controller": [], "prometheus": [], "writer_apply": [],
    }
    raise_open_files_limit(4096)
    with tempfile.TemporaryDirectory(prefix="drcio-t10-scale-") as tmp:
        work = Path(tmp)
        if "apply" not in skip:
            for tree in ("fake-v2", "fake-v1", "kernel-v1"):
                for lp in lp_counts:
                    doc["writer_apply"].append(measure_apply(tree, lp, work))
                    shutil.rmtree(work / f"{tree}-{lp}", ignore_errors=True)
            console.print(simple_table("writer: one push changing every LP cgroup's limits", doc["writer_apply"],
                                       ("tree", "lp_cgroups", "apply_changed_p50_s", "apply_changed_max_s", "apply_unchanged_p50_s", "skipped", "load1")))
            _write(output, doc)
        with prometheus_with_data(max(SLO_COUNTS), console) as prom:
            if "prometheus" not in skip:
                doc["prometheus"] = measure_prometheus(prom, SLO_COUNTS, reps=5 if quick else 10)
                console.print(simple_table("Prometheus: one tick's queries", doc["prometheus"],
                                           ("slos", "mode", "requests_per_tick", "tick_query_p50_s", "tick_query_max_s", "statuses", "same_readings_as_per_slo", "load1")))
                _write(output, doc)
            if "controller" not in skip:
                rows: list[dict[str, Any]] = doc["controller"]
                status = "starting"
                with Live(controller_table(rows, f"starting {max(r.writers for r in grid)} writers ..."), console=console,
                          refresh_per_second=2) as live:
                    fleet = start_fleet(max(r.writers for r in grid), work / "fleet")
                    doc["fleet"] = {"writers": len(fleet.all_urls["app"]), "processes": len(fleet.procs),
                                    "started_s": round(fleet.started_s, 1), "rss_mb_at_start": round(fleet.rss_mb, 1)}
                    try:
                        for run in grid:
                            fleet.use(run.fleet, run.writers)
                            for replicas in run.replicas:
                                for slos in run.slos:
                                    live.update(controller_table(rows, f"{run.writers} writers ({run.fleet}), {slos} SLOs, "
                                                                       f"{replicas} replica(s): {run.steps} steps ..."))
                                    last = run.fleet == "lean" and run.writers == 10000 and slos == 100 and replicas == 1
                                    prof = output.with_name(output.stem + "-profile.txt") if profile and last else None
                                    rows.append(measure_controller(fleet, slos=slos, replicas=replicas, steps=run.steps, prometheus=prom,
                                                                   workdir=work, profile_to=prof))
                                    _write(output, doc)
                                    live.update(controller_table(rows, "..."))
                    finally:
                        fleet.stop()
                    live.update(controller_table(rows, "done"))
                plot(rows, output.with_suffix(".png"))
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["load1_at_end"] = load()
    _write(output, doc)
    output.with_suffix(".md").write_text(markdown(doc))
    console.print(f"wrote {output}, {output.with_suffix('.md')}" + (f" and {output.with_suffix('.png')}" if doc["controller"] else ""))


if __name__ == "__main__":
    main()
