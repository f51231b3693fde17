"""Prometheus recording and alerting rules built from the SLO file.

Called by ``drcio-controller export-rules`` (and by ``scripts/generate-deploy.py``,
which writes ``deploy/monitoring/prometheusrule.yaml`` from
``deploy/base/slo.yaml``), so the rules always match the SLOs in force.

Per SLO with ``metric`` (a histogram; raw-``query`` SLOs have no bucket to
count and get the quantile rule only):

* ``drcio:slo_latency_seconds:quantile`` - the SLO's quantile over its window,
  the same expression the sensor evaluates;
* ``drcio:slo_error_budget:ratio`` - ``1 - quantile``, as a series for dashboards;
* ``drcio:slo_errors:ratio_rate<W>`` for W in 5m, 30m, 1h, 2h, 6h, 1d, 3d - the
  share of requests *slower* than the target, read from the bucket whose
  ``le`` is the target: ``1 - rate(bucket{le=target}) / rate(count)``. A P95
  target means at least 95 % of requests under it, so the objective is the
  quantile and the error budget ``1 - quantile``.

Alerts: multi-window multi-burn-rate as Sloth and Pyrra generate them (the SRE
workbook's table, for a 30-day period): page when the 1h and 5m windows both
burn faster than 14.4x the budget, or the 6h and 30m windows faster than 6x;
ticket at 3x over 1d and 2h, or 1x over 3d and 6h. The short window is what
makes the alert clear soon after the burn stops. Then the operational alerts:
controller down or without a leader, writer lease expired or fail-safe
active, writer discovery/reconcile problems, sensor errors, pushes failing,
and a target that is not a bucket edge of the live histogram.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from controller.config import ControllerConfig, SloConfig

__all__ = [
    "BURN_WINDOWS",
    "BurnAlert",
    "BURN_ALERTS",
    "RuleOptions",
    "bucket_edges",
    "bucket_le",
    "missing_target_buckets",
    "rule_groups",
    "rules_file",
    "prometheus_rule",
]

#: Every window a burn-rate alert reads, shortest first (Prometheus duration syntax).
BURN_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnAlert:
    severity: str
    long: str
    short: str
    factor: float


#: The SRE workbook's / Sloth's defaults for a 30-day SLO period.
BURN_ALERTS = (
    BurnAlert("page", "1h", "5m", 14.4),
    BurnAlert("page", "6h", "30m", 6.0),
    BurnAlert("ticket", "1d", "2h", 3.0),
    BurnAlert("ticket", "3d", "6h", 1.0),
)


@dataclass(frozen=True)
class RuleOptions:
    """Scrape job names the operational alerts select (on Kubernetes: the Services' names)."""

    controller_job: str = "drcio-controller"
    writer_job: str = "drcio-writer"
    name: str = "drcio"
    namespace: str = "drcio-system"
    #: Labels kube-prometheus-stack's ruleSelector matches (its default: release=<release name>).
    labels: Mapping[str, str] | None = None


def bucket_le(target_seconds: float) -> str:
    """The ``le`` label value prometheus_client writes for a bucket edge (e.g. 0.1 -> "0.1", 1 -> "1.0")."""
    return floatToGoString(target_seconds)


def _matchers(labels: Mapping[str, str], **extra: str) -> str:
    pairs = {**labels, **extra}
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items())) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _seconds(text: float) -> str:
    return f"{text:g}s"


def missing_target_buckets(slos: Sequence[SloConfig], edges: Mapping[str, Sequence[str]]) -> list[str]:
    """SLOs whose target is not one of its histogram's ``le`` values (``edges``: metric -> le strings seen).

    ``edges`` comes from the live Prometheus (``export-rules --prometheus``) or
    from a histogram's known bucket list; a metric absent from ``edges`` is
    reported too, since nothing could be checked for it.
    """
    problems = []
    for slo in slos:
        if slo.metric is None:
            continue
        le = bucket_le(slo.target_seconds)
        seen = edges.get(slo.metric)
        if seen is None:
            problems.append(f"slos ({slo.name}): no buckets of {slo.metric} found, so the target {le}s is unchecked")
        elif le not in seen:
            near = sorted(seen, key=lambda e: abs(float(e) - slo.target_seconds) if e != "+Inf" else float("inf"))[:2]
            problems.append(
                f"slos ({slo.name}): target {le}s is not a bucket edge of {slo.metric} "
                f"(nearest: {', '.join(near)}); the SLI ratio needs a bucket whose le is the target"
            )
    return problems


def bucket_edges(prometheus_url: str, metric: str, *, timeout_seconds: float = 5.0) -> list[str]:
    """The ``le`` values the live Prometheus has for ``<metric>_bucket`` ([] if none).

    Raises OSError (with the reason) when Prometheus cannot be asked.
    """
    import httpx

    try:
        resp = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/label/le/values",
                         params={"match[]": f"{metric}_bucket"}, timeout=timeout_seconds)
        resp.raise_for_status()
        data = resp.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        raise OSError(f"{type(e).__name__}: {e}") from None
    return [str(v) for v in data]


