"""The real kernel, kubelet-shaped: a pushed limit holds a reader in a *container* cgroup of a pod.

kubelet keeps a pod's processes in container cgroups below the pod cgroup;
the writer is told about the pod cgroup. cgroup v2 limits are hierarchical,
cgroup v1 ``blkio.throttle`` is not, so on v1 the writer writes the pod cgroup
and every cgroup below it, and its reconcile loop covers containers that
appear after the push. This module runs on whatever kernel it finds: v1 on
the dev machine, v2 inside ``scripts/run-in-v2-kernel.sh`` (where
``test_v2_guest.py`` runs it). Trees come from :mod:`tests.writer.kubelet_trees`.

Needs root and a cgroup I/O controller; elsewhere it skips with the reason.
Every cgroup is made under a ``drcio-t7-…`` parent (standing in for kubelet's
``--cgroup-root``) and removed in ``finally``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.writer.conftest import TOKEN, serving
from tests.writer.kernel_support import LIMIT, MiB, data_dir, hierarchy_or_skip, make_data_file, read_rate
from tests.writer.kubelet_trees import LAYOUTS, PodLayout
from writer.cgroups import Hierarchy
from writer.devices import active_scheduler, resolve_devices
from writer.groups import create_group, remove_group
from writer.discovery import LocalDiscovery, LocalEntry
from writer.lease import Failsafe, Lease
from writer.lp_memory import LpMemory
from writer.reconcile import Reconciler
from writer.server import ServerState, build_app

pytestmark = pytest.mark.kernel

@dataclass
class PodOnKernel:
    hierarchy: Hierarchy
    top: str
    layout: PodLayout
    data: Path
    device: str

    def rel(self, relative: str) -> str:
        return f"{self.top}/{relative}"


#: One layout per driver / runtime on the real kernel (all of them are checked on fake trees).
REAL_LAYOUTS = ["systemd-containerd-burstable", "cgroupfs-besteffort", "systemd-crio-burstable"]


@pytest.fixture(params=REAL_LAYOUTS)
def pod_on_kernel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PodOnKernel]:
    """A kubelet-shaped pod with pause and app containers on this kernel."""
    h = hierarchy_or_skip()
    layout = LAYOUTS[request.param]
    top = f"drcio-t7-{uuid.uuid4().hex[:8]}"
    data, device = make_data_file(data_dir(tmp_path))
    try:
        for container in (layout.pause, layout.app):
            create_group(h, f"{top}/{container}")
        yield PodOnKernel(h, top, layout, data, device)
    finally:
        remove_group(h, top)
        data.unlink(missing_ok=True)


def _writer(pod: PodOnKernel, role: str = "lp",
            lp_memory: LpMemory | None = None) -> tuple[Reconciler, ServerState, CollectorRegistry]:
    registry = CollectorRegistry()
    reconciler = Reconciler(
        hierarchy=pod.hierarchy,
        discovery=LocalDiscovery(
            [LocalEntry(name="batch", path=pod.rel(pod.layout.pod), labels={"group-id": role})],
            hierarchy_root=pod.hierarchy.root,
        ),
        lp_memory=lp_memory,
        lease=Lease(initial_ttl_seconds=300),
        failsafe=Failsafe("hold"),
        resolve_devices=resolve_devices,
        scheduler_of=partial(active_scheduler),
        registry=registry,
        node="this-node",
    )
    return reconciler, ServerState(reconciler=reconciler, registry=registry, token=TOKEN), registry


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One HTTP client for the module: ``httpx.put`` builds a client and its TLS context per call,
    about a second of the one CPU in the v2 guest, where this module runs too."""
    with httpx.Client(timeout=60) as client:
        yield client


