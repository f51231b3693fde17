"""The ``kubernetes`` backend: the scenarios on a real cluster, through the Kubernetes API.

Used by ``run-experiment --backend kubernetes``. On entry it applies the demo
(``deploy/rendered/demo.yaml``, the rendered ``deploy/demo`` overlay: drcio,
its monitoring, the HP GNN service with its load, the LP Job) with server-side
apply, and waits for the controller, the writers and the HP service to be
ready. Per scenario it:

1. writes the scenario's SLO file into the controller's SLO ConfigMap and
   restarts the controller (it reads the file at start): the ``drcio`` and
   sweep/static scenarios get their SLO as on the local backend; ``baseline``
   and ``contention`` get a static level-1 policy without limits ("no
   control"), so the writers' lease stays renewed and their fail-safe never
   throttles a scenario that should run free;
2. scales the LP Job (``parallelism`` 1 when the scenario runs LP, else 0);
3. waits the scenario's duration;
   (dynamic scenarios: follows the schedule, switching the LP Job on and off
   and setting the HP load's rate per phase);
4. exports its time range from Prometheus with the same queries as the local
   backend (:mod:`experiments.export`), so the output directory is the same.

Every cluster action goes through a :class:`Cluster`: :class:`ApiCluster` on
the ``kubernetes`` client's DynamicClient (never a ``kubectl`` shell-out), or
:class:`DryRunCluster`, which ``--dry-run`` swaps in at wiring time: it prints
what would be applied, patched, scaled, waited for and queried, in order, and
touches nothing.

The HP load generator runs in the cluster (Deployment ``hp-load``) and keeps
no per-request CSV there; the report's client-side columns stay empty on this
backend (the server-side histogram is what the figures use).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TextIO

import yaml

from experiments.export import Export, SeriesQueries, export_range
from experiments.model import LP_GROUP, BackendUnavailable, ScenarioRun, ScenarioSpec, SloWiring, Tick
from experiments.slo import slo_document, validate_slo

__all__ = ["KubernetesConfig", "Cluster", "ApiCluster", "DryRunCluster", "KubernetesBackend", "free_slo"]

log = logging.getLogger(__name__)

FIELD_MANAGER = "drcio-run-experiment"
HP_JOB = "hp-gnn"
#: The demo's hp-load rate (requests/s), restored after a dynamic scenario.
DEFAULT_HP_RATE = 200.0
LP_JOB = "lp-batch"


@dataclass(frozen=True)
class KubernetesConfig:
    """Where the demo lives and how the backend reaches it.

    manifests: the rendered demo (``kubectl kustomize deploy/demo``, checked in
        as ``deploy/rendered/demo.yaml``).
    prometheus_url: the Prometheus the export queries, as reachable from where
        run-experiment runs (e.g. a ``port-forward`` to kube-prometheus-stack).
    in_cluster_prometheus_url: the same Prometheus as the controller reaches it.
    ready_timeout_seconds: how long to wait for the demo to become ready
        (the HP service builds its 512 MiB feature store on first start).
    """

    manifests: Path = Path("deploy/rendered/demo.yaml")
    prometheus_url: str = "http://127.0.0.1:9090"
    in_cluster_prometheus_url: str = "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    system_namespace: str = "drcio-system"
    demo_namespace: str = "drcio-demo"
    controller: str = "drcio-controller"
    lp_job: str = LP_JOB
    ready_timeout_seconds: float = 600.0
    export_window_seconds: float = 5.0
    #: Dynamic schedules: how often a ramp's HP rate is re-set (each change rolls the load pod).
    schedule_step_seconds: float = 10.0
    base_slo: dict[str, Any] = field(default_factory=dict)


class Cluster(Protocol):
    """The cluster actions a run needs, in the words the dry run prints."""

    def apply(self, objects: Sequence[dict[str, Any]]) -> None: ...

    def wait_ready(self, kind: str, namespace: str, name: str, timeout_seconds: float) -> None: ...

    def slo_configmap(self, namespace: str, deployment: str) -> str: ...

    def set_configmap(self, namespace: str, name: str, key: str, text: str) -> None: ...

    def restart(self, namespace: str, deployment: str) -> None: ...

    def scale_job(self, namespace: str, name: str, parallelism: int) -> None: ...

    def set_hp_rate(self, namespace: str, deployment: str, rate: float) -> None: ...

    def wait(self, seconds: float, tick: Tick, status: str) -> None: ...

    def now(self) -> float: ...

    def export(self, url: str, start: float, end: float, queries: SeriesQueries) -> Export: ...


_API_VERSIONS = {"Deployment": "apps/v1", "DaemonSet": "apps/v1", "Job": "batch/v1", "ConfigMap": "v1"}


class ApiCluster:
    """:class:`Cluster` on ``kubernetes.dynamic.DynamicClient`` (injected; tests pass a fake at this boundary)."""

    def __init__(self, dynamic: Any, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.dynamic = dynamic
        self._clock = clock
        self._sleep = sleep

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        for obj in objects:
            meta = obj["metadata"]
            self.dynamic.server_side_apply(
                self._resource(obj["apiVersion"], obj["kind"]), body=obj, name=meta["name"],
                namespace=meta.get("namespace"), field_manager=FIELD_MANAGER, force_conflicts=True)

    def _get(self, kind: str, namespace: str, name: str) -> Any:
        obj: dict[str, Any] = self._resource(_API_VERSIONS[kind], kind).get(name=name, namespace=namespace).to_dict()
        return obj

    def wait_ready(self, kind: str, namespace: str, name: str, timeout_seconds: float) -> None:
        deadline = self._clock() + timeout_seconds
        while True:
            obj = self._get(kind, namespace, name)
            status, spec = obj.get("status") or {}, obj.get("spec") or {}
            if kind == "DaemonSet":
                want, have = status.get("desiredNumberScheduled"), status.get("numberReady")
                ready = want is not None and want > 0 and have == want
            else:
                # A rollout is done when every pod is updated and ready and no old pod is left: until
                # then an old controller replica (old SLO file) could still lead.
                want, have = spec.get("replicas", 1), status.get("readyReplicas") or 0
                ready = (have >= want and (status.get("updatedReplicas") or 0) >= want
                         and (status.get("replicas") or 0) <= want)
            if ready:
                return
            if self._clock() >= deadline:
                raise TimeoutError(f"{kind} {namespace}/{name} not ready within {timeout_seconds:g} s "
                                   f"(ready {have} of {want})")
            self._sleep(2.0)

    def slo_configmap(self, namespace: str, deployment: str) -> str:
        dep = self._get("Deployment", namespace, deployment)
        for volume in dep["spec"]["template"]["spec"].get("volumes") or []:
            if volume.get("name") == "slo" and volume.get("configMap"):
                return str(volume["configMap"]["name"])
        raise BackendUnavailable(f"Deployment {namespace}/{deployment} mounts no ConfigMap volume named 'slo'",
                                 "Apply deploy/demo (or deploy/base) unchanged.")

    def set_configmap(self, namespace: str, name: str, key: str, text: str) -> None:
        self._resource("v1", "ConfigMap").patch(name=name, namespace=namespace, body={"data": {key: text}},
                                                content_type="application/merge-patch+json")

    def restart(self, namespace: str, deployment: str) -> None:
        stamp = datetime.fromtimestamp(self._clock(), tz=timezone.utc).isoformat()
        body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        self._resource("apps/v1", "Deployment").patch(name=deployment, namespace=namespace, body=body,
                                                      content_type="application/merge-patch+json")

    def scale_job(self, namespace: str, name: str, parallelism: int) -> None:
        self._resource("batch/v1", "Job").patch(name=name, namespace=namespace,
                                                body={"spec": {"parallelism": parallelism}},
                                                content_type="application/merge-patch+json")

    def set_hp_rate(self, namespace: str, deployment: str, rate: float) -> None:
        deployments = self._resource("apps/v1", "Deployment")
        if rate <= 0:  # a quiet spell: no load pod at all
            deployments.patch(name=deployment, namespace=namespace, body={"spec": {"replicas": 0}},
                              content_type="application/merge-patch+json")
            return
        # Strategic merge: containers and env merge by name (a JSON merge patch would replace the lists).
        body = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "loadgen", "env": [{"name": "HP_RATE", "value": f"{rate:g}"}]}]}}}}
        deployments.patch(name=deployment, namespace=namespace, body=body,
                          content_type="application/strategic-merge-patch+json")

    def wait(self, seconds: float, tick: Tick, status: str) -> None:
        start = self._clock()
        while (elapsed := self._clock() - start) < seconds:
            tick(elapsed, seconds, status)
            self._sleep(min(1.0, seconds - elapsed))

    def now(self) -> float:
        return self._clock()

    def export(self, url: str, start: float, end: float, queries: SeriesQueries) -> Export:
        return export_range(url, start, end, queries=queries)


class DryRunCluster:
    """Prints every action instead of doing it; a simulated clock stands in for waiting."""

    def __init__(self, out: TextIO, *, start: float = 0.0) -> None:
        self.out = out
        self._t = start
        self.step = 0

    def _say(self, text: str) -> None:
        self.step += 1
        print(f"{self.step:3d}. {text}", file=self.out)

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        for obj in objects:
            ns = obj["metadata"].get("namespace")
            self._say(f"apply (server-side, field manager {FIELD_MANAGER}) {obj['apiVersion']} {obj['kind']} "
                      f"{ns + '/' if ns else ''}{obj['metadata']['name']}")

    def wait_ready(self, kind: str, namespace: str, name: str, timeout_seconds: float) -> None:
        self._say(f"wait until {kind} {namespace}/{name} is ready (at most {timeout_seconds:g} s)")

    def slo_configmap(self, namespace: str, deployment: str) -> str:
        self._say(f"read Deployment {namespace}/{deployment}: the ConfigMap of its 'slo' volume")
        return "<slo-configmap>"

    def set_configmap(self, namespace: str, name: str, key: str, text: str) -> None:
        doc = yaml.safe_load(text)
        slo = doc["slos"][0]
        limits = {k: v for k, v in slo["throttle"].items() if k in ("rbps", "wbps", "weight")}
        self._say(f"patch ConfigMap {namespace}/{name} key {key}: mode {doc['mode']}, policy {slo['policy']}, "
                  f"target {slo['target']}, limits {limits}")

    def restart(self, namespace: str, deployment: str) -> None:
        self._say(f"restart Deployment {namespace}/{deployment} (patch spec.template restartedAt)")

    def scale_job(self, namespace: str, name: str, parallelism: int) -> None:
        self._say(f"scale Job {namespace}/{name}: spec.parallelism = {parallelism}")

    def set_hp_rate(self, namespace: str, deployment: str, rate: float) -> None:
        if rate <= 0:
            self._say(f"scale Deployment {namespace}/{deployment}: replicas = 0 (no HP load)")
        else:
            self._say(f"patch Deployment {namespace}/{deployment}: HP_RATE = {rate:g} requests/s, replicas = 1")

    def wait(self, seconds: float, tick: Tick, status: str) -> None:
        self._say(f"wait {seconds:g} s ({status})")
        self._t += seconds

    def now(self) -> float:
        return self._t

    def export(self, url: str, start: float, end: float, queries: SeriesQueries) -> Export:
        self._say(f"query {url} over the scenario's {end - start:g} s, step 1 s:")
        for column, query in queries.series().items():
            print(f"       {column}: {query}", file=self.out)
        print(f"       histogram: {queries.histogram()}", file=self.out)
        import pandas as pd

        from experiments.export import HISTOGRAM_COLUMNS, SERIES_COLUMNS

        return Export(pd.DataFrame(columns=SERIES_COLUMNS), pd.DataFrame(columns=HISTOGRAM_COLUMNS), start, end, 1.0)


def free_slo(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` turned into "no control": a static level-1 policy with no limit and no weight.

    The controller keeps renewing the writers' lease with no limits, so a
    scenario without drcio never runs under the writers' fail-safe.
    """
    out = copy.deepcopy(doc)
    slo = out["slos"][0]
    slo["policy"] = {"kind": "static", "level": 1.0}
    throttle = {k: slo["throttle"][k] for k in ("selector", "group", "devices")}
    throttle.update(rbps={"min": "1M", "max": "max"}, wbps={"min": "1M", "max": "max"})
    slo["throttle"] = throttle
    return out