def _recording(slo: SloConfig) -> list[dict[str, Any]]:
    labels = {"slo": slo.name}
    if slo.metric is None:
        assert slo.query is not None
        return [{"record": "drcio:slo_latency_seconds:quantile", "expr": slo.query,
                 "labels": {**labels, "quantile": str(slo.quantile)}}]
    sel = _matchers(slo.labels)
    rules: list[dict[str, Any]] = [{
        "record": "drcio:slo_latency_seconds:quantile",
        "expr": f"histogram_quantile({slo.quantile:g}, sum by (le) "
                f"(rate({slo.metric}_bucket{sel}[{_seconds(slo.window_seconds)}])))",
        "labels": {**labels, "quantile": f"{slo.quantile:g}"},
    }]
    # The budget as a series, so dashboards divide by it to show the burn rate.
    rules.append({"record": "drcio:slo_error_budget:ratio", "expr": f"vector({1.0 - slo.quantile:g})",
                  "labels": dict(labels)})
    good = _matchers(slo.labels, le=bucket_le(slo.target_seconds))
    for w in BURN_WINDOWS:
        rules.append({
            "record": f"drcio:slo_errors:ratio_rate{w}",
            "expr": f"1 - sum(rate({slo.metric}_bucket{good}[{w}])) / sum(rate({slo.metric}_count{sel}[{w}]))",
            "labels": dict(labels),
        })
    return rules


def _burn_alerts(slo: SloConfig) -> list[dict[str, Any]]:
    if slo.metric is None:
        return []
    budget = 1.0 - slo.quantile
    out = []
    for severity in ("page", "ticket"):
        pairs = [a for a in BURN_ALERTS if a.severity == severity]
        terms = [
            f'(drcio:slo_errors:ratio_rate{a.long}{{slo="{slo.name}"}} > ({a.factor:g} * {budget:g})\n'
            f' and drcio:slo_errors:ratio_rate{a.short}{{slo="{slo.name}"}} > ({a.factor:g} * {budget:g}))'
            for a in pairs
        ]
        windows = ", ".join(f"{a.long}/{a.short} at {a.factor:g}x" for a in pairs)
        out.append({
            "alert": "DrcioSloErrorBudgetBurn",
            "expr": "\n or ".join(terms),
            "labels": {"severity": severity, "slo": slo.name},
            "annotations": {
                "summary": f"SLO {slo.name}: error budget burning too fast ({severity})",
                "description": (
                    f"More than the allowed share of requests is slower than {bucket_le(slo.target_seconds)}s "
                    f"(objective {slo.quantile:g}, budget {budget:g}); windows {windows}."
                ),
            },
        })
    out.append({
        "alert": "DrcioSloTargetBucketMissing",
        "expr": f"absent({slo.metric}_bucket{_matchers(slo.labels, le=bucket_le(slo.target_seconds))})",
        "for": "15m",
        "labels": {"severity": "ticket", "slo": slo.name},
        "annotations": {
            "summary": f"SLO {slo.name}: no histogram bucket at the target",
            "description": (f"{slo.metric} has no bucket with le=\"{bucket_le(slo.target_seconds)}\" (or no series "
                            "at all): the SLI ratio and burn-rate alerts cannot be computed. Set the target to a "
                            "bucket edge, or add that edge to the histogram."),
        },
    })
    return out


