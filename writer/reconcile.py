"""Level-triggered reconcile: make every LP cgroup's limits equal the desired state.

The HTTP server (:mod:`writer.server`) hands accepted pushes to
:meth:`Reconciler.push`; a background thread calls :meth:`Reconciler.reconcile`
every ``interval`` seconds and whenever discovery reports a change, so drift
(a runtime rewriting ``io.max``) is healed and a new LP pod gets the current
target as soon as it is seen, not at the next push.

What is desired, per workload found by discovery:

* a workload belongs to push group G when ``matches(labels, G.selector)``;
  limits go on the workload's cgroup dir (pod level) for the group's resolved
  devices, and on cgroup v1 also on every cgroup below it (``blkio.throttle``
  is not hierarchical; each round re-lists them, so new containers are
  covered); devices limited now but not in the target are lifted. A workload
  several groups select gets, per device and key, the most restrictive value
  of those groups (never whichever came first in the push), and the overlap
  is recorded as an error;
* an LP workload no group selects is lifted, and its weight reset to the
  default (the push is the whole desired state, so "not mentioned" means "no
  limit");
* only LP workloads are written: an HP workload never is, even when a
  group's selector matches it, nor a pod whose role was refused outside its
  namespaces (``lp_namespaces``; :func:`writer.discovery.namespaced_role`);
* a workload that stops being LP while its pod runs (relabelled HP, or its
  LP role refused) has io.max and the weight lifted once, the one write an
  HP workload can get: the writer remembers the cgroups it has seen LP until
  it sees them with another role or they are gone (a lift that fails is
  tried again next round). With ``state_file`` it remembers them across its
  own restarts too (:mod:`writer.lp_memory`), so a pod relabelled while its
  node's writer was down is lifted once discovery lists it; without it, such
  a pod keeps its limits. Not a pod that leaves discovery altogether (its LP
  label removed): that looks the same as a pod terminating, whose limits must
  hold through its grace period, so it keeps its limits until it restarts (or
  comes back labelled HP);
* before the first push the writer *holds*: it reads what is in force and
  writes nothing, so a restart does not disturb limits that are still right;
* when the lease has run out, the fail-safe governs: ``static`` limits on the
  last push's devices (or ``failsafe.devices`` if no push ever came) - the
  group's pushed fail-safe where the last push carried one, bounded by the
  writer's config (:meth:`writer.lease.Failsafe.bounded`) - ``release`` lifts
  everything and resets weights, ``hold`` writes nothing.

Every write goes through :mod:`writer.cgroups`, which reads back first and
skips unchanged files, so a round that changes nothing writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry

from writer.api import CgroupResult, Devices, GroupTarget, IoMax, PushResponse, TargetsPush
from writer.cgroups import (
    CgroupVanished,
    Hierarchy,
    KernelError,
    Limits,
    Mechanism,
    Outcome,
    WriterError,
    apply_bfq_weight,
    apply_io_max_tree,
    apply_weight,
    enable_io_cost,
    read_io_bytes,
    read_io_max,
    read_weight,
    weight_file,
    weight_mechanisms,
)
from writer.discovery import Discovery, Workload, matches
from writer.lease import Failsafe, Lease
from writer.lp_memory import LpMemory
from writer.metrics import CgroupReading, Reading, WriterMetrics

__all__ = ["StalePush", "Mode", "Reconciler", "IoCost", "limits_from_io_max"]

log = logging.getLogger(__name__)

Mode = Literal["awaiting_first_push", "following_push", "failsafe"]
UNASSIGNED = "unassigned"
#: The group of a cgroup lifted because its workload stopped being LP.
RELEASED = "released"
_HISTORY = 50


class StalePush(WriterError):
    """A push older than the last accepted one, or a replayed generation with a different body: 409."""


#: The default weight on the v2 scale (v1 writers map it to their file's default).
DEFAULT_WEIGHT = 100


def _tightest(a: Limits | None, b: Limits) -> Limits:
    if a is None:
        return b

    def pick(x: int | None, y: int | None) -> int | None:
        return y if x is None else x if y is None else min(x, y)

    return Limits(*(pick(getattr(a, k), getattr(b, k)) for k in ("rbps", "wbps", "riops", "wiops")))


@dataclass(frozen=True)
class IoCost:
    """Switch the io.cost controller on for the devices of weighted groups (v2 only).

    ``model`` = ``io.cost.model`` parameters (``rbps``, ``rseqiops``, ...) and
    ``qos`` = ``io.cost.qos`` ones (``min``, ``max``, ...); ``None`` lets the
    kernel pick its own model and QoS (``ctrl=auto``).
    """

    model: Mapping[str, str] | None = None
    qos: Mapping[str, str] | None = None


def limits_from_io_max(io_max: IoMax) -> Limits:
    return Limits(rbps=io_max.rbps, wbps=io_max.wbps, riops=io_max.riops, wiops=io_max.wiops)


@dataclass(frozen=True)
class _Plan:
    """What to do with one workload's cgroup this round."""

    workload: Workload
    group: str
    #: Desired io.max per device; ``None`` = leave io.max alone (hold).
    limits: dict[str, Limits] | None
    weight: int | None
    error: str | None = None
    #: Put the weight back to the default (group gone, fail-safe released), where a weight file exists.
    reset_weight: bool = False