class KubernetesBackend:
    """See the module docstring. ``cluster`` is an :class:`ApiCluster` or a :class:`DryRunCluster`."""

    repeatable = False  # a real cluster: a rerun can come out differently

    def __init__(self, config: KubernetesConfig, cluster: Cluster, *,
                 status: Callable[[str], None] = lambda _: None) -> None:
        self.config = config
        self.cluster = cluster
        self.status = status
        self._slo_configmap: str | None = None

    # -- Backend protocol -----------------------------------------------------------

    @property
    def prometheus_url(self) -> str:
        return self.config.prometheus_url

    @property
    def queries(self) -> SeriesQueries:
        return SeriesQueries(window_seconds=self.config.export_window_seconds, hp_matcher=f'job="{HP_JOB}"',
                             lp_matcher=f'job="{LP_JOB}"', group_matcher=f'group="{LP_GROUP}"')

    def describe(self) -> dict[str, str]:
        return {
            "backend": "kubernetes (the demo applied to a cluster; its Prometheus)",
            "manifests": str(self.config.manifests),
            "Prometheus": self.config.prometheus_url,
            "HP load": "the hp-load Deployment (200 requests/s, open loop)",
            "LP job": f"Job {self.config.demo_namespace}/{self.config.lp_job}, scaled per scenario",
        }

    def _objects(self) -> list[dict[str, Any]]:
        try:
            docs = [d for d in yaml.safe_load_all(self.config.manifests.read_text()) if d]
        except OSError as e:
            raise BackendUnavailable(f"cannot read the demo manifests {self.config.manifests}: {e.strerror}",
                                     "Render them: kubectl kustomize deploy/demo > deploy/rendered/demo.yaml") from e
        # Namespaces first, then their quotas (a quota the writer's priority class needs must exist
        # before the DaemonSet creates pods), then everything else in file order (kustomize's order
        # already puts RBAC and ConfigMaps before the workloads that use them).
        first = {"Namespace": 0, "ResourceQuota": 1}
        return sorted(docs, key=lambda d: first.get(d["kind"], 2))

    def __enter__(self) -> KubernetesBackend:
        c, cfg = self.cluster, self.config
        self.status(f"applying the demo from {cfg.manifests}")
        c.apply(self._objects())
        c.scale_job(cfg.demo_namespace, cfg.lp_job, 0)
        for kind, ns, name in (("Deployment", cfg.system_namespace, cfg.controller),
                               ("DaemonSet", cfg.system_namespace, "drcio-writer"),
                               ("Deployment", cfg.demo_namespace, HP_JOB),
                               ("Deployment", cfg.demo_namespace, "hp-load")):
            c.wait_ready(kind, ns, name, cfg.ready_timeout_seconds)
        self._slo_configmap = c.slo_configmap(cfg.system_namespace, cfg.controller)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Leave the demo in place (it is the user's cluster) but stop the LP job.
        self.cluster.scale_job(self.config.demo_namespace, self.config.lp_job, 0)

    def _wiring(self) -> SloWiring:
        return SloWiring(prometheus_url=self.config.in_cluster_prometheus_url, writer_url="http://unused:9100",
                         token_file=Path("/var/run/drcio/token"), hp_job=HP_JOB, devices="auto")

    def slo_for(self, spec: ScenarioSpec, target_ms: float) -> dict[str, Any]:
        """The SLO file the controller runs during ``spec`` (see the module docstring)."""
        controlled = spec if spec.controlled else ScenarioSpec(spec.name, "drcio", spec.duration_seconds,
                                                                spec.warmup_seconds, lp=spec.lp, controlled=True)
        target = target_ms if target_ms == target_ms else 100.0  # NaN before the baseline: any valid target
        doc = slo_document(controlled, self.config.base_slo, target_ms=target, wiring=self._wiring())
        doc["writers"] = {"kubernetes": {"namespace": self.config.system_namespace, "service": "drcio-writer",
                                         "port": 9100}}
        doc["prometheus"] = {"url": self.config.in_cluster_prometheus_url, "timeout": "2s"}
        doc["interval"] = "5s"
        if not spec.controlled:
            doc = free_slo(doc)
        validate_slo(doc, f"{spec.name} SLO")
        return doc

    def run_scenario(self, spec: ScenarioSpec, *, target_ms: float, raw_dir: Path, tick: Tick) -> ScenarioRun:
        c, cfg = self.cluster, self.config
        assert self._slo_configmap is not None, "backend not entered"
        if spec.kind == "static-weight":
            raise BackendUnavailable("static-weight needs the BFQ scheduler on the node's disk, which this "
                                     "backend does not switch", "Run the other scenarios on the cluster.")
        doc = self.slo_for(spec, target_ms)
        text = yaml.safe_dump(doc, sort_keys=False)
        (raw_dir / "slo.yaml").write_text(text)
        c.set_configmap(cfg.system_namespace, self._slo_configmap, "slo.yaml", text)
        c.restart(cfg.system_namespace, cfg.controller)
        c.wait_ready("Deployment", cfg.system_namespace, cfg.controller, cfg.ready_timeout_seconds)
        notes = {"controller": "drcio" if spec.controlled else "no control (static level 1, no limits)"}
        if spec.schedule is None:
            c.scale_job(cfg.demo_namespace, cfg.lp_job, 1 if spec.lp else 0)
            start = c.now()
            c.wait(spec.duration_seconds, tick, "running")
            end = c.now()
        else:
            start = c.now()
            notes.update(self._play(spec, tick))
            end = c.now()
            c.set_hp_rate(cfg.demo_namespace, "hp-load", DEFAULT_HP_RATE)
        c.scale_job(cfg.demo_namespace, cfg.lp_job, 0)
        return ScenarioRun(spec.name, start, end, raw_dir / "client.csv", raw_dir, notes)

    def _play(self, spec: ScenarioSpec, tick: Tick) -> dict[str, str]:
        """Follow ``spec.schedule``: at every step set the LP Job on or off and the HP load's rate.

        The LP Job's pod template is immutable, so its I/O mode stays the
        demo's (mixed): read/write/mixed phases all mean "LP on", idle "off",
        bursts toggle it. Ramps move the HP rate in steps of ``schedule_step``.
        """
        assert spec.schedule is not None
        c, cfg = self.cluster, self.config
        step = cfg.schedule_step_seconds
        lp_on: bool | None = None
        rate: float | None = None
        t0 = 0.0
        for phase in spec.schedule.phases:
            t = 0.0
            while t < phase.duration_seconds - 1e-9:
                want_lp = spec.lp and phase.lp_mode_at(t) != "idle"
                want_rate = round(phase.hp_rate_at(t) / 10.0) * 10.0
                if want_lp != lp_on:
                    c.scale_job(cfg.demo_namespace, cfg.lp_job, 1 if want_lp else 0)
                    lp_on = want_lp
                if want_rate != rate:
                    c.set_hp_rate(cfg.demo_namespace, "hp-load", want_rate)
                    rate = want_rate
                # up to the next burst edge or step, whichever comes first
                span = min(step, phase.duration_seconds - t)
                if phase.lp == "bursts":
                    period = phase.burst_on_seconds + phase.burst_off_seconds
                    into = t % period
                    edge = phase.burst_on_seconds - into if into < phase.burst_on_seconds else period - into
                    span = min(span, edge)
                c.wait(span, lambda e, _total, s: tick(t0 + t + e, spec.duration_seconds, s),
                       f"{spec.schedule.name}: LP {'on' if lp_on else 'off'}, HP {rate:g}/s")
                t += span
            t0 += phase.duration_seconds
        return {"schedule": spec.schedule.name,
                "schedule_on_kubernetes": "LP phases read/write/mixed all run the demo Job's mixed I/O; "
                                          f"HP ramps in {step:g} s steps"}

    def export(self, run: ScenarioRun) -> Export:
        return self.cluster.export(self.config.prometheus_url, run.start, run.end, self.queries)

    def pause(self, seconds: float, tick: Tick) -> None:
        self.cluster.wait(seconds, tick, "pause")


def in_cluster_or_kubeconfig() -> Any:
    """A DynamicClient from the pod's service account, else the local kubeconfig (BackendUnavailable if neither)."""
    from kubernetes import client, config, dynamic

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise BackendUnavailable(f"no Kubernetes cluster configured ({e})",
                                     "Point KUBECONFIG at a cluster, or run with --dry-run to see the plan.") from e
    return dynamic.DynamicClient(client.ApiClient())
