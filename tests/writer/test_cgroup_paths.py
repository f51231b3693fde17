"""Pod cgroup paths: both drivers, both cgroup versions, every QoS class; nothing leaves the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.writer.fake_trees import make_dirs
from writer.cgroup_paths import (
    CgroupPathError,
    Driver,
    QosClass,
    check_pod_uid,
    container_scopes,
    detect_driver,
    pod_cgroup_dir,
    safe_join,
)

UID = "0f3c9a2e-5b1d-4c7e-9a8b-1234567890ab"
UID_ = UID.replace("-", "_")
CONTAINER = "a" * 64
SANDBOX = "b" * 64

# What a kubelet creates, per driver (same relative layout under the v2 mount and the v1 blkio hierarchy).
KUBELET_TREES: dict[Driver, dict[QosClass, str]] = {
    "systemd": {
        "guaranteed": f"kubepods.slice/kubepods-pod{UID_}.slice",
        "burstable": f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        "besteffort": f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
    },
    "cgroupfs": {
        "guaranteed": f"kubepods/pod{UID}",
        "burstable": f"kubepods/burstable/pod{UID}",
        "besteffort": f"kubepods/besteffort/pod{UID}",
    },
}
# cgroup v2 mount vs the v1 blkio hierarchy, relative to a temp dir standing for /sys/fs/cgroup.
HIERARCHIES = {"v2": ".", "v1-blkio": "blkio"}


@pytest.mark.parametrize("version", list(HIERARCHIES))
@pytest.mark.parametrize(
    ("driver", "qos"),
    [pytest.param(d, q, id=f"{d}-{q}") for d, per_qos in KUBELET_TREES.items() for q in per_qos],
)
def test_pod_dir_is_where_the_kubelet_puts_the_pod(tmp_path: Path, version: str, driver: Driver, qos: QosClass) -> None:
    root = tmp_path / HIERARCHIES[version]
    make_dirs(root, *KUBELET_TREES[driver].values())
    path = pod_cgroup_dir(root, UID, qos, driver)
    assert path == root / KUBELET_TREES[driver][qos]
    assert path.is_dir()


def test_a_static_pods_hash_uid_is_accepted(tmp_path: Path) -> None:
    uid = "6a2b7e1f0c9d8e7f6a5b4c3d2e1f0a9b"
    assert pod_cgroup_dir(tmp_path, uid, "burstable", "cgroupfs") == tmp_path / f"kubepods/burstable/pod{uid}"


@pytest.mark.parametrize(
    "uid",
    [
        pytest.param("", id="empty"),
        pytest.param("../../etc", id="dot-dot"),
        pytest.param("0f3c9a2e/5b1d", id="slash"),
        pytest.param(UID + "\x00", id="nul"),
        pytest.param(UID.upper(), id="uppercase"),
        pytest.param(UID + "-x", id="trailing-junk"),
        pytest.param(" " + UID, id="leading-space"),
    ],
)
def test_a_uid_that_is_not_a_uuid_is_refused(tmp_path: Path, uid: str) -> None:
    with pytest.raises(CgroupPathError, match="is not a UUID"):
        pod_cgroup_dir(tmp_path, uid, "burstable", "systemd")
    with pytest.raises(CgroupPathError):
        check_pod_uid(uid)


def test_an_unknown_qos_or_driver_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CgroupPathError, match="QoS class 'Burstable'"):
        pod_cgroup_dir(tmp_path, UID, "Burstable", "systemd")  # type: ignore[arg-type]
    with pytest.raises(CgroupPathError, match="cgroup driver 'docker'"):
        pod_cgroup_dir(tmp_path, UID, "burstable", "docker")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dirs", "expected"),
    [
        pytest.param(["kubepods.slice"], "systemd", id="systemd"),
        pytest.param(["kubepods"], "cgroupfs", id="cgroupfs"),
        pytest.param(["kubepods.slice", "user.slice", "system.slice"], "systemd", id="systemd-among-others"),
    ],
)
def test_driver_is_detected_from_the_tree(tmp_path: Path, dirs: list[str], expected: Driver) -> None:
    make_dirs(tmp_path, *dirs)
    assert detect_driver(tmp_path) == expected


@pytest.mark.parametrize(
    ("dirs", "message"),
    [
        pytest.param([], "no kubepods.slice", id="neither"),
        pytest.param(["kubepods.slice", "kubepods"], "both kubepods.slice and kubepods", id="both"),
    ],
)
def test_driver_detection_refuses_to_guess(tmp_path: Path, dirs: list[str], message: str) -> None:
    make_dirs(tmp_path, *dirs)
    with pytest.raises(CgroupPathError, match=message):
        detect_driver(tmp_path)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        pytest.param("drcio-demo/lp", "drcio-demo/lp", id="plain"),
        pytest.param("drcio-demo/../drcio-demo/lp", "drcio-demo/lp", id="dot-dot-staying-inside"),
        pytest.param("inside-link/lp", "drcio-demo/lp", id="symlink-inside"),
        pytest.param("not/yet/created", "not/yet/created", id="missing-is-fine"),
        pytest.param(".", ".", id="root-itself"),
    ],
)
def test_safe_join_resolves_paths_that_stay_inside(tmp_path: Path, relative: str, expected: str) -> None:
    root = tmp_path / "cgroup"
    make_dirs(root, "drcio-demo/lp")
    (root / "inside-link").symlink_to("drcio-demo")
    assert safe_join(root, relative) == (root / expected).resolve()


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        pytest.param("../etc", "leaves the cgroup root", id="dot-dot"),
        pytest.param("drcio-demo/../../etc/passwd", "leaves the cgroup root", id="nested-dot-dot"),
        pytest.param("escape/passwd", "leaves the cgroup root", id="symlink-out"),
        pytest.param("/etc/passwd", "must be relative", id="absolute"),
        pytest.param("lp\x00", "contains NUL", id="nul"),
    ],
)
def test_safe_join_refuses_anything_leaving_the_root(tmp_path: Path, relative: str, message: str) -> None:
    root = tmp_path / "cgroup"
    make_dirs(root, "drcio-demo", "../outside")
    (root / "escape").symlink_to(os.path.relpath(tmp_path / "outside", root))
    with pytest.raises(CgroupPathError, match=message):
        safe_join(root, relative)


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        pytest.param(
            [f"cri-containerd-{CONTAINER}.scope", f"cri-containerd-{SANDBOX}.scope"],
            [f"cri-containerd-{CONTAINER}.scope", f"cri-containerd-{SANDBOX}.scope"],
            id="containerd-systemd",
        ),
        pytest.param(
            [f"crio-{CONTAINER}.scope", f"crio-conmon-{CONTAINER}.scope"],
            [f"crio-{CONTAINER}.scope", f"crio-conmon-{CONTAINER}.scope"],
            id="crio-systemd",
        ),
        pytest.param([f"docker-{CONTAINER}.scope"], [f"docker-{CONTAINER}.scope"], id="docker-systemd"),
        pytest.param([CONTAINER, SANDBOX], [CONTAINER, SANDBOX], id="cgroupfs-plain-ids"),
        pytest.param(
            ["init.scope", "cri-containerd-short.scope", "a" * 63, f"crio-{CONTAINER}.scope.bak"], [], id="lookalikes"
        ),
    ],
)
def test_container_scopes_are_recognised_per_runtime(tmp_path: Path, children: list[str], expected: list[str]) -> None:
    pod = tmp_path / KUBELET_TREES["systemd"]["burstable"]
    make_dirs(pod, *children)
    (pod / "io.max").write_text("")  # cgroup files are not containers
    (pod / f"cri-containerd-{'c' * 64}.scope.lock").write_text("")
    assert container_scopes(pod) == [pod / name for name in expected]


def test_container_scopes_of_a_vanished_pod_is_empty(tmp_path: Path) -> None:
    assert container_scopes(tmp_path / "kubepods" / f"pod{UID}") == []