class Reconciler:
    """Owns the desired state, the lease and the metrics; thread-safe."""

    def __init__(
        self,
        *,
        hierarchy: Hierarchy,
        discovery: Discovery,
        lease: Lease,
        failsafe: Failsafe,
        resolve_devices: Callable[[Devices], list[str]],
        scheduler_of: Callable[[str], str | None],
        registry: CollectorRegistry,
        failsafe_devices: Devices = "auto",
        node: str = "",
        wall_clock: Callable[[], float] = time.time,
        config_summary: Mapping[str, object] | None = None,
        io_cost: IoCost | None = None,
        tree_problem: Callable[[], str | None] = lambda: None,
        max_lease_ttl_seconds: float = 300.0,
        lp_memory: LpMemory | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self._max_ttl = max_lease_ttl_seconds
        self.node = node
        self._discovery = discovery
        self._lease = lease
        self._failsafe = failsafe
        self._failsafe_devices = failsafe_devices
        self._resolve = resolve_devices
        self._scheduler_of = scheduler_of
        self._wall = wall_clock
        self._config = dict(config_summary or {})
        self._lock = threading.RLock()
        self._push: TargetsPush | None = None
        self._mode: Mode = "awaiting_first_push"
        self._last_results: list[CgroupResult] = []
        self._errors: deque[dict[str, object]] = deque(maxlen=_HISTORY)
        self._events: deque[dict[str, object]] = deque(maxlen=_HISTORY)
        self._weight_notes: dict[str, bool] = {}
        self._mechanisms: dict[str, Mechanism] = {}
        self._io_cost = io_cost
        self._tree_problem = tree_problem
        self._unmatched: list[str] = []
        self._lp_found = 0
        #: The cgroups of last round's LP workloads: what to lift when one is found with another role
        #: (from ``lp_memory`` at start, where the last run saved them).
        self._lp_seen: set[Path] = set()
        self._lp_memory = lp_memory
        self._memory_problem: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics = WriterMetrics(registry, self.reading)
        if lp_memory is not None:
            self._lp_seen, problem = lp_memory.load()
            if problem is not None:
                self._error("state_file", problem)
            elif self._lp_seen:
                self._event(f"{len(self._lp_seen)} LP cgroups remembered from {lp_memory.path}")

    # ------------------------------------------------------------ API

    def push(self, body: TargetsPush) -> PushResponse:
        """Accept a push (new or replayed generation), renew the lease, reconcile now."""
        with self._lock:
            check = self._lease.check(body.generation)
            if check == "stale":
                self.metrics.pushes.labels("stale").inc()
                raise StalePush(
                    f"generation {body.generation} is older than the last accepted {self._lease.generation}"
                )
            if check == "replay" and self._push is not None and body != self._push:
                # The same generation must mean the same desired state; anything else
                # is a second controller, a bug, or a forgery, and is not adopted.
                self.metrics.pushes.labels("stale").inc()
                raise StalePush(f"generation {body.generation} was already accepted with a different body")
            ttl = min(body.lease_ttl_seconds, self._max_ttl)
            if ttl < body.lease_ttl_seconds:
                self._event(f"lease TTL {body.lease_ttl_seconds}s asked for, capped at {self._max_ttl}s (failsafe.max_ttl)")
            self._lease.renew(body.generation, ttl)
            self._push = body
            self.metrics.pushes.labels("accepted" if check == "new" else "replay").inc()
            self.metrics.push_generation.set(body.generation)
            self.metrics.last_update.set(self._wall())
            results = self._reconcile_locked()
            warnings = self._findings()
            return PushResponse(
                node=self.node,
                generation=body.generation,
                results=results,
                unmatched_groups=list(self._unmatched),
                warnings=warnings,
            )

    def try_push(self, body: TargetsPush) -> PushResponse | None:
        """:meth:`push` if nothing else holds the reconciler now (a round in progress), else None at once."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.push(body)
        finally:
            self._lock.release()

    def reconcile(self) -> list[CgroupResult]:
        """One round: re-read discovery and files, write what differs. Never raises for a cgroup."""
        with self._lock:
            return self._reconcile_locked()

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._current_mode()

    def start(self, interval_seconds: float) -> None:
        """Reconcile once now (reading what is in force), then in a thread every interval and on change."""
        if self._thread is not None:
            raise RuntimeError("reconciler already started")
        self._stop.clear()
        self.reconcile()
        self._discovery.start(self._wake.set)
        self._thread = threading.Thread(target=self._loop, args=(interval_seconds,), name="drcio-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._discovery.stop()

    # ------------------------------------------------------------ loop

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            # Wake when the lease runs out too, so the fail-safe is not an interval late.
            left = self._lease.state().seconds_left
            timeout = min(interval, left + 0.05) if left > 0 else interval
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile()
                self.metrics.reconciles.labels("ok").inc()
            except Exception:  # a failed round is logged and the next one runs
                self.metrics.reconciles.labels("failed").inc()
                log.exception("reconcile round failed")

    # ------------------------------------------------------------ planning

    def _current_mode(self) -> Mode:
        if self._lease.expired():
            return "failsafe"
        return "following_push" if self._push is not None else "awaiting_first_push"

    def _reconcile_locked(self) -> list[CgroupResult]:
        mode = self._current_mode()
        if mode != self._mode:
            self._event(f"mode {self._mode} -> {mode}")
            level = logging.WARNING if mode == "failsafe" else logging.INFO
            log.log(level, "writer mode %s -> %s", self._mode, mode)
            self._mode = mode
        try:
            workloads = list(self._discovery.snapshot())
        except Exception as err:  # discovery trouble skips the round, the next one retries
            self._error("discovery", f"snapshot failed: {err}")
            return []
        plans = [*self._plan(workloads, mode), *self._releases(workloads)]
        results = [self._apply(plan) for plan in plans]
        for plan, result in zip(plans, results):
            if plan.group == RELEASED and result.outcome == "error":
                self._lp_seen.add(plan.workload.cgroup_dir)  # not lifted: try again next round
        if self._lp_memory is not None:
            problem = self._lp_memory.save(self._lp_seen)
            if problem is not None and problem != self._memory_problem:  # once, not every round
                self._error("state_file", problem)
            self._memory_problem = problem
        self._last_results = results
        return results

    def _releases(self, workloads: list[Workload]) -> list[_Plan]:
        """Lift io.max and the weight from the workloads that were LP last round and are found with another role now.

        A remembered cgroup that discovery does not list this round stays remembered while its directory
        exists: discovery that has not synced yet (a writer's first round) lists nothing, and a pod whose LP
        label was removed may come back HP. It is forgotten once its directory is gone (the pod with it).
        """
        was_lp = self._lp_seen
        listed = {w.cgroup_dir for w in workloads}
        self._lp_seen = {w.cgroup_dir for w in workloads if w.role == "lp"}
        self._lp_seen |= {d for d in was_lp - listed if d.is_dir()}
        plans = []
        for w in workloads:
            if w.role != "lp" and w.cgroup_dir in was_lp:
                self._event(f"{_label(w)} is no longer low-priority (now {w.role}): lifting its limits and weight")
                plans.append(_Plan(w, RELEASED, {}, None, reset_weight=True))
        return plans

    def _groups(self) -> list[GroupTarget]:
        return list(self._push.groups) if self._push is not None else []

    def _devices(self, devices: Devices) -> tuple[list[str], str | None]:
        try:
            return self._resolve(devices), None
        except (ValueError, OSError) as err:  # DeviceError is a ValueError
            return [], f"devices {devices!r}: {err}"

    def _plan(self, workloads: list[Workload], mode: Mode) -> list[_Plan]:
        groups = self._groups()
        resolved = {g.name: self._devices(g.devices) for g in groups}
        # Whether a weight can act is a property of the group's devices, not of
        # each pod: ask the kernel once per group, not once per workload.
        weighted = [
            g for g in groups if mode == "following_push" and g.io_weight is not None and resolved[g.name][1] is None
        ]
        self._mechanisms = self._weight_mechanisms(sorted({d for g in weighted for d in resolved[g.name][0]}))
        weight_acts = {g.name: any(self._mechanisms[d] != "none" for d in resolved[g.name][0]) for g in weighted}
        self._lp_found = sum(1 for w in workloads if w.role == "lp")
        self._unmatched = [
            g.name for g in groups if not any(w.role == "lp" and matches(w.labels, g.selector) for w in workloads)
        ]
        fallback: tuple[list[str], str | None] | None = None
        plans: list[_Plan] = []
        self._weight_notes = {}
        for w in workloads:
            matched = [g for g in groups if matches(w.labels, g.selector)]
            if w.role == "hp":
                if matched:
                    plans.append(_Plan(w, matched[0].name, None, None, "refusing to throttle a high-priority workload"))
                continue
            if w.role != "lp":
                # A role refused outside its namespaces (the note says which): not LP, so never throttled.
                if matched:
                    plans.append(_Plan(w, matched[0].name, None, None, f"refusing to throttle a workload that is not "
                                                                        f"low-priority: {w.note or 'no LP label'}"))
                continue
            if len(matched) > 1:
                self._error(
                    _label(w),
                    f"selected by several groups {[g.name for g in matched]}; applying the most restrictive value of each",
                )
            name = matched[0].name if matched else UNASSIGNED
            dev_err = next((resolved[g.name][1] for g in matched if resolved[g.name][1]), None)
            if mode == "awaiting_first_push":
                plans.append(_Plan(w, name, None, None))
            elif mode == "following_push":
                if dev_err:
                    plans.append(_Plan(w, name, None, None, dev_err))
                elif not matched:
                    plans.append(_Plan(w, name, {}, None, reset_weight=True))
                else:
                    per_device: dict[str, Limits] = {}
                    for g in matched:
                        for d in resolved[g.name][0]:
                            per_device[d] = _tightest(per_device.get(d), limits_from_io_max(g.io_max))
                    weights = [g.io_weight for g in matched if g.io_weight is not None]
                    plans.append(_Plan(w, name, per_device, min(weights) if weights else None))
                    for g in matched:
                        if g.io_weight is not None:
                            self._weight_notes[g.name] = weight_acts[g.name]
            else:
                fs = self._failsafe.limits_in_failsafe()
                if fs is None:
                    plans.append(_Plan(w, name, None, None))
                    continue
                if self._failsafe.mode == "release":
                    plans.append(_Plan(w, name, {}, None, reset_weight=True))
                    continue
                limits: Limits | None = None
                pushed_failsafes = [None if g.failsafe is None else limits_from_io_max(g.failsafe) for g in matched]
                for pushed in pushed_failsafes or [None]:
                    bounded = self._failsafe.bounded(pushed)
                    assert bounded is not None  # static mode
                    limits = _tightest(limits, bounded)
                assert limits is not None
                if limits.is_unlimited:
                    plans.append(_Plan(w, name, {}, None))
                    continue
                if not matched or dev_err:
                    if fallback is None:
                        fallback = self._devices(self._failsafe_devices)
                    devices, dev_err = fallback
                else:
                    devices = sorted({d for g in matched for d in resolved[g.name][0]})
                if dev_err:
                    plans.append(_Plan(w, name, None, None, dev_err))
                else:
                    plans.append(_Plan(w, name, {d: limits for d in devices}, None))
        return plans

    def _apply(self, plan: _Plan) -> CgroupResult:
        cgroup = str(plan.workload.cgroup_dir)
        if plan.error:
            self._error(cgroup, plan.error)
            return CgroupResult(group=plan.group, cgroup=cgroup, outcome="error", detail=plan.error)
        outcomes: list[Outcome] = []
        try:
            if plan.limits is not None:
                # io.max on the workload's cgroup and, on v1, every cgroup below it (see throttle_dirs).
                outcomes.extend(apply_io_max_tree(self.hierarchy, plan.workload.cgroup_dir, plan.limits))
            if plan.weight is not None:
                outcomes.append(apply_weight(self.hierarchy, plan.workload.cgroup_dir, plan.weight))
                bfq = apply_bfq_weight(self.hierarchy, plan.workload.cgroup_dir, plan.weight)
                if bfq is not None:
                    outcomes.append(bfq)
            elif plan.reset_weight and weight_file(self.hierarchy, plan.workload.cgroup_dir) is not None:
                outcomes.append(apply_weight(self.hierarchy, plan.workload.cgroup_dir, DEFAULT_WEIGHT))
                bfq = apply_bfq_weight(self.hierarchy, plan.workload.cgroup_dir, DEFAULT_WEIGHT)
                if bfq is not None:
                    outcomes.append(bfq)
        except CgroupVanished as err:
            # The pod went away between discovery and the write: an event, not a failure.
            self.metrics.vanished.inc()
            self._event(f"cgroup vanished: {err.path} ({_label(plan.workload)})")
            return CgroupResult(group=plan.group, cgroup=cgroup, outcome="error", detail=f"ENOENT: {err}")
        except KernelError as err:
            self.metrics.controller_errors.inc()
            self._error(cgroup, str(err))
            return CgroupResult(group=plan.group, cgroup=cgroup, outcome="error", detail=str(err))
        except WriterError as err:
            self._error(cgroup, str(err))
            return CgroupResult(group=plan.group, cgroup=cgroup, outcome="error", detail=str(err))
        outcome = "applied" if "applied" in outcomes else "unchanged"
        if outcome == "applied":
            log.info("%s (%s): applied %s", cgroup, plan.group, plan.limits)
        return CgroupResult(group=plan.group, cgroup=cgroup, outcome=outcome)

    def _weight_mechanisms(self, devices: list[str]) -> dict[str, Mechanism]:
        """Switch io.cost on where configured, then say per device what carries the weight."""
        if self._io_cost is not None and self.hierarchy.version == 2:
            for dev in devices:
                try:
                    if enable_io_cost(self.hierarchy, dev, model=self._io_cost.model, qos=self._io_cost.qos) == "applied":
                        self._event(f"io.cost enabled on {dev}")
                except WriterError as err:
                    self._error(f"io.cost {dev}", str(err))
        return weight_mechanisms(self.hierarchy, devices, scheduler_of=self._scheduler_of)

    def _findings(self) -> list[str]:
        """What a green answer would hide: no LP workload, no kubelet tree, groups that select nothing."""
        out = [] if self._lp_found else ["no LP workload found on this node"]
        problem = self._tree_problem()
        if problem:
            out.append(f"no kubelet cgroup tree recognised: {problem}")
        for name in self._unmatched:
            out.append(f"group {name!r} matched no LP workload on this node; nothing was written for it")
        return out

    def _error(self, where: str, detail: str) -> None:
        log.warning("%s: %s", where, detail)
        self._errors.append({"time": self._wall(), "where": where, "detail": detail})

    def _event(self, what: str) -> None:
        self._events.append({"time": self._wall(), "event": what})

    # ------------------------------------------------------------ observing

    def _assignments(self) -> tuple[list[tuple[Workload, str]], dict[str, bool], dict[str, Mechanism], Mode]:
        with self._lock:
            groups = self._groups()
            mode = self._current_mode()
            notes = dict(self._weight_notes)
            mechanisms = dict(self._mechanisms)
        try:
            workloads = list(self._discovery.snapshot())
        except Exception as err:  # /status and /metrics still answer; the error is recorded
            with self._lock:
                self._error("discovery", f"snapshot failed: {err}")
            workloads = []
        out: list[tuple[Workload, str]] = []
        for w in workloads:
            matched = [g.name for g in groups if matches(w.labels, g.selector)]
            out.append((w, (matched[0] if matched else UNASSIGNED) if w.role == "lp" else ""))
        return out, notes, mechanisms, mode

    def _read_cgroup(self, w: Workload, group: str) -> CgroupReading:
        def attempt(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except WriterError:
                return None

        d = w.cgroup_dir
        return CgroupReading(
            group=group,
            workload=_label(w),
            role=w.role,
            limits=attempt(lambda: read_io_max(self.hierarchy, d)),
            weight=attempt(lambda: read_weight(self.hierarchy, d)),
            io_bytes=attempt(lambda: read_io_bytes(self.hierarchy, d)),
        )

    def reading(self) -> Reading:
        """What is in force now, read back from the kernel (for /metrics)."""
        assigned, notes, mechanisms, mode = self._assignments()
        lease = self._lease.state()
        with self._lock:
            unmatched = list(self._unmatched)
        return Reading(
            hp_pods=sum(1 for w, _ in assigned if w.role == "hp"),
            lp_pods=sum(1 for w, _ in assigned if w.role == "lp"),
            cgroups=[self._read_cgroup(w, g) for w, g in assigned if w.role == "lp" or g],
            lease_expired=lease.expired,
            lease_seconds_left=lease.seconds_left,
            failsafe_active=mode == "failsafe",
            weight_effective=notes,
            weight_mechanisms=dict(mechanisms.items()),
            unmatched_groups=unmatched,
            tree_recognised=self._tree_problem() is None,
        )

    def status(self) -> dict[str, object]:
        """The JSON of ``GET /status``: workloads, limits in force (read back), lease, errors, config."""
        assigned, notes, mechanisms, mode = self._assignments()
        lease = self._lease.state()
        workloads = []
        for w, group in assigned:
            r = self._read_cgroup(w, group)
            workloads.append(
                {
                    "name": w.name,
                    "namespace": w.namespace,
                    "role": w.role,
                    "note": w.note,
                    "group": group or None,
                    "cgroup": str(w.cgroup_dir),
                    "exists": bool(w.cgroup_dir.is_dir()),
                    "io_max_in_force": None
                    if r.limits is None
                    else {dev: {k: v for k, v in asdict(lim).items() if v is not None} for dev, lim in sorted(r.limits.items())},
                    "weight_in_force": r.weight,
                    "io_bytes": None if r.io_bytes is None else {d: {"read": b[0], "write": b[1]} for d, b in r.io_bytes.items()},
                    "weight_competes_among": self._competition(w),
                }
            )
        with self._lock:
            push = self._push
            return {
                "node": self.node,
                "mode": mode,
                "hierarchy": {"version": self.hierarchy.version, "root": str(self.hierarchy.root)},
                "hp_workloads": [x for x in workloads if x["role"] == "hp"],
                "lp_workloads": [x for x in workloads if x["role"] != "hp"],
                "lease": asdict(lease),
                "failsafe": {
                    "mode": self._failsafe.mode,
                    "active": mode == "failsafe",
                    "static_limits": asdict(self._failsafe.limits),
                },
                "findings": self._findings(),
                "weight_mechanisms": dict(sorted(mechanisms.items())),
                "io_cost": "enabled by the writer on weighted devices" if self._io_cost is not None
                else "not enabled by the writer (weights act only where io.cost is on or BFQ schedules)",
                "weights": {
                    g: ("effective" if ok else "written but inert: no BFQ scheduler or io.cost on the group's devices")
                    for g, ok in sorted(notes.items())
                },
                "last_push": None if push is None else {
                    "generation": push.generation,
                    "controller": push.controller,
                    "lease_ttl_seconds": push.lease_ttl_seconds,
                    "groups": [g.model_dump() for g in push.groups],
                },
                "last_results": [r.model_dump() for r in self._last_results],
                "last_errors": list(self._errors),
                "events": list(self._events),
                "config": self._config,
            }


    def _competition(self, w: Workload) -> dict[str, object]:
        """Where this workload's weight competes: among the cgroups beside it (same parent)."""
        parent = w.cgroup_dir.parent
        try:
            siblings = [p for p in parent.iterdir() if p.is_dir() and p != w.cgroup_dir]
            relative = parent.relative_to(self.hierarchy.root.resolve())
            where = "/" if relative == Path(".") else str(relative)
        except (OSError, ValueError):
            return {"parent": str(parent), "siblings": None}
        return {"parent": where, "siblings": len(siblings)}


def _label(w: Workload) -> str:
    return f"{w.namespace}/{w.name}" if w.namespace else w.name
