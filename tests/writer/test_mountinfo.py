"""One mountinfo parser for both readers of /proc/self/mountinfo (issue 9): the cgroup
hierarchy detection and the mount -> device resolution see the same paths."""

from __future__ import annotations

from pathlib import Path

from tests.writer.fake_trees import FakeSysfs, mountinfo_line
from writer.api import MountRef
from writer.cgroups import Hierarchy, detect_hierarchy
from writer.devices import resolve_devices
from writer.mountinfo import parse_line

# A line as this machine's kernel writes it (cat /proc/self/mountinfo), with a shared: optional field.
REAL_LINE = "35 26 0:30 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,blkio"


def test_a_real_line_parses_into_its_fields() -> None:
    entry = parse_line(REAL_LINE)
    assert entry is not None
    assert (entry.majmin, entry.mount_point, entry.fstype, entry.source) == ("0:30", "/sys/fs/cgroup/blkio", "cgroup", "cgroup")
    assert "blkio" in entry.super_options
    assert parse_line("garbage") is None


def test_both_readers_undo_the_same_escapes(tmp_path: Path) -> None:
    # A backslash (\134) and a tab (\011) in a mount point: the hierarchy detection used to undo only \040.
    mi = tmp_path / "proc" / "self" / "mountinfo"
    mi.parent.mkdir(parents=True)
    mi.write_text(
        "35 26 0:30 / /sys/fs/cgroup/blk\\134io\\011x rw shared:15 - cgroup cgroup rw,blkio\n"
        + mountinfo_line(20, "254:1", r"/mnt/a\134b", "ext4", "/dev/vda1")
        + "\n"
    )
    assert detect_hierarchy(mountinfo=mi) == Hierarchy(1, Path("/sys/fs/cgroup/blk\\io\tx"))
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.add_disk("vda", "254:0")
    sysfs.add_partition("vda", "vda1", "254:1")
    devices: list[str | MountRef] = [MountRef(mount="/mnt/a\\b/data")]
    assert resolve_devices(devices, proc_root=tmp_path / "proc", sys_root=tmp_path / "sys") == ["254:0"]
