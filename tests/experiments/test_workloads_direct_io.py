"""The shared O_DIRECT helpers, on the real disk."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from experiments.workloads.direct_io import (
    aligned_buffer,
    backing_device,
    check_aligned,
    open_direct,
    pread_exact,
    pwrite_exact,
)
from tests.experiments.test_workloads_support import scratch  # noqa: F401  (fixture)


@pytest.mark.parametrize("size", [0, 100, 4097], ids=["zero", "small", "unaligned"])
def test_an_unaligned_size_is_refused_with_what_it_was(size: int) -> None:
    with pytest.raises(ValueError, match=f"buffer size must be a positive multiple of 4096 bytes.*got {size}$"):
        aligned_buffer(size)


def test_a_direct_write_then_read_round_trips(scratch: Path) -> None:
    path = scratch / "f"
    path.write_bytes(bytes(8192))
    out, back = aligned_buffer(4096), aligned_buffer(4096)
    out.write(bytes(range(256)) * 16)
    fd = open_direct(path, write=True)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        pwrite_exact(fd, out, 4096)
        pread_exact(fd, back, 4096)
    finally:
        os.close(fd)
    assert bytes(back) == bytes(out)


def test_a_read_past_the_end_is_an_error_not_silent_zeros(scratch: Path) -> None:
    path = scratch / "f"
    path.write_bytes(bytes(4096))
    fd = open_direct(path)
    try:
        with pytest.raises(OSError, match="short O_DIRECT read at offset 4096: 0 of 4096 bytes"):
            pread_exact(fd, aligned_buffer(4096), 4096)
    finally:
        os.close(fd)


def _mountinfo_maj_min(path: Path) -> str:
    """MAJ:MIN of the mount holding ``path``, from the kernel's mount table (not from stat, as the code does)."""
    best = ("", "")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best[1]


def test_the_backing_device_is_maj_min_on_a_disk_and_none_on_tmpfs(scratch: Path) -> None:
    if os.major(os.stat(scratch).st_dev) == 0:
        pytest.skip(f"{scratch} is not on a block device here")
    assert backing_device(scratch) == _mountinfo_maj_min(scratch.resolve())
    if not Path("/dev/shm").is_dir() or os.major(os.stat("/dev/shm").st_dev) != 0:
        pytest.skip("no tmpfs at /dev/shm to compare with")
    assert backing_device(Path("/dev/shm")) is None


def test_check_aligned_names_the_value() -> None:
    with pytest.raises(ValueError, match="block size must be a positive multiple of 4096 bytes.*got 1000$"):
        check_aligned(1000, "block size")
