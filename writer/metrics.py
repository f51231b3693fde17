"""The writer's Prometheus metrics, on a registry the caller passes in.

The reconciler (:mod:`writer.reconcile`) owns one :class:`WriterMetrics`: it
counts events as they happen (pushes, kernel errors, vanished cgroups) and
hands a ``read`` callback that the custom collector calls on every scrape to
report what is in force *now*, read back from the kernel: limits, weights,
bytes moved, pod counts, lease state. A failing read leaves those samples out;
it never fails the scrape.

Names: the original demo's (``drc_io_*``, ``drcio_io_weight``) are kept; the
rest follow Prometheus conventions. Per-cgroup samples carry ``group`` (the
push group, or ``unassigned`` for an LP workload no group selects) and
``workload`` (``namespace/name``), since a group can hold several pods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from writer.api import LP_IO_MAX_METRIC, LP_READ_BYTES_METRIC, LP_WRITE_BYTES_METRIC
from writer.cgroups import Limits

__all__ = ["CgroupReading", "Reading", "WriterMetrics", "PUSH_RESULTS"]

log = logging.getLogger(__name__)

#: Values of ``drcio_pushes_total{result}``.
PUSH_RESULTS = ("accepted", "replay", "stale", "unauthorized", "invalid", "too_large")


@dataclass(frozen=True)
class CgroupReading:
    """What one workload's cgroup shows right now; ``None`` fields = that read failed."""

    group: str
    workload: str
    role: str
    limits: dict[str, Limits] | None
    weight: int | None
    io_bytes: dict[str, tuple[int, int]] | None


@dataclass(frozen=True)
class Reading:
    """Everything the collector reports, gathered by the reconciler per scrape."""

    hp_pods: int
    lp_pods: int
    cgroups: list[CgroupReading]
    lease_expired: bool
    lease_seconds_left: float
    failsafe_active: bool
    #: Per group that has a weight: does any of its devices honour weights (BFQ / io.cost)?
    weight_effective: dict[str, bool] = field(default_factory=dict)
    #: Per device of a weighted group: what carries the weight (iocost / bfq / cfq / none).
    weight_mechanisms: Mapping[str, str] = field(default_factory=dict)
    #: Groups of the last push that selected no LP workload here.
    unmatched_groups: list[str] = field(default_factory=list)
    #: False when Kubernetes discovery finds no kubelet cgroup tree it knows under the root.
    tree_recognised: bool = True


class WriterMetrics:
    """Event counters plus a per-scrape collector over ``read``."""

    def __init__(self, registry: CollectorRegistry, read: Callable[[], Reading]) -> None:
        self.controller_errors = Counter(
            "drc_io_controller_errors", "Kernel refusals while writing or reading cgroup files", registry=registry
        )
        self.last_update = Gauge(
            "drc_io_last_update_timestamp", "Unix time of the last accepted push", registry=registry
        )
        self.push_generation = Gauge("drcio_push_generation", "Generation of the last accepted push", registry=registry)
        self.pushes = Counter("drcio_pushes", "Pushes received, by result", ["result"], registry=registry)
        for result in PUSH_RESULTS:
            self.pushes.labels(result)  # export zeros so rate() works from the first push
        self.vanished = Counter(
            "drcio_cgroups_vanished", "Workload cgroups found gone while writing (pod deleted)", registry=registry
        )
        self.reconciles = Counter("drcio_reconciles", "Reconcile rounds, by result", ["result"], registry=registry)
        registry.register(_ReadingCollector(read))


