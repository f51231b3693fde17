"""The real kernel: a limit pushed over the writer's real HTTP API throttles a direct-I/O reader.

Needs root and a cgroup I/O controller (v2 io or v1 blkio); elsewhere it is
skipped with the reason. The LP cgroup, the reader process and the data file
are removed in ``finally`` blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.writer.conftest import TOKEN, serving
from tests.writer.kernel_support import LIMIT, MiB, hierarchy_or_skip, make_data_file, read_rate
from writer.api import Devices, TargetsPush
from writer.cgroups import Hierarchy, KernelError, Limits, apply_io_max, to_v1_weight, weight_file
from writer.devices import active_scheduler, resolve_devices
from writer.groups import create_group, remove_group
from writer.discovery import LocalDiscovery, LocalEntry
from writer.lease import Failsafe, Lease
from writer.reconcile import Reconciler
from writer.server import ServerState, build_app

pytestmark = pytest.mark.kernel


@dataclass
class KernelSetup:
    hierarchy: Hierarchy
    group: str
    data: Path
    device: str


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[KernelSetup]:
    h = hierarchy_or_skip()
    top = f"drcio-test-{uuid.uuid4().hex[:8]}"
    data, device = make_data_file(tmp_path, 40)
    try:
        create_group(h, f"{top}/lp")
        yield KernelSetup(h, f"{top}/lp", data, device)
    finally:
        remove_group(h, top)
        data.unlink(missing_ok=True)


def _read_inside(k: KernelSetup, nbytes: int) -> float:
    """Run a direct-I/O reader inside the LP cgroup; its throughput in bytes/s."""
    return read_rate(k.hierarchy, k.group, k.data, nbytes)


def _reconciler(k: KernelSetup, registry: CollectorRegistry,
                resolve: Callable[[Devices], list[str]] = resolve_devices) -> Reconciler:
    """The writer's reconciler over the test's LP cgroup (one workload, ``group-id: lp``)."""
    return Reconciler(
        hierarchy=k.hierarchy,
        discovery=LocalDiscovery(
            [LocalEntry(name="lp-reader", path=k.group, labels={"group-id": "lp"})], hierarchy_root=k.hierarchy.root
        ),
        lease=Lease(initial_ttl_seconds=300),
        failsafe=Failsafe("hold"),
        resolve_devices=resolve,
        scheduler_of=partial(active_scheduler),
        registry=registry,
        node="this-node",
    )


def test_a_pushed_read_limit_throttles_a_direct_io_reader_and_lifting_it_frees_it(kernel: KernelSetup) -> None:
    registry = CollectorRegistry()
    reconciler = _reconciler(kernel, registry)
    state = ServerState(reconciler=reconciler, registry=registry, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def push(generation: int, io_max: dict[str, int], **extra: Any) -> dict[str, Any]:
        group = {"name": "lp", "selector": {"group-id": "lp"}, "devices": [kernel.device], "io_max": io_max, **extra}
        body = {"generation": generation, "lease_ttl_seconds": 300, "groups": [group]}
        r = httpx.put(f"{url}/v1/targets", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    with serving(build_app(state)) as url:
        weights = weight_file(kernel.hierarchy, kernel.hierarchy.root / kernel.group)
        answer = push(1, {"rbps": LIMIT}, **({"io_weight": 200} if weights else {}))
        assert [x["outcome"] for x in answer["results"]] == ["applied"]
        status = httpx.get(f"{url}/status", headers=auth).json()
        [lp] = status["lp_workloads"]
        assert lp["io_max_in_force"] == {kernel.device: {"rbps": LIMIT}}
        if kernel.hierarchy.version == 1 and weights:
            # v1 weights are mapped onto the file's range and only act under BFQ (or legacy CFQ).
            assert lp["weight_in_force"] == to_v1_weight(200, *weights[1:])
            acts = active_scheduler(kernel.device) in ("bfq", "cfq")
            assert registry.get_sample_value("drcio_io_weight_effective", {"group": "lp"}) == float(acts)
            assert ("inert" in status["weights"]["lp"]) is not acts
        throttled = _read_inside(kernel, 24 * MiB)
        labels = {"group": "lp", "workload": "lp-reader", "device": kernel.device}
        # The kernel's own byte count for the cgroup, through the per-scrape collector.
        assert (registry.get_sample_value("drcio_io_read_bytes_total", labels) or 0) >= 24 * MiB

        push(2, {})
        [lp] = httpx.get(f"{url}/status", headers=auth).json()["lp_workloads"]
        assert lp["io_max_in_force"] == {}
        free = _read_inside(kernel, 40 * MiB)

    print(f"\nthrottled read: {throttled / MiB:.1f} MiB/s (limit 10 MiB/s); lifted: {free / MiB:.1f} MiB/s")
    assert throttled <= 12 * MiB
    assert free > 3 * LIMIT  # lifted: well past the limit, whatever this disk's own speed


def test_a_real_kernel_refusal_is_reported_with_its_errno_and_counted(kernel: KernelSetup) -> None:
    # /dev/null (1:3) is no block device: the kernel itself refuses a limit on it (ENODEV, measured on
    # this host's v1 blkio, 2026-11-29), as it would for a disk unplugged between resolving and writing.
    cgroup = kernel.hierarchy.root / kernel.group
    with pytest.raises(KernelError) as info:
        apply_io_max(kernel.hierarchy, cgroup, {"1:3": Limits(rbps=LIMIT)})
    assert info.value.errno_name == "ENODEV"

    registry = CollectorRegistry()
    reconciler = _reconciler(kernel, registry, lambda spec: ["1:3"])  # the disk that went away after it was resolved
    group = {"name": "lp", "selector": {"group-id": "lp"}, "devices": "auto", "io_max": {"rbps": LIMIT}}
    [res] = reconciler.push(TargetsPush.model_validate({"generation": 1, "lease_ttl_seconds": 300, "groups": [group]})).results
    assert res.outcome == "error" and res.detail.endswith(": ENODEV (No such device)"), res
    assert registry.get_sample_value("drc_io_controller_errors_total") == 1
    assert reconciler.status()["last_errors"][0]["where"] == str(cgroup)  # type: ignore[index]
