"""Helpers of the real-kernel tests: a data file on a real disk, and a direct-I/O reader in a cgroup.

Used by ``test_kernel.py``, ``test_kernel_pods.py`` (host v1 and v2 guest) and
``test_kernel_v2_node.py`` (v2 guest). The device always comes from the data
file's ``st_dev``, never from a fixed ``254:0`` or ``vda``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from writer.cgroups import Hierarchy, SetupError, detect_hierarchy
from writer.devices import resolve_devices
from writer.groups import move_pid

MiB = 1024 * 1024
LIMIT = 10 * MiB

READER = """
import json, mmap, os, sys, time
path, want = sys.argv[1], int(sys.argv[2])
buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT requires
sys.stdin.readline()  # wait until the parent has moved us into the cgroup
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
start, total = time.monotonic(), 0
while total < want:
    got = os.preadv(fd, [buf], total % (os.fstat(fd).st_size - (1 << 20)))
    if got <= 0:
        break
    total += got
print(json.dumps({"bytes": total, "seconds": time.monotonic() - start}))
"""


def hierarchy_or_skip() -> Hierarchy:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups and move processes")
    try:
        return detect_hierarchy()
    except SetupError as err:
        pytest.skip(f"no cgroup I/O controller here: {err}")


def data_dir(tmp_path: Path) -> Path:
    """Where a test file on a real block device goes: the guest's scratch disk, else pytest's tmp dir."""
    scratch = os.environ.get("DRCIO_VM_SCRATCH")
    if scratch:
        d = Path(scratch) / f"t7-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        return d
    return tmp_path


def make_data_file(directory: Path, mib: int = 32) -> tuple[Path, str]:
    """A file of ``mib`` MiB, flushed to disk, and the whole disk it lives on (from its ``st_dev``)."""
    data = directory / "data.bin"
    with data.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
    st = os.stat(data)
    [device] = resolve_devices([f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"])
    return data, device


def read_rate(h: Hierarchy, group: str, data: Path, nbytes: int) -> float:
    """Run a direct-I/O reader in cgroup ``group`` until it read ``nbytes``; its bytes/s."""
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(data), str(nbytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        move_pid(h, group, proc.pid)
        out, _ = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0
        result = json.loads(out)
        assert result["bytes"] >= nbytes
        return float(result["bytes"] / result["seconds"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