class _ReadingCollector(Collector):
    def __init__(self, read: Callable[[], Reading]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []  # dynamic families; do not let register() call collect()

    def collect(self) -> Iterator[Metric]:
        try:
            reading = self._read()
        except Exception:  # a scrape must never fail because the kernel or discovery did
            log.exception("reading cgroups for /metrics failed; samples left out")
            return
        yield from _families(reading)


def _families(r: Reading) -> Iterator[Metric]:
    hp = GaugeMetricFamily("drc_io_high_priority_pods", "High-priority workloads found on this node")
    hp.add_metric([], r.hp_pods)
    lp = GaugeMetricFamily("drc_io_low_priority_pods", "Low-priority workloads found on this node")
    lp.add_metric([], r.lp_pods)
    limited = GaugeMetricFamily("drc_io_cgroups_with_limits", "LP cgroups with an io.max limit in force (read back)")
    limited.add_metric([], sum(1 for c in r.cgroups if c.role != "hp" and c.limits))
    expired = GaugeMetricFamily("drcio_lease_expired", "1 when no valid push renewed the lease within its TTL")
    expired.add_metric([], float(r.lease_expired))
    left = GaugeMetricFamily("drcio_lease_seconds_left", "Seconds until the lease runs out (0 when expired)")
    left.add_metric([], r.lease_seconds_left)
    failsafe = GaugeMetricFamily("drcio_failsafe_active", "1 while the configured fail-safe governs the LP cgroups")
    failsafe.add_metric([], float(r.failsafe_active))
    yield from (hp, lp, limited, expired, left, failsafe)

    effective = GaugeMetricFamily(
        "drcio_io_weight_effective",
        "1 if the group's weight can act (BFQ scheduler or io.cost on a device), 0 if written but inert",
        labels=["group"],
    )
    for group, ok in sorted(r.weight_effective.items()):
        effective.add_metric([group], float(ok))
    yield effective

    mechanism = GaugeMetricFamily(
        "drcio_io_weight_mechanism",
        "1 for the mechanism that carries weights on a device (iocost, bfq, cfq; none = the weight is inert)",
        labels=["device", "mechanism"],
    )
    for device, name in sorted(r.weight_mechanisms.items()):
        mechanism.add_metric([device, name], 1.0)
    unmatched = GaugeMetricFamily(
        "drcio_push_group_unmatched", "1 for each group of the last push that selected no LP workload on this node",
        labels=["group"],
    )
    for group in r.unmatched_groups:
        unmatched.add_metric([group], 1.0)
    tree = GaugeMetricFamily(
        "drcio_kubelet_tree_recognised", "0 when no kubelet cgroup tree (kubepods.slice / kubepods) is found under the root"
    )
    tree.add_metric([], float(r.tree_recognised))
    yield from (mechanism, unmatched, tree)

    labels = ["group", "workload"]
    weight = GaugeMetricFamily("drcio_io_weight", "Default I/O weight in force (the file's own scale)", labels=labels)
    bps = GaugeMetricFamily(
        LP_IO_MAX_METRIC,
        "Bandwidth limit in force per device and direction (absent = max)",
        labels=[*labels, "device", "direction"],
    )
    iops = GaugeMetricFamily(
        "drcio_io_max_iops", "IOPS limit in force per device and direction (absent = max)",
        labels=[*labels, "device", "direction"],
    )
    read_bytes = CounterMetricFamily(
        LP_READ_BYTES_METRIC, "Bytes read by the workload's cgroup, per device", labels=[*labels, "device"]
    )
    write_bytes = CounterMetricFamily(
        LP_WRITE_BYTES_METRIC, "Bytes written by the workload's cgroup, per device", labels=[*labels, "device"]
    )
    for c in r.cgroups:
        base = [c.group, c.workload]
        if c.weight is not None:
            weight.add_metric(base, c.weight)
        for dev, lim in sorted((c.limits or {}).items()):
            for direction, b, o in (("read", lim.rbps, lim.riops), ("write", lim.wbps, lim.wiops)):
                if b is not None:
                    bps.add_metric([*base, dev, direction], b)
                if o is not None:
                    iops.add_metric([*base, dev, direction], o)
        for dev, (rb, wb) in sorted((c.io_bytes or {}).items()):
            read_bytes.add_metric([*base, dev], rb)
            write_bytes.add_metric([*base, dev], wb)
    yield from (weight, bps, iops, read_bytes, write_bytes)