def _push(http: httpx.Client, url: str, generation: int, device: str, io_max: dict[str, int]) -> dict[str, Any]:
    group = {"name": "lp", "selector": {"group-id": "lp"}, "devices": [device], "io_max": io_max}
    body = {"generation": generation, "lease_ttl_seconds": 300, "groups": [group]}
    r = http.put(f"{url}/v1/targets", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _limit_line(pod: PodOnKernel, relative: str) -> str:
    d = pod.hierarchy.root / pod.rel(relative)
    name = "io.max" if pod.hierarchy.version == 2 else "blkio.throttle.read_bps_device"
    return (d / name).read_text()


def test_a_limit_on_the_pod_holds_a_reader_in_its_container_and_in_a_container_started_later(
    pod_on_kernel: PodOnKernel, http: httpx.Client,
) -> None:
    pod = pod_on_kernel
    reconciler, state, _ = _writer(pod)
    with serving(build_app(state)) as url:
        answer = _push(http, url, 1, pod.device, {"rbps": LIMIT})
        assert [r["outcome"] for r in answer["results"]] == ["applied"]
        throttled = read_rate(pod.hierarchy, pod.rel(pod.layout.app), pod.data, 24 * MiB)

        # A container that appears after the push: the reconcile loop (as the writer runs it)
        # covers it within one interval. On v2 nothing needs writing: the pod's io.max covers it.
        create_group(pod.hierarchy, pod.rel(pod.layout.new_app))
        reconciler.start(0.2)
        try:
            deadline = time.monotonic() + 5
            if pod.hierarchy.version == 1:
                while f"{pod.device} {LIMIT}" not in _limit_line(pod, pod.layout.new_app):
                    assert time.monotonic() < deadline, "the new container was not covered within the reconcile interval"
                    time.sleep(0.05)
            later = read_rate(pod.hierarchy, pod.rel(pod.layout.new_app), pod.data, 24 * MiB)
        finally:
            reconciler.stop()

        _push(http, url, 2, pod.device, {})
        free = read_rate(pod.hierarchy, pod.rel(pod.layout.app), pod.data, 64 * MiB)

    print(
        f"\ncgroup v{pod.hierarchy.version}, {pod.layout.name}, device {pod.device}: reader in a container "
        f"{throttled / MiB:.1f} MiB/s, in a container started after the push {later / MiB:.1f} MiB/s "
        f"(limit 10 MiB/s on the pod); lifted {free / MiB:.1f} MiB/s"
    )
    assert throttled <= 1.2 * LIMIT
    assert later <= 1.2 * LIMIT
    assert free > 3 * LIMIT


def test_lifting_the_limit_lifts_it_on_every_container(pod_on_kernel: PodOnKernel, http: httpx.Client) -> None:
    pod = pod_on_kernel
    _, state, _ = _writer(pod)
    with serving(build_app(state)) as url:
        _push(http, url, 1, pod.device, {"rbps": LIMIT})
        _push(http, url, 2, pod.device, {})
    for relative in (pod.layout.pod, pod.layout.pause, pod.layout.app):
        assert pod.device not in _limit_line(pod, relative), relative


def test_a_pod_relabelled_hp_while_its_writer_was_down_is_freed_by_the_next_writer(
    pod_on_kernel: PodOnKernel, http: httpx.Client, tmp_path: Path,
) -> None:
    pod = pod_on_kernel
    state = tmp_path / "lp-cgroups.json"
    _, serving_state, _ = _writer(pod, lp_memory=LpMemory(state))
    with serving(build_app(serving_state)) as url:
        _push(http, url, 1, pod.device, {"rbps": LIMIT})
    throttled = read_rate(pod.hierarchy, pod.rel(pod.layout.app), pod.data, 24 * MiB)
    # The writer is gone; the pod is relabelled group-id=hp. The next writer's first round, before any push:
    reconciler, _, _ = _writer(pod, role="hp", lp_memory=LpMemory(state))
    assert [(r.group, r.outcome) for r in reconciler.reconcile()] == [("released", "applied")]
    free = read_rate(pod.hierarchy, pod.rel(pod.layout.app), pod.data, 64 * MiB)
    print(f"\ncgroup v{pod.hierarchy.version}, {pod.layout.name}: reader in the app container "
          f"{throttled / MiB:.1f} MiB/s while LP, {free / MiB:.1f} MiB/s after the next writer's first round")
    for relative in (pod.layout.pod, pod.layout.pause, pod.layout.app):
        assert pod.device not in _limit_line(pod, relative), relative
    assert throttled <= 1.2 * LIMIT and free > 3 * LIMIT
