"""Kubelet-shaped nodes on fake trees: layouts from kubelet's and the runtimes' code, the writer inside a pod.

The layouts are literal (:mod:`tests.writer.kubelet_trees`, sources in
``recorded/README.md``); the real kernels run the same trees in
``test_kernel_pods.py`` (v1 here, v2 in the guest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.writer.conftest import FakeTree, make_writer, push_body
from tests.writer.fake_trees import make_dirs
from tests.writer.kubelet_trees import LAYOUTS, POD_UID, PodLayout
from writer.api import MountRef, TargetsPush
from writer.cgroup_paths import container_scopes, detect_driver, kubelet_tree_problem, pod_cgroup_dir
from writer.cgroups import Hierarchy, SetupError, detect_hierarchy, enable_io_cost, throttle_dirs
from writer.config import ConfigError, WriterConfig
from writer.devices import resolve_devices

RECORDED = Path(__file__).parent / "recorded"
MiB = 1024 * 1024


@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_the_pod_dir_is_where_kubelet_puts_it_for_every_driver_runtime_and_qos(tmp_path: Path, layout: PodLayout) -> None:
    make_dirs(tmp_path, layout.pause, layout.app)
    assert detect_driver(tmp_path) == layout.driver
    assert pod_cgroup_dir(tmp_path, POD_UID, layout.qos, layout.driver) == tmp_path / layout.pod  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cgroup_root", "driver", "expected"),
    [
        # kubelet --cgroup-root=/kubelet: cgroupfs nests the path; systemd folds the root into every slice name.
        pytest.param("/kubelet", "cgroupfs", f"kubelet/kubepods/burstable/pod{POD_UID}", id="cgroupfs"),
        pytest.param(
            "/kubelet.slice", "systemd",
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
            f"kubelet-kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice",
            id="systemd",
        ),
    ],
)
def test_kubelets_cgroup_root_is_honoured(tmp_path: Path, cgroup_root: str, driver: str, expected: str) -> None:
    make_dirs(tmp_path, expected)
    assert detect_driver(tmp_path, cgroup_root=cgroup_root) == driver
    assert kubelet_tree_problem(tmp_path, cgroup_root=cgroup_root) is None
    assert kubelet_tree_problem(tmp_path) is not None  # with the default root there is no kubepods here
    assert pod_cgroup_dir(tmp_path, POD_UID, "burstable", driver, cgroup_root=cgroup_root) == tmp_path / expected


def test_container_cgroups_of_every_runtime_are_recognised(tmp_path: Path) -> None:
    for layout in LAYOUTS.values():
        make_dirs(tmp_path / layout.name, layout.pause, layout.app)
        found = [p.name for p in container_scopes(tmp_path / layout.name / layout.pod)]
        assert Path(layout.app).name in found, layout.name


def test_v1_limits_go_to_the_pod_and_every_cgroup_below_it_but_v2_only_to_the_pod(tmp_path: Path) -> None:
    layout = LAYOUTS["cgroupfs-burstable"]
    make_dirs(tmp_path, layout.pause, layout.app)
    v1, v2 = Hierarchy(1, tmp_path), Hierarchy(2, tmp_path)
    assert throttle_dirs(v2, tmp_path / layout.pod) == [tmp_path / layout.pod]
    assert throttle_dirs(v1, tmp_path / layout.pod) == [tmp_path / layout.pod, *sorted([tmp_path / layout.pause, tmp_path / layout.app])]


# ---------------------------------------------------------------- the writer inside a pod


def _pod_mountinfo(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The recorded mountinfo of a process in a pod's cgroup namespace, its two mount points moved under tmp_path."""
    lines = [line for line in (RECORDED / "v2-guest-pod-cgroupns.txt").read_text().splitlines() if " - cgroup2 " in line]
    host, own = tmp_path / "run/host/sys/fs/cgroup", tmp_path / "sys/fs/cgroup"
    for d in (host, own):
        d.mkdir(parents=True)
        (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (host / "kubepods.slice").mkdir()
    text = "\n".join(lines).replace(" /run/host/sys/fs/cgroup ", f" {host} ").replace(" /sys/fs/cgroup ", f" {own} ")
    mi = tmp_path / "mountinfo"
    mi.write_text(text + "\n")
    return mi, host, own


def test_in_a_pod_auto_detection_takes_the_hosts_tree_never_the_pods_own_cgroup(tmp_path: Path) -> None:
    mi, host, own = _pod_mountinfo(tmp_path)
    assert detect_hierarchy(mountinfo=mi, require_any=("kubepods.slice", "kubepods")) == Hierarchy(2, host)
    # Without the kubelet check the pod's namespaced mount would look like any tree.
    (host / "kubepods.slice").rmdir()
    with pytest.raises(SetupError, match="no cgroup I/O hierarchy holds kubepods.slice or kubepods.*/host/sys/fs/cgroup"):
        detect_hierarchy(mountinfo=mi, require_any=("kubepods.slice", "kubepods"))


def test_mount_devices_are_resolved_in_the_hosts_mount_namespace_through_its_proc(tmp_path: Path) -> None:
    from tests.writer.fake_trees import FakeSysfs

    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.add_disk("vdb", "254:16")
    host_proc = tmp_path / "host-proc"
    (host_proc / "1").mkdir(parents=True)
    (host_proc / "1" / "mountinfo").write_text("29 1 254:16 / /mnt/features rw,relatime - ext4 /dev/vdb rw\n")
    (host_proc / "self").mkdir()
    (host_proc / "self" / "mountinfo").write_text("99 1 0:50 / / rw - overlay overlay rw\n")  # the pod's own view
    got = resolve_devices([MountRef(mount="/mnt/features")], proc_root=host_proc, sys_root=sysfs.root, mountinfo_pid="1")
    assert got == ["254:16"]


def test_the_new_settings_have_documented_defaults_and_refuse_bad_values(tmp_path: Path) -> None:
    c = WriterConfig.model_validate({"discovery": {"local": []}})
    assert (c.kubelet_cgroup_root, c.proc_root, c.io_cost) == ("/", Path("/proc"), "off")
    c = WriterConfig.model_validate(
        {"discovery": {"local": []}, "kubelet_cgroup_root": "/kubelet", "proc_root": "/host/proc",
         "io_cost": {"model": {"rbps": "2e8"}, "qos": {"min": "50", "max": "150"}}}
    )
    assert not isinstance(c.io_cost, str) and (c.io_cost.model, c.io_cost.qos) == ({"rbps": "2e8"}, {"min": "50", "max": "150"})
    for bad in ({"kubelet_cgroup_root": "kubelet"}, {"kubelet_cgroup_root": "/a/../b"}, {"io_cost": "on"},
                {"io_cost": {"model": {"speed": "1"}}}, {"io_cost": {"qos": {"min": "fast"}}}):
        with pytest.raises(ValueError):
            WriterConfig.model_validate({"discovery": {"local": []}, **bad})


def test_enabling_io_cost_writes_the_root_qos_once(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "io.cost.qos").write_text("")
    (root / "io.cost.model").write_text("")
    h = Hierarchy(2, root)
    assert enable_io_cost(h, "254:0") == "applied"
    assert (root / "io.cost.qos").read_text() == "254:0 enable=1 ctrl=auto\n"
    assert enable_io_cost(h, "254:0") == "unchanged"
    assert enable_io_cost(h, "254:0", model={"rbps": "2e8"}, qos={"min": "100", "max": "100"}) == "applied"
    assert (root / "io.cost.model").read_text() == "254:0 ctrl=user model=linear rbps=2e8\n"
    assert (root / "io.cost.qos").read_text().splitlines()[-1] == "254:0 enable=1 ctrl=user min=100 max=100"


# ---------------------------------------------------------------- never a silent green


def _push(w: Any, generation: int = 1, **group: Any) -> Any:
    return w.reconciler.push(TargetsPush.model_validate(push_body(generation, **group)))


def _findings(w: Any) -> list[str]:
    findings = w.reconciler.status()["findings"]
    assert isinstance(findings, list)
    return findings


def test_a_push_matching_no_workload_is_answered_reported_and_counted(fake_v2: FakeTree) -> None:
    fake_v2.group("drcio-demo/lp")
    w = make_writer(fake_v2)
    answer = _push(w, selector={"group-id": "batch"})
    # The one LP workload is no group's: reported as unassigned, its cgroup left as it was.
    assert [(r.group, r.outcome) for r in answer.results] == [("unassigned", "unchanged")]
    assert answer.unmatched_groups == ["lp"]
    assert "group 'lp' matched no LP workload on this node; nothing was written for it" in answer.warnings
    assert "group 'lp' matched no LP workload on this node; nothing was written for it" in _findings(w)
    assert w.metric("drcio_push_group_unmatched", {"group": "lp"}) == 1.0
    answer = _push(w, 2)
    assert answer.unmatched_groups == [] and answer.warnings == []
    assert w.metric("drcio_push_group_unmatched", {"group": "lp"}) is None


def test_a_node_without_lp_workloads_says_so(fake_v2: FakeTree) -> None:
    w = make_writer(fake_v2)  # neither configured cgroup exists
    answer = _push(w)
    assert "no LP workload found on this node" in answer.warnings
    assert "no LP workload found on this node" in _findings(w)
    assert w.metric("drc_io_low_priority_pods") == 0.0


def test_the_weight_mechanism_per_device_and_the_competition_level_are_shown(fake_v2: FakeTree) -> None:
    layout = LAYOUTS["systemd-containerd-burstable"]
    fake_v2.group(layout.pod)
    fake_v2.group(layout.app)
    fake_v2.group("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podother.slice")
    (fake_v2.root / "io.cost.qos").write_text("254:0 enable=1 ctrl=auto\n")
    w = make_writer(fake_v2, entries=[{"name": "lp-batch", "path": layout.pod, "labels": {"group-id": "lp"}}])
    _push(w, io_weight=50)
    status: dict[str, Any] = w.reconciler.status()
    assert status["weight_mechanisms"] == {"254:0": "iocost"}
    [lp] = status["lp_workloads"]
    assert lp["weight_competes_among"] == {"parent": "kubepods.slice/kubepods-burstable.slice", "siblings": 1}
    assert w.metric("drcio_io_weight_mechanism", {"device": "254:0", "mechanism": "iocost"}) == 1.0
    (fake_v2.root / "io.cost.qos").write_text("254:0 enable=0\n")
    _push(w, 2, io_weight=50)
    assert w.reconciler.status()["weight_mechanisms"] == {"254:0": "none"}


def test_kubernetes_mode_reports_a_missing_kubelet_tree(tmp_path: Path) -> None:
    problem = kubelet_tree_problem(tmp_path)
    assert problem is not None and "kubepods.slice" in problem and "--cgroup-root" in problem


def test_the_writer_config_error_for_a_bad_io_cost_names_the_field(tmp_path: Path) -> None:
    from writer.config import load_config

    p = tmp_path / "w.yaml"
    p.write_text("discovery: {local: []}\nio_cost: {model: {speed: 1}}\n")
    with pytest.raises(ConfigError, match="io_cost"):
        load_config(p)
