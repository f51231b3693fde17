"""Small O_DIRECT helpers shared by the experiment workloads.

Used by :mod:`experiments.workloads.featurestore` (the HP service's 4 KiB feature
reads) and :mod:`experiments.workloads.lp_batch` (the LP job's large reads and
writes). Both bypass the page cache on purpose: a cached read never reaches the
disk, so it would hide exactly the contention the experiment is about.

O_DIRECT wants the buffer address, the file offset and the length aligned to
the logical block size; 4 KiB covers every disk we run on. Anonymous ``mmap``
memory is page-aligned, so it is the buffer. Python releases the GIL inside
``os.preadv``/``os.pwritev``, so threads calling these give real I/O depth.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = [
    "ALIGNMENT_BYTES",
    "DirectIOUnsupported",
    "aligned_buffer",
    "backing_device",
    "check_aligned",
    "is_fully_written",
    "open_direct",
    "pread_exact",
    "pwrite_exact",
]

ALIGNMENT_BYTES = 4096
"""Alignment of buffers, offsets and lengths for O_DIRECT (the page size; a
multiple of any logical block size we meet)."""


class DirectIOUnsupported(RuntimeError):
    """The file system refuses O_DIRECT (older tmpfs, some FUSE file systems); the data dir must live on a disk."""


def check_aligned(value: int, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``value`` is a positive multiple of 4 KiB."""
    if value <= 0 or value % ALIGNMENT_BYTES:
        raise ValueError(f"{what} must be a positive multiple of {ALIGNMENT_BYTES} bytes for O_DIRECT, got {value}")


def aligned_buffer(size_bytes: int) -> mmap.mmap:
    """A zeroed, page-aligned buffer of ``size_bytes`` usable for O_DIRECT."""
    check_aligned(size_bytes, "buffer size")
    return mmap.mmap(-1, size_bytes)


def open_direct(path: Path, *, write: bool = False) -> int:
    """Open ``path`` with O_DIRECT (read-only, or read-write); the caller closes the fd."""
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as e:
        if e.errno == 22:  # EINVAL: the file system has no O_DIRECT
            raise DirectIOUnsupported(
                f"{path}: the file system does not support O_DIRECT; put the data dir on a disk-backed "
                "file system such as ext4 or xfs"
            ) from e
        raise


def pread_exact(fd: int, buf: mmap.mmap, offset: int) -> None:
    """Fill ``buf`` from ``offset``; a short read (file too small) is an error, not silent zeros."""
    n = os.preadv(fd, [buf], offset)
    if n != len(buf):
        raise OSError(f"short O_DIRECT read at offset {offset}: {n} of {len(buf)} bytes")


def pwrite_exact(fd: int, buf: mmap.mmap, offset: int) -> None:
    """Write all of ``buf`` at ``offset``."""
    n = os.pwritev(fd, [buf], offset)
    if n != len(buf):
        raise OSError(f"short O_DIRECT write at offset {offset}: {n} of {len(buf)} bytes")


def is_fully_written(path: Path, size_bytes: int) -> bool:
    """True if ``path`` has exactly ``size_bytes`` and every block is allocated.

    A sparse file has the right size but holes; writing into those later makes
    the file system allocate and journal on the side (outside the writer's
    cgroup), so such a file does not count. (``fallocate``d unwritten extents
    look allocated here; callers keep a completion marker for that case.)
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_size == size_bytes and st.st_blocks * 512 >= size_bytes


def backing_device(path: Path) -> str | None:
    """``MAJ:MIN`` of the block device holding ``path``, or None on a device-less file system.

    tmpfs, overlay and the like have major 0: on those even O_DIRECT reads never
    reach a disk, so the workloads warn (the experiment would measure nothing).
    """
    dev = path.stat().st_dev
    return None if os.major(dev) == 0 else f"{os.major(dev)}:{os.minor(dev)}"
