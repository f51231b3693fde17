"""The SLO file the controller gets in each scenario, and the base SLO file it is derived from.

Used by the scenario runner (:mod:`experiments.scenarios`, which checks the
user's ``--slo`` file before anything starts) and by every backend (which
writes the document for the controller it starts, or hands it to the
simulated loop). Every scenario with limits goes through the same controller
configuration, so a fixed limit is applied exactly as drcio would apply it.
The base SLO (``templates/slo.yaml`` or ``--slo FILE``) provides the
throttle range, window and policy; per scenario:

- ``drcio``: the base SLO's own policy (PID or AIMD);
- ``sweep`` step *i* of *n*: ``{kind: static, level: i/(n-1)}`` over the
  SAME throttle range, so the limits are geometric from floor to ceiling
  and each is exactly the limit drcio would set at that level;
- ``probe`` (the oracle's bisection): as a sweep step, at the probed level;
- ``dynamic``: as ``drcio`` (the schedule changes the load, not the SLO);
- ``static-max``: a fixed LP ``io.max`` of read 200M / write 50M (a
  one-point range, static level 1);
- ``static-weight``: weights only: LP ``io.weight`` 10 (v2 scale; the
  writer maps it onto BFQ's 10 on cgroup v1), HP at the default weight
  (v2 100 = BFQ 100), with the disk's scheduler switched to BFQ for the
  scenario. The writer refuses every target for an HP workload (it never
  touches HP cgroups), so HP's weight cannot be raised to 1000 through it:
  the ratio is 10:1 rather than the classic 1000:10.

The wiring (Prometheus URL and timeout, writer URL, token file, the HP job label, the LP
selector and group, the devices) always comes from the backend, whatever
the file says, because the experiment runs its own private stack; and
``start_level`` is ``failsafe``, so no scenario's loop starts from the level
an earlier scenario left on writers that outlive it, unless the scenario
fixes the level it starts at (:attr:`ScenarioSpec.start_level`).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from experiments.model import LP_GROUP, LP_SELECTOR, ScenarioSpec, SloWiring
from experiments.yamlfile import read_yaml

__all__ = [
    "STATIC_MAX_RBPS",
    "STATIC_MAX_WBPS",
    "STATIC_WEIGHT_LP",
    "SloError",
    "load_base_slo",
    "slo_document",
    "slo_target_text",
    "validate_slo",
]

#: static-max: the classic fixed io.max (bytes/s as size strings of the SLO file).
STATIC_MAX_RBPS = "200M"
STATIC_MAX_WBPS = "50M"
#: static-weight: the LP group's weight in the cgroup v2 io.weight scale (v1 BFQ: 10; HP keeps 100).
STATIC_WEIGHT_LP = 10


class SloError(ValueError):
    """The SLO file given to run-experiment is unusable; the message says where and why."""


def _template() -> dict[str, Any]:
    text = resources.files("experiments").joinpath("templates/slo.yaml").read_text()
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def load_base_slo(path: Path | None) -> tuple[dict[str, Any], str]:
    """The base SLO document (first SLO used) and where it came from; ``None`` = the packaged template.

    Raises :class:`SloError` naming the file when it cannot be read or has no SLO.
    """
    if path is None:
        return _template(), "the packaged template experiments/templates/slo.yaml"
    doc = read_yaml(path, SloError, "SLO file")
    if not isinstance(doc, dict) or not isinstance(doc.get("slos"), list) or not doc["slos"]:
        raise SloError(f"{path}: needs a 'slos' list with at least one SLO (see README 'SLO file')")
    if not isinstance(doc["slos"][0], dict) or not isinstance(doc["slos"][0].get("throttle"), dict):
        raise SloError(f"{path}: slos[0] needs a 'throttle' section (its range is what the experiment sweeps)")
    return doc, str(path)


def slo_target_text(doc: dict[str, Any]) -> str | None:
    """The first SLO's ``target`` as written (e.g. ``"5ms"``), if any."""
    target = doc["slos"][0].get("target")
    return None if target is None else str(target)


def _ms(value: float) -> str:
    return f"{value:.6g}ms"


def slo_document(spec: ScenarioSpec, base: dict[str, Any], *, target_ms: float, wiring: SloWiring) -> dict[str, Any]:
    """The SLO file the controller gets for ``spec`` (see the module docstring for each kind)."""
    if not spec.controlled:
        raise ValueError(f"scenario {spec.name} runs no controller")
    doc = copy.deepcopy(base)
    slo = copy.deepcopy(doc["slos"][0])
    doc.update(
        interval=doc.get("interval", "1s"),
        mode="active",
        # The private Prometheus is on loopback: answers take milliseconds, and a short timeout
        # keeps any interval of 1 s or more valid.
        prometheus={"url": wiring.prometheus_url, "timeout": "500ms", "retries": 0},
        writers={"static": [wiring.writer_url]},
        token_file=str(wiring.token_file),
        # Every scenario's loop starts from the fail-safe level or the level the scenario fixes,
        # never from what the scenario before it left on writers that outlive it (the Kubernetes
        # backend's DaemonSet).
        start_level="failsafe" if spec.start_level is None else round(spec.start_level, 6),
    )
    slo.pop("query", None)
    slo.pop("rate_query", None)
    slo.update(metric=slo.get("metric", "gnn_request_latency_seconds"), target=_ms(target_ms),
               labels={"job": wiring.hp_job})
    throttle = dict(slo["throttle"])
    throttle.update(selector=dict(LP_SELECTOR), group=LP_GROUP, devices=wiring.devices)
    slos = [slo]
    if spec.kind in ("sweep", "probe"):
        assert spec.level is not None
        slo["policy"] = {"kind": "static", "level": round(spec.level, 6)}
    elif spec.kind == "static-max":
        slo["policy"] = {"kind": "static", "level": 1.0}
        throttle = {k: throttle[k] for k in ("selector", "group", "devices")}
        throttle.update(rbps={"min": STATIC_MAX_RBPS, "max": STATIC_MAX_RBPS},
                        wbps={"min": STATIC_MAX_WBPS, "max": STATIC_MAX_WBPS})
    elif spec.kind == "static-weight":
        slo["policy"] = {"kind": "static", "level": 1.0}
        throttle = {k: throttle[k] for k in ("selector", "group", "devices")}
        throttle["weight"] = {"min": STATIC_WEIGHT_LP, "max": STATIC_WEIGHT_LP}
    slo["throttle"] = throttle
    doc["slos"] = slos
    return doc


def validate_slo(doc: dict[str, Any], where: str) -> None:
    """Check a generated SLO document with the controller's own loader; raise :class:`SloError` with every problem."""
    from controller.config import parse_config
    from controller.errors import ConfigError

    try:
        parse_config(doc, source=where)
    except ConfigError as exc:
        raise SloError(str(exc)) from exc
