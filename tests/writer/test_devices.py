"""Device resolution: auto, explicit MAJ:MIN and mount paths become whole real disks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from tests.writer.fake_trees import NVME_PARENT, SCSI_PARENT, FakeSysfs, mountinfo_line, write_mountinfo
from writer.api import Devices
from writer.devices import DeviceError, active_scheduler, disk_name, resolve_devices

_DEVICES = TypeAdapter(Devices)


def _spec(raw: Any) -> Devices:
    """Parse like the writer's push endpoint does, so tests feed what the wire can carry."""
    return _DEVICES.validate_python(raw)


#: /sys/block/loop0/queue/scheduler on this host (Linux 6.18, 2026-11-29): loop is blk-mq.
LOOP_SCHEDULER = "[none] mq-deadline kyber bfq"


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    """A node with virtio, SCSI and NVMe disks, partitions, LVM, virtual devices and a CD-ROM."""
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.add_disk("vda", "254:0")
    sysfs.add_partition("vda", "vda1", "254:1", number=1)
    sysfs.add_partition("vda", "vda2", "254:2", number=2)
    sysfs.add_disk("sda", "8:0", parent=SCSI_PARENT, scheduler="mq-deadline kyber [bfq] none")
    sysfs.add_partition("sda", "sda1", "8:1")
    sysfs.add_disk("sr0", "11:0", parent=SCSI_PARENT)
    sysfs.add_disk("nvme0n1", "259:0", parent=NVME_PARENT, scheduler="[none] mq-deadline")
    sysfs.add_partition("nvme0n1", "nvme0n1p1", "259:1")
    sysfs.add_disk("nvme0n2", "259:2", parent=NVME_PARENT, scheduler="[none] mq-deadline")
    sysfs.add_disk("nvme0c0n1", "259:3", parent=NVME_PARENT, hidden=True)
    sysfs.add_disk("mmcblk0", "179:0", parent="devices/platform/mmc/block", size=0)
    sysfs.add_virtual_disk("loop0", "7:0", size=0, scheduler=LOOP_SCHEDULER)
    sysfs.add_virtual_disk("loop1", "7:1", scheduler=LOOP_SCHEDULER)
    sysfs.add_virtual_disk("zram0", "253:0")
    sysfs.add_dm("dm-0", "252:0", dm_name="vg-data", slaves=["sda1"])
    sysfs.add_dm("dm-1", "252:1", dm_name="vg-broken", slaves=[])
    proc = tmp_path / "proc"
    write_mountinfo(
        proc,
        [
            mountinfo_line(20, "254:1", "/", "ext4", "/dev/vda1"),
            mountinfo_line(21, "0:30", "/tmp", "tmpfs", "tmpfs"),
            mountinfo_line(22, "259:1", "/data", "xfs", "/dev/nvme0n1p1"),
            mountinfo_line(23, "259:2", "/mnt/ns2", "xfs", "/dev/nvme0n2"),
            mountinfo_line(24, "8:1", r"/mnt/my\040disk", "ext4", "/dev/sda1"),
            mountinfo_line(25, "252:0", "/var/lib/lvm", "ext4", "/dev/mapper/vg-data"),
            mountinfo_line(26, "0:40", "/var/lib/containers", "overlay", "overlay"),
            mountinfo_line(27, "254:2", "/mnt/stack", "ext4", "/dev/vda2"),
            mountinfo_line(28, "0:50", "/mnt/stack", "tmpfs", "tmpfs"),
            mountinfo_line(29, "252:1", "/mnt/broken", "ext4", "/dev/mapper/vg-broken"),
        ],
    )
    return proc, tmp_path / "sys"


@pytest.mark.parametrize(
    ("include_dm", "expected"),
    [
        pytest.param(False, ["8:0", "254:0", "259:0", "259:2"], id="real-disks-only"),
        pytest.param(True, ["8:0", "252:0", "252:1", "254:0", "259:0", "259:2"], id="plus-device-mapper"),
    ],
)
def test_auto_lists_real_disks_and_skips_virtual_empty_hidden_and_optical(
    node: tuple[Path, Path], include_dm: bool, expected: list[str]
) -> None:
    proc, sys = node
    assert resolve_devices("auto", proc_root=proc, sys_root=sys, include_dm=include_dm) == expected


