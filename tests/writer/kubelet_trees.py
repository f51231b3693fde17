"""Kubelet-shaped cgroup trees, written out literally from kubelet's and the runtimes' code.

The paths below are spelled out by hand, one per driver / runtime / QoS class,
from the sources listed in ``tests/writer/recorded/README.md`` (kubelet's
``pkg/kubelet/cm``, containerd's ``getCgroupsPath``, CRI-O's ``cgmgr``, runc's
systemd unit naming). They are never computed with the writer's own path rules
(:mod:`writer.cgroup_paths`): a test that builds its fixture with the function
it checks proves nothing.

A pod has a pause (sandbox) container and one app container; the process
doing I/O always sits in the app container's cgroup, never in the pod cgroup.
The same layouts are built on the real v1 kernel here, in the v2 guest
(``scripts/run-in-v2-kernel.sh``), and as fake trees for the path tests.
"""

from __future__ import annotations

from dataclasses import dataclass

# A pod uid as the API server assigns it, and the same uid as kubelet's systemd
# driver spells it in a unit name ('-' is systemd's hierarchy separator, so
# kubelet's escapeSystemdCgroupName turns it into '_').
POD_UID = "8d3e6a2c-4b1f-4c2e-9a7d-1f0e2d3c4b5a"
POD_UID_SYSTEMD = "8d3e6a2c_4b1f_4c2e_9a7d_1f0e2d3c4b5a"
# Container ids are 64 hex digits (containerd, CRI-O and docker alike).
PAUSE_ID = "5f0c3b9a" * 8
APP_ID = "a1b2c3d4" * 8
NEW_APP_ID = "0e1f2a3b" * 8


@dataclass(frozen=True)
class PodLayout:
    """Where one pod lives: the pod cgroup and its container cgroups, relative to the hierarchy root."""

    name: str
    driver: str
    qos: str
    pod: str
    pause: str
    app: str
    #: A container started after the push (a restart or a sidecar), for reconcile coverage.
    new_app: str


def _layout(name: str, driver: str, qos: str, pod: str, pause: str, app: str, new_app: str) -> PodLayout:
    return PodLayout(name, driver, qos, pod, f"{pod}/{pause}", f"{pod}/{app}", f"{pod}/{new_app}")


LAYOUTS: dict[str, PodLayout] = {
    layout.name: layout
    for layout in (
        # systemd driver + containerd: runc's systemd manager makes "<prefix>-<id>.scope"
        # from containerd's "slice:cri-containerd:<id>" cgroupsPath.
        _layout(
            "systemd-containerd-burstable", "systemd", "burstable",
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID_SYSTEMD}.slice",
            f"cri-containerd-{PAUSE_ID}.scope", f"cri-containerd-{APP_ID}.scope", f"cri-containerd-{NEW_APP_ID}.scope",
        ),
        _layout(
            "systemd-containerd-besteffort", "systemd", "besteffort",
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID_SYSTEMD}.slice",
            f"cri-containerd-{PAUSE_ID}.scope", f"cri-containerd-{APP_ID}.scope", f"cri-containerd-{NEW_APP_ID}.scope",
        ),
        # Guaranteed pods have no QoS slice: kubelet puts them straight under kubepods.
        _layout(
            "systemd-containerd-guaranteed", "systemd", "guaranteed",
            f"kubepods.slice/kubepods-pod{POD_UID_SYSTEMD}.slice",
            f"cri-containerd-{PAUSE_ID}.scope", f"cri-containerd-{APP_ID}.scope", f"cri-containerd-{NEW_APP_ID}.scope",
        ),
        # systemd driver + CRI-O: "crio-<id>.scope" for containers; the dropped infra
        # (pause) container gets a plain cgroupfs directory "crio-<id>" (CreateSandboxCgroup).
        _layout(
            "systemd-crio-burstable", "systemd", "burstable",
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID_SYSTEMD}.slice",
            f"crio-{PAUSE_ID}", f"crio-{APP_ID}.scope", f"crio-{NEW_APP_ID}.scope",
        ),
        # cgroupfs driver (any runtime): "<parent>/<id>", the pod as "pod<uid>" with dashes kept.
        _layout(
            "cgroupfs-burstable", "cgroupfs", "burstable",
            f"kubepods/burstable/pod{POD_UID}", PAUSE_ID, APP_ID, NEW_APP_ID,
        ),
        _layout(
            "cgroupfs-besteffort", "cgroupfs", "besteffort",
            f"kubepods/besteffort/pod{POD_UID}", PAUSE_ID, APP_ID, NEW_APP_ID,
        ),
        _layout(
            "cgroupfs-guaranteed", "cgroupfs", "guaranteed",
            f"kubepods/pod{POD_UID}", PAUSE_ID, APP_ID, NEW_APP_ID,
        ),
    )
}