def _operational(o: RuleOptions) -> list[dict[str, Any]]:
    c, w = f'job="{o.controller_job}"', f'job="{o.writer_job}"'
    return [
        {"alert": "DrcioControllerDown", "expr": f"sum(up{{{c}}}) == 0 or absent(up{{{c}}})", "for": "5m",
         "labels": {"severity": "page"},
         "annotations": {"summary": "No drcio-controller replica is up",
                         "description": "Without the controller no limit is renewed; writers fall back to their "
                                        "fail-safe when the lease runs out."}},
        {"alert": "DrcioControllerNoLeader", "expr": f"sum(drcio_controller_leader{{{c}}}) < 1", "for": "2m",
         "labels": {"severity": "page"},
         "annotations": {"summary": "No drcio-controller replica holds the leader Lease",
                         "description": "Replicas run but none pushes; check the Lease and the API server."}},
        {"alert": "DrcioControllerSplitBrain", "expr": f"sum(drcio_controller_leader{{{c}}}) > 1", "for": "2m",
         "labels": {"severity": "ticket"},
         "annotations": {"summary": "More than one drcio-controller replica believes it leads",
                         "description": "Writers refuse the older generation, but check clock skew and the Lease."}},
        {"alert": "DrcioWriterLeaseExpired", "expr": f"max by (instance) (drcio_lease_expired{{{w}}}) == 1",
         "for": "1m", "labels": {"severity": "page"},
         "annotations": {"summary": "Writer {{ $labels.instance }}: the controller's lease expired",
                         "description": "No valid push renewed the lease within its TTL."}},
        {"alert": "DrcioWriterFailsafeActive", "expr": f"max by (instance) (drcio_failsafe_active{{{w}}}) == 1",
         "for": "1m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "Writer {{ $labels.instance }}: fail-safe limits govern the LP pods",
                         "description": "The LP pods run under the configured fail-safe, not under drcio's decisions."}},
        {"alert": "DrcioWriterDown", "expr": f"up{{{w}}} == 0", "for": "5m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "Writer {{ $labels.instance }} is not scraped",
                         "description": "The node's LP pods keep their last limits until the writer returns."}},
        {"alert": "DrcioWriterDiscoveryProblems",
         "expr": f'increase(drcio_reconciles_total{{{w},result="failed"}}[10m]) > 0',
         "for": "10m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "Writer {{ $labels.instance }}: discovery or reconcile rounds fail",
                         "description": "Pods or their cgroups cannot be found or read; see the writer's /status."}},
        {"alert": "DrcioWriterNoKubeletTree", "expr": f"drcio_kubelet_tree_recognised{{{w}}} == 0", "for": "10m",
         "labels": {"severity": "ticket"},
         "annotations": {"summary": "Writer {{ $labels.instance }} finds no kubelet cgroup tree under its cgroup root",
                         "description": "LP pods on this node are not throttled: check cgroup_root and "
                                        "kubelet_cgroup_root in the writer's file."}},
        # A group that selects nothing on one node is normal (not every node runs LP pods); one that
        # selects nothing on any node while LP pods run is a selector typo. While no LP pod runs
        # anywhere (between batch runs; the demo's LP Job at parallelism 0) it cannot tell, and stays quiet.
        {"alert": "DrcioGroupSelectsNoWorkload",
         "expr": f"count by (group) (drcio_push_group_unmatched{{{w}}} == 1) >= scalar(count(up{{{w}}} == 1))"
                 f" and on () sum(drc_io_low_priority_pods{{{w}}}) > 0",
         "for": "15m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "LP group {{ $labels.group }} selects none of the LP pods running",
                         "description": "Check the SLO's throttle.selector against the LP pods' labels."}},
        {"alert": "DrcioWriterKernelErrors",
         "expr": f"increase(drc_io_controller_errors_total{{{w}}}[10m]) > 0", "for": "10m",
         "labels": {"severity": "ticket"},
         "annotations": {"summary": "Writer {{ $labels.instance }}: the kernel refuses cgroup writes",
                         "description": "See the writer's /status for the files and errors."}},
        {"alert": "DrcioSensorErrors",
         "expr": f"sum by (slo, reason) (increase(drcio_controller_sensor_errors_total{{{c}}}[5m])) > 0",
         "for": "5m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "SLO {{ $labels.slo }}: Prometheus readings fail ({{ $labels.reason }})",
                         "description": "The controller holds, then applies its fail-safe level."}},
        {"alert": "DrcioControllerFailsafe", "expr": f"max by (slo) (drcio_controller_failsafe_active{{{c}}}) == 1",
         "for": "5m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "SLO {{ $labels.slo }}: the controller applies its fail-safe level",
                         "description": "It has had no valid measurement for failsafe.after intervals."}},
        {"alert": "DrcioPushesFailing",
         "expr": f'sum by (writer, result) (increase(drcio_controller_pushes_total{{{c},result!~"ok|dry_run"}}[5m])) > 0',
         "for": "5m", "labels": {"severity": "ticket"},
         "annotations": {"summary": "Pushes to {{ $labels.writer }} fail ({{ $labels.result }})",
                         "description": "That node's LP pods are not governed by current decisions."}},
    ]


def rule_groups(config: ControllerConfig, options: RuleOptions | None = None) -> list[dict[str, Any]]:
    """The rule groups (Prometheus rules-file shape) for every SLO of ``config``."""
    o = options or RuleOptions()
    groups = []
    for slo in config.slos:
        groups.append({"name": f"drcio-slo-{slo.name}", "interval": "30s", "rules": _recording(slo)})
    alerts = [a for slo in config.slos for a in _burn_alerts(slo)] + _operational(o)
    groups.append({"name": "drcio-alerts", "rules": alerts})
    return groups


def rules_file(config: ControllerConfig, options: RuleOptions | None = None) -> dict[str, Any]:
    """A plain Prometheus rules file (``rule_files:``), as ``promtool check rules`` reads it."""
    return {"groups": rule_groups(config, options)}


def prometheus_rule(config: ControllerConfig, options: RuleOptions | None = None) -> dict[str, Any]:
    """The same groups as a prometheus-operator ``PrometheusRule`` (kube-prometheus-stack)."""
    o = options or RuleOptions()
    labels = dict(o.labels) if o.labels is not None else {"release": "kube-prometheus-stack"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": o.name, "namespace": o.namespace, "labels": labels},
        "spec": {"groups": rule_groups(config, o)},
    }
