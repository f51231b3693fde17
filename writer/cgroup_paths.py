"""Where a pod's cgroup lives, for both kubelet cgroup drivers and both cgroup versions.

Pod discovery (:mod:`writer.discovery`) calls :func:`pod_cgroup_dir` to turn a
pod (uid, QoS class) into its directory, and the cgroup writers call
:func:`safe_join` before touching any file, so that nothing from a push, a
config file or the API server can steer a write outside the cgroup root.

The kubelet lays pods out the same way under the cgroup v2 mount
(``/sys/fs/cgroup``) and under the v1 ``blkio`` hierarchy
(``/sys/fs/cgroup/blkio``), so one ``hierarchy_root`` argument covers both:

============  =========================================================================
driver        pod directory (relative to the hierarchy root)
============  =========================================================================
systemd       ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``
              (``besteffort`` likewise; Guaranteed pods sit directly in
              ``kubepods.slice/kubepods-pod<uid_>.slice``; ``uid_`` is the uid with
              ``-`` replaced by ``_`` because ``-`` is systemd's slice separator)
cgroupfs      ``kubepods/burstable/pod<uid>`` (Guaranteed: ``kubepods/pod<uid>``)
============  =========================================================================

The kubelet's ``--cgroup-root`` (default ``/``) is a parameter. kubelet names
cgroups as a list of components (``[<root parts>..., "kubepods", <qos>,
"pod<uid>"]``); the cgroupfs driver joins them with ``/``, the systemd driver
turns them into nested slices, each slice named after all components so far
joined by ``-`` (``kubelet.slice/kubelet-kubepods.slice/...`` for
``--cgroup-root=/kubelet``), with ``-`` inside a component escaped to ``_``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

__all__ = [
    "Driver",
    "QosClass",
    "CgroupPathError",
    "detect_driver",
    "pod_cgroup_dir",
    "safe_join",
    "join_resolved",
    "container_scopes",
    "check_pod_uid",
    "kubelet_tree_problem",
]

Driver = Literal["systemd", "cgroupfs"]
QosClass = Literal["guaranteed", "burstable", "besteffort"]

# Pod uids are UUIDs assigned by the API server; static pods use the kubelet's
# 32-hex config hash instead (it is their mirror pod's "kubernetes.io/config.mirror").
_UID_RE = re.compile(r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$")
_QOS_CLASSES: tuple[QosClass, ...] = ("guaranteed", "burstable", "besteffort")
# Container cgroups inside a pod directory, per runtime and driver.
_SCOPE_RES = (
    re.compile(r"^cri-containerd-[0-9a-f]{64}\.scope$"),  # containerd, systemd driver
    re.compile(r"^crio-(?:conmon-)?[0-9a-f]{64}\.scope$"),  # CRI-O (container and its conmon monitor)
    re.compile(r"^docker-[0-9a-f]{64}\.scope$"),  # dockershim / cri-dockerd, systemd driver
    re.compile(r"^[0-9a-f]{64}$"),  # any runtime, cgroupfs driver
)


class CgroupPathError(ValueError):
    """A cgroup path cannot be formed, or would leave the cgroup root; the message says which."""


def check_pod_uid(uid: str) -> str:
    """Return ``uid`` if it is a pod uid (lowercase UUID, or a static pod's 32-hex hash), else raise.

    The uid ends up in a path, so anything else - ``/``, ``..``, NUL - is refused here.
    """
    if not _UID_RE.match(uid):
        raise CgroupPathError(f"pod uid {uid!r} is not a UUID (or a static pod's 32-hex config hash)")
    return uid


def _root_parts(cgroup_root: str, driver: Driver) -> list[str]:
    """kubelet's ``--cgroup-root`` as name components (``/`` -> none; ``/kubelet`` -> ``["kubelet"]``).

    For the systemd driver the root is a slice: ``/kubelet.slice`` and ``/kubelet``
    name the same one, and a nested slice path (``/a.slice/a-b.slice``) is
    identified by its last slice's name, whose parts are split on ``-``.
    """
    parts = [p for p in cgroup_root.strip("/").split("/") if p]
    if not cgroup_root.startswith("/") or any(p in (".", "..") for p in parts) or "\x00" in cgroup_root:
        raise CgroupPathError(f"kubelet cgroup root {cgroup_root!r} must be an absolute cgroup path like /kubelet")
    if driver == "systemd" and parts:
        return parts[-1].removesuffix(".slice").split("-")
    return parts


def _kubelet_path(components: list[str], driver: Driver) -> str:
    if driver == "cgroupfs":
        return "/".join(components)
    # systemd: every component becomes a slice named after the whole prefix (systemd's ExpandSlice).
    names, prefix = [], ""
    for c in components:
        prefix = f"{prefix}-{c.replace('-', '_')}" if prefix else c.replace("-", "_")
        names.append(f"{prefix}.slice")
    return "/".join(names)


def _kubepods(cgroup_root: str, driver: Driver) -> str:
    return _kubelet_path([*_root_parts(cgroup_root, driver), "kubepods"], driver)


def detect_driver(hierarchy_root: Path, *, cgroup_root: str = "/") -> Driver:
    """Tell the kubelet's cgroup driver from the tree: ``kubepods.slice/`` (systemd) or ``kubepods/`` (cgroupfs).

    ``cgroup_root`` is kubelet's ``--cgroup-root``; the kubepods cgroup is looked up under it.
    """
    systemd_dir = _kubepods(cgroup_root, "systemd")
    cgroupfs_dir = _kubepods(cgroup_root, "cgroupfs")
    systemd = (hierarchy_root / systemd_dir).is_dir()
    cgroupfs = (hierarchy_root / cgroupfs_dir).is_dir()
    if systemd and cgroupfs:
        raise CgroupPathError(
            f"both {systemd_dir} and {cgroupfs_dir} exist under {hierarchy_root}; set the cgroup driver explicitly"
        )
    if systemd:
        return "systemd"
    if cgroupfs:
        return "cgroupfs"
    raise CgroupPathError(
        f"no {systemd_dir} (systemd driver) or {cgroupfs_dir} (cgroupfs driver) under {hierarchy_root};"
        " is this the host's cgroup v2 mount or v1 blkio hierarchy of a Kubernetes node"
        " (in a pod: the host's /sys/fs/cgroup mounted in, e.g. at /host/sys/fs/cgroup),"
        " and is kubelet's --cgroup-root set?"
    )


def kubelet_tree_problem(hierarchy_root: Path, *, cgroup_root: str = "/") -> str | None:
    """``None`` when a kubelet tree is found under the root, else what is missing (for /status and pushes)."""
    try:
        detect_driver(hierarchy_root, cgroup_root=cgroup_root)
    except CgroupPathError as err:
        return str(err)
    return None


def pod_cgroup_dir(hierarchy_root: Path, uid: str, qos: QosClass, driver: Driver, *, cgroup_root: str = "/") -> Path:
    """The pod's cgroup directory under ``hierarchy_root`` (it may not exist yet, or any more).

    ``cgroup_root`` is kubelet's ``--cgroup-root``.
    """
    check_pod_uid(uid)
    if qos not in _QOS_CLASSES:
        raise CgroupPathError(f"QoS class {qos!r} is not one of {', '.join(_QOS_CLASSES)}")
    if driver not in ("systemd", "cgroupfs"):
        raise CgroupPathError(f"cgroup driver {driver!r} is not 'systemd' or 'cgroupfs'")
    parts = _root_parts(cgroup_root, driver)
    # Guaranteed pods sit directly in kubepods; the other classes in a QoS cgroup below it.
    components = [*parts, "kubepods", *([] if qos == "guaranteed" else [qos]), f"pod{uid}"]
    return hierarchy_root / _kubelet_path(components, driver)


def safe_join(root: Path, relative: str | Path) -> Path:
    """``root / relative`` with symlinks and ``..`` resolved, refused unless it stays inside ``root``.

    The result need not exist. An absolute ``relative`` or one containing NUL is refused too.
    """
    return join_resolved(root.resolve(), relative)


def join_resolved(resolved_root: Path, relative: str | Path) -> Path:
    """:func:`safe_join` for a root already resolved by the caller (resolved once, joined many times)."""
    text = str(relative)
    if "\x00" in text:
        raise CgroupPathError(f"cgroup path {text!r} contains NUL")
    if Path(text).is_absolute():
        raise CgroupPathError(f"cgroup path {text!r} must be relative to the cgroup root {resolved_root}")
    joined = Path(os.path.realpath(resolved_root / text))
    if not joined.is_relative_to(resolved_root):
        raise CgroupPathError(f"cgroup path {text!r} leaves the cgroup root {resolved_root} (it resolves to {joined})")
    return joined


def container_scopes(pod_dir: Path) -> list[Path]:
    """The container cgroups inside a pod directory, sorted; empty if the pod directory is gone."""
    try:
        children = list(pod_dir.iterdir())
    except OSError:
        # Pods churn: a directory vanishing between discovery and this call is normal.
        return []
    return sorted(
        child for child in children if any(r.match(child.name) for r in _SCOPE_RES) and child.is_dir()
    )
