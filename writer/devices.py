"""Block device resolution: which ``MAJ:MIN`` numbers a push's ``devices`` mean on this node.

The writer's reconcile step calls :func:`resolve_devices` for every LP group
before it writes ``io.max`` (or ``blkio.throttle.*_device``), and
:func:`active_scheduler` to tell whether ``io.weight`` can bite (only BFQ
honours proportional weights). Everything is read from ``/proc`` and ``/sys``,
both injected, so the tests run on fake trees shaped like the real ones.

The kernel's cgroup I/O controllers take whole disks only (cgroup v2 rejects a
partition in ``io.max`` with EINVAL; v1 silently never throttles it), so every
answer here is a whole disk:

* ``"auto"``: every real disk in ``/sys/block``. A disk is real when it has a
  ``device`` link (a driver behind it; everything under
  ``/sys/devices/virtual/block`` - loop, ram, zram, nbd, md, dm - has none),
  a size above zero (empty card readers, unconfigured loop/nbd) and is not
  ``hidden`` (NVMe multipath controller paths ``nvme0c0n1``). Optical and
  floppy drives (``sr*``, ``fd*``) are skipped by name: they do have a device,
  but throttling a CD-ROM is never what "all disks" means. With
  ``include_dm`` the device-mapper disks (``dm-*``, e.g. LVM volumes) are added.
* ``"MAJ:MIN"``: must exist in ``/sys/dev/block``; a partition becomes its disk.
* ``MountRef``: the device behind the mount point in ``/proc/self/mountinfo``
  (longest mount-point prefix, the last of equal ones since it is the visible
  one), then partition -> disk. Filesystems with major 0 (tmpfs, overlay,
  btrfs' anonymous devices, NFS) have no block device and are an error.

Device-mapper devices found through a mount or a number are replaced by the
physical disks under them (``slaves/``, recursively) unless ``include_dm``:
throttling on the physical disk still charges the pod (bios cloned by dm keep
their cgroup), and it keeps one rule - "only real disks" - for every form.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from writer.api import Devices, MountRef
from writer.mountinfo import entries as mountinfo_entries

__all__ = ["DeviceError", "resolve_devices", "disk_name", "active_scheduler"]

_MAJMIN_RE = re.compile(r"^([0-9]{1,4}):([0-9]{1,7})$")
#: Names that have a driver behind them but are not disks one throttles.
_SKIPPED_NAME_RE = re.compile(r"^(sr|fd)[0-9]+$")
#: Guard against a dm slave loop in a broken (or hostile fake) tree.
_MAX_STACK_DEPTH = 8


class DeviceError(ValueError):
    """A device reference cannot be resolved to a whole disk; the message says what and where."""


def resolve_devices(
    spec: Devices,
    *,
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    include_dm: bool = False,
    mountinfo_pid: str = "self",
) -> list[str]:
    """Return the whole disks ``spec`` means on this node, as unique ``MAJ:MIN`` sorted numerically.

    Mount paths are looked up in ``<proc_root>/<mountinfo_pid>/mountinfo``: this
    process's mounts by default; ``"1"`` with the host's /proc mounted in (e.g.
    ``/host/proc``) reads the host's mount namespace from a writer in a pod.

    Raises :class:`DeviceError` for the first reference that cannot be
    resolved; nothing is partially returned, so a caller writes all or nothing.
    """
    if spec == "auto":
        found = _auto_disks(sys_root, include_dm=include_dm)
    else:
        found = set()
        for ref in spec:
            if isinstance(ref, MountRef):
                majmin = _mount_device(ref.mount, proc_root / mountinfo_pid / "mountinfo")
                where = f"mount {ref.mount!r} (device {majmin})"
            else:
                majmin = _normalise(ref)
                where = f"device {ref!r}"
            found.update(_physical_disks(majmin, sys_root, include_dm=include_dm, where=where))
    return sorted(found, key=_sort_key)


def disk_name(majmin: str, *, sys_root: Path = Path("/sys")) -> str:
    """The kernel name (``vda``, ``nvme0n1``) of the whole disk holding ``majmin``."""
    return _whole_disk_dir(_normalise(majmin), sys_root).name


def active_scheduler(majmin: str, *, sys_root: Path = Path("/sys")) -> str | None:
    """The active I/O scheduler of the disk holding ``majmin`` (``"bfq"``, ``"mq-deadline"``, ``"none"``).

    ``None`` when the disk has no scheduler (bio-based devices such as zram or
    dm have no ``queue/scheduler`` or list no bracketed entry). Raises
    :class:`DeviceError` when there is no such device.
    """
    name = disk_name(majmin, sys_root=sys_root)
    path = sys_root / "block" / name / "queue" / "scheduler"
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else None


def _sort_key(majmin: str) -> tuple[int, int]:
    major, minor = majmin.split(":")
    return int(major), int(minor)


def _normalise(majmin: str) -> str:
    match = _MAJMIN_RE.match(majmin)
    if not match:
        raise DeviceError(f"device {majmin!r} is not MAJ:MIN (two decimal numbers, e.g. '254:0')")
    # "08:01" and "8:1" are the same device; sysfs only knows the latter.
    return f"{int(match.group(1))}:{int(match.group(2))}"


def _read(path: Path, *, where: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise DeviceError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc


def _whole_disk_dir(majmin: str, sys_root: Path) -> Path:
    """The sysfs directory of the disk holding ``majmin`` (itself, or the parent of a partition)."""
    link = sys_root / "dev" / "block" / majmin
    if not link.exists():
        raise DeviceError(f"no block device {majmin} on this node (nothing at {link})")
    device_dir = link.resolve()
    # A partition's directory sits inside its disk's (.../block/vda/vda1) and has a
    # "partition" file; NVMe partitions (nvme0n1p1) follow the same rule.
    if (device_dir / "partition").is_file():
        return device_dir.parent
    return device_dir


def _physical_disks(majmin: str, sys_root: Path, *, include_dm: bool, where: str) -> set[str]:
    try:
        disk_dir = _whole_disk_dir(majmin, sys_root)
    except DeviceError as exc:
        raise DeviceError(f"{where}: {exc}") from exc
    return _expand_dm(disk_dir, include_dm=include_dm, where=where, depth=0)


def _expand_dm(disk_dir: Path, *, include_dm: bool, where: str, depth: int) -> set[str]:
    if include_dm or not (disk_dir / "dm").is_dir():
        return {_normalise(_read(disk_dir / "dev", where=where))}
    if depth >= _MAX_STACK_DEPTH:
        raise DeviceError(f"{where}: device-mapper stack under {disk_dir.name} is deeper than {_MAX_STACK_DEPTH}")
    slaves_dir = disk_dir / "slaves"
    slaves = sorted(slaves_dir.iterdir()) if slaves_dir.is_dir() else []
    if not slaves:
        raise DeviceError(
            f"{where}: {disk_dir.name} is a device-mapper device without underlying disks;"
            " allow device-mapper devices or name a disk explicitly"
        )
    found: set[str] = set()
    for slave in slaves:
        slave_dir = slave.resolve()
        if (slave_dir / "partition").is_file():
            slave_dir = slave_dir.parent
        found |= _expand_dm(slave_dir, include_dm=include_dm, where=where, depth=depth + 1)
    return found


def _auto_disks(sys_root: Path, *, include_dm: bool) -> set[str]:
    block = sys_root / "block"
    try:
        entries = sorted(block.iterdir())
    except OSError as exc:
        raise DeviceError(f"devices 'auto': cannot list {block}: {exc.strerror or exc}") from exc
    found: set[str] = set()
    for entry in entries:
        if not _is_real_disk(entry, include_dm=include_dm):
            continue
        try:
            found.add(_normalise(_read(entry / "dev", where="devices 'auto'")))
        except DeviceError:
            # A disk vanishing between listing and reading (hot unplug) is not an error of "auto".
            continue
    return found


def _is_real_disk(entry: Path, *, include_dm: bool) -> bool:
    name = entry.name
    if _SKIPPED_NAME_RE.match(name):
        return False
    is_dm = (entry / "dm").is_dir()
    if is_dm:
        if not include_dm:
            return False
    elif not (entry / "device").exists():
        return False
    if _read_int(entry / "size") <= 0:
        return False
    return _read_int(entry / "hidden") != 1


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _mount_device(mount: str, mountinfo: Path) -> str:
    """``MAJ:MIN`` of the filesystem mounted at (or holding) ``mount``, from mountinfo."""
    target = os.path.normpath(mount)
    try:
        text = mountinfo.read_text()
    except OSError as exc:
        raise DeviceError(f"mount {mount!r}: cannot read {mountinfo}: {exc.strerror or exc}") from exc
    best: tuple[int, str, str] | None = None  # (prefix length, MAJ:MIN, fstype)
    for number, line, entry in mountinfo_entries(text):
        if entry is None:
            raise DeviceError(f"mount {mount!r}: {mountinfo} line {number} is not a mountinfo line: {line!r}")
        if not _is_under(target, entry.mount_point):
            continue
        # ">=": of two mounts on the same point the later one is on top and visible.
        if best is None or len(entry.mount_point) >= best[0]:
            best = (len(entry.mount_point), entry.majmin, entry.fstype)
    if best is None:
        raise DeviceError(f"mount {mount!r}: no mount in {mountinfo} holds this path")
    _, majmin, fstype = best
    if majmin.startswith("0:"):
        raise DeviceError(
            f"mount {mount!r} is a {fstype} filesystem ({majmin}) with no block device;"
            " name the disk as MAJ:MIN instead"
        )
    return _normalise(majmin)


def _is_under(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
