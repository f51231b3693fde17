"""Builders of fake ``/sys``, ``/proc`` and cgroup trees in temp dirs, for layouts this machine lacks.

The shapes copy the real kernel's: ``/sys/block/<name>`` and
``/sys/dev/block/MAJ:MIN`` are relative symlinks into ``/sys/devices/...``,
a partition's directory sits inside its disk's and holds a ``partition``
file, a disk with a driver has a ``device`` link, device-mapper disks live
under ``devices/virtual/block`` with a ``dm/`` directory and ``slaves/`` links.
Used by the writer's device, cgroup path and discovery tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VIRTIO_PARENT = "devices/pci0000:00/0000:00:02.0/virtio1/block"
NVME_PARENT = "devices/pci0000:00/0000:00:04.0/nvme/nvme0"
SCSI_PARENT = "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block"
VIRTUAL_PARENT = "devices/virtual/block"


def _symlink(link: Path, target: Path) -> None:
    """A relative symlink ``link -> target``, as sysfs makes them."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


@dataclass
class FakeSysfs:
    """A fake ``/sys`` holding block devices; ``root`` is what the code gets as ``sys_root``."""

    root: Path

    def add_disk(
        self,
        name: str,
        majmin: str,
        *,
        parent: str = VIRTIO_PARENT,
        size: int = 2048,
        scheduler: str | None = "none [mq-deadline] kyber bfq",
        with_device_link: bool = True,
        hidden: bool = False,
    ) -> Path:
        disk = self.root / parent / name
        disk.mkdir(parents=True)
        (disk / "dev").write_text(f"{majmin}\n")
        (disk / "size").write_text(f"{size}\n")
        (disk / "hidden").write_text("1\n" if hidden else "0\n")
        (disk / "removable").write_text("0\n")
        (disk / "slaves").mkdir()
        (disk / "holders").mkdir()
        if scheduler is not None:
            (disk / "queue").mkdir()
            (disk / "queue" / "scheduler").write_text(f"{scheduler}\n")
        if with_device_link:
            # The driver's device dir is the parent of ".../block/" (or the controller for NVMe).
            device_dir = disk.parent.parent if disk.parent.name == "block" else disk.parent
            _symlink(disk / "device", device_dir)
        _symlink(self.root / "block" / name, disk)
        _symlink(self.root / "dev" / "block" / majmin, disk)
        return disk

    def add_virtual_disk(self, name: str, majmin: str, *, size: int = 2048, scheduler: str | None = None) -> Path:
        """loop, ram, zram, nbd, md: no driver, no ``device`` link, under ``devices/virtual/block``.

        Bio-based ones (zram, md) have no ``queue/scheduler``; blk-mq ones do: on this host
        (Linux 6.18, 2026-11-29) ``/sys/block/loop0`` -> ``../devices/virtual/block/loop0`` reads
        ``[none] mq-deadline kyber bfq``, ``/sys/block/zram0/queue/scheduler`` does not exist.
        """
        return self.add_disk(name, majmin, parent=VIRTUAL_PARENT, size=size, scheduler=scheduler, with_device_link=False)

    def add_partition(self, disk: str, name: str, majmin: str, *, number: int = 1) -> Path:
        disk_dir = (self.root / "block" / disk).resolve()
        part = disk_dir / name
        part.mkdir()
        (part / "dev").write_text(f"{majmin}\n")
        (part / "size").write_text("1024\n")
        (part / "partition").write_text(f"{number}\n")
        _symlink(self.root / "dev" / "block" / majmin, part)
        return part

    def add_dm(self, name: str, majmin: str, *, dm_name: str, slaves: list[str], size: int = 2048) -> Path:
        """A device-mapper disk (LVM volume, crypt) stacked on ``slaves`` (disk or partition names)."""
        disk = self.add_disk(name, majmin, parent=VIRTUAL_PARENT, size=size, scheduler="none", with_device_link=False)
        (disk / "dm").mkdir()
        (disk / "dm" / "name").write_text(f"{dm_name}\n")
        for slave in slaves:
            _symlink(disk / "slaves" / slave, self._device_dir(slave))
        return disk

    def _device_dir(self, name: str) -> Path:
        for link in (self.root / "dev" / "block").iterdir():
            target = link.resolve()
            if target.name == name:
                return target
        raise LookupError(name)


def mountinfo_line(mount_id: int, majmin: str, mount_point: str, fstype: str, source: str) -> str:
    """One ``/proc/self/mountinfo`` line; ``mount_point`` must already be kernel-escaped (``\\040``)."""
    return f"{mount_id} 1 {majmin} / {mount_point} rw,relatime shared:{mount_id} - {fstype} {source} rw"


def write_mountinfo(proc_root: Path, lines: list[str]) -> Path:
    path = proc_root / "self" / "mountinfo"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def make_dirs(root: Path, *relative: str) -> list[Path]:
    """Create directories (e.g. a fake cgroup tree) under ``root``; returns them in order."""
    made = []
    for rel in relative:
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        made.append(path)
    return made