@pytest.mark.parametrize(
    ("raw", "include_dm", "expected"),
    [
        pytest.param(["254:0"], False, ["254:0"], id="disk-stays"),
        pytest.param(["254:1"], False, ["254:0"], id="partition-to-disk"),
        pytest.param(["259:1"], False, ["259:0"], id="nvme-partition-to-namespace"),
        pytest.param(["259:2"], False, ["259:2"], id="second-nvme-namespace-is-its-own-disk"),
        pytest.param(["08:01"], False, ["8:0"], id="leading-zeros-normalised"),
        pytest.param(["8:1", "8:0", "254:2", "254:1"], False, ["8:0", "254:0"], id="unique-and-numerically-sorted"),
        pytest.param(["252:0"], False, ["8:0"], id="dm-to-physical-disk"),
        pytest.param(["252:0"], True, ["252:0"], id="dm-kept-when-allowed"),
        pytest.param([{"mount": "/"}], False, ["254:0"], id="root-mount"),
        pytest.param([{"mount": "/srv/anything"}], False, ["254:0"], id="path-under-root"),
        pytest.param([{"mount": "/datastore"}], False, ["254:0"], id="prefix-is-per-component"),
        pytest.param([{"mount": "/data"}], False, ["259:0"], id="nvme-partition-mount"),
        pytest.param([{"mount": "/data/sub/dir"}], False, ["259:0"], id="longest-prefix-wins"),
        pytest.param([{"mount": "/mnt/ns2"}], False, ["259:2"], id="nvme-namespace-mount"),
        pytest.param([{"mount": "/mnt/my disk/x"}], False, ["8:0"], id="escaped-space-in-mountinfo"),
        pytest.param([{"mount": "/var/lib/lvm"}], False, ["8:0"], id="lvm-mount-to-physical-disk"),
        pytest.param([{"mount": "/var/lib/lvm"}], True, ["252:0"], id="lvm-mount-kept-when-dm-allowed"),
        pytest.param(["254:1", {"mount": "/data"}, "254:0"], False, ["254:0", "259:0"], id="mixed-list"),
    ],
)
def test_explicit_devices_and_mounts_resolve_to_whole_disks(
    node: tuple[Path, Path], raw: Any, include_dm: bool, expected: list[str]
) -> None:
    proc, sys = node
    assert resolve_devices(_spec(raw), proc_root=proc, sys_root=sys, include_dm=include_dm) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(["9:9"], "no block device 9:9", id="missing-device"),
        pytest.param(["254:0", "9:9"], "no block device 9:9", id="one-missing-fails-all"),
        pytest.param([{"mount": "/tmp/x"}], "tmpfs filesystem (0:30) with no block device", id="tmpfs"),
        pytest.param([{"mount": "/var/lib/containers"}], "overlay filesystem", id="overlay"),
        pytest.param([{"mount": "/mnt/stack"}], "tmpfs filesystem (0:50)", id="overmounted-by-tmpfs"),
        pytest.param([{"mount": "/mnt/broken"}], "device-mapper device without underlying disks", id="dm-without-slaves"),
    ],
)
def test_unresolvable_devices_raise_an_error_naming_them(node: tuple[Path, Path], raw: Any, message: str) -> None:
    proc, sys = node
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_devices(_spec(raw), proc_root=proc, sys_root=sys)


def test_a_mount_without_readable_mountinfo_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"cannot read .*/proc/self/mountinfo"):
        resolve_devices(_spec([{"mount": "/"}]), proc_root=tmp_path / "proc", sys_root=tmp_path / "sys")


def test_a_garbled_mountinfo_line_is_reported_with_its_number(tmp_path: Path) -> None:
    write_mountinfo(tmp_path / "proc", [mountinfo_line(1, "254:0", "/", "ext4", "/dev/vda"), "garbage"])
    with pytest.raises(DeviceError, match="line 2 is not a mountinfo line"):
        resolve_devices(_spec([{"mount": "/"}]), proc_root=tmp_path / "proc", sys_root=tmp_path / "sys")


def test_a_malformed_device_number_is_rejected_even_past_the_wire_model(node: tuple[Path, Path]) -> None:
    proc, sys = node
    with pytest.raises(DeviceError, match="is not MAJ:MIN"):
        resolve_devices(["../../etc"], proc_root=proc, sys_root=sys)


@pytest.mark.parametrize(
    ("majmin", "name"),
    [
        pytest.param("254:0", "vda", id="disk"),
        pytest.param("254:2", "vda", id="partition-names-its-disk"),
        pytest.param("259:1", "nvme0n1", id="nvme-partition"),
    ],
)
def test_disk_name_is_the_whole_disks_kernel_name(node: tuple[Path, Path], majmin: str, name: str) -> None:
    assert disk_name(majmin, sys_root=node[1]) == name


@pytest.mark.parametrize(
    ("majmin", "scheduler"),
    [
        pytest.param("254:1", "mq-deadline", id="mq-deadline"),
        pytest.param("8:0", "bfq", id="bfq-honours-weights"),
        pytest.param("259:0", "none", id="none"),
        pytest.param("253:0", None, id="bio-based-has-no-scheduler"),
        pytest.param("252:0", None, id="unbracketed-list"),
    ],
)
def test_active_scheduler_is_the_bracketed_entry(node: tuple[Path, Path], majmin: str, scheduler: str | None) -> None:
    assert active_scheduler(majmin, sys_root=node[1]) == scheduler


def test_scheduler_of_a_missing_device_is_an_error(node: tuple[Path, Path]) -> None:
    with pytest.raises(DeviceError, match="no block device 9:9"):
        active_scheduler("9:9", sys_root=node[1])


_REAL_ROOT_DISK = Path("/sys/dev/block/254:0")


@pytest.mark.skipif(not _REAL_ROOT_DISK.exists(), reason="needs this dev machine's root disk vda (254:0)")
def test_on_this_machine_auto_finds_vda_and_skips_zram_and_root_mount_is_vda() -> None:
    auto = resolve_devices("auto")
    assert "254:0" in auto
    assert "253:0" not in auto
    assert not any(d.startswith("7:") for d in auto), "loop devices are virtual"
    assert resolve_devices(_spec([{"mount": "/"}])) == ["254:0"]
    assert disk_name("254:0") == "vda"
