"""The writer on a real cgroup v2 kernel: one guest boot runs every v2 check.

``scripts/run-in-v2-kernel.sh`` boots Debian's 6.1 kernel under QEMU/TCG
with this machine's file system read-only, and runs pytest there on the
kernel modules: ``test_kernel_pods.py`` (the reader-in-a-container limit test
that also runs on this host's v1 kernel) and ``test_kernel_v2_node.py`` (the
real ``drcio-writer`` receiving pushes, a push matching nothing, the weight
measurement). One boot for all of them keeps the cost to a few minutes, and
the boot starts in the background as soon as the run is collected
(``v2_guest.py``, ``conftest.py``), so those minutes overlap the other tests.

Skips, naming the reason, only where the guest cannot run: not root, or
``scripts/setup.sh`` has not installed QEMU, busybox and the kernel.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.writer.v2_guest import SCRIPT, GuestRun, unavailable

pytestmark = pytest.mark.kernel

ROOT = SCRIPT.parents[1]


def test_the_v2_guest_passes_every_kernel_check(v2_guest: GuestRun) -> None:
    returncode, output, seconds = v2_guest.result()
    print(f"{output}\nthe guest finished {seconds:.0f} s after it was started")
    assert returncode == 0, output[-4000:]
    # Every guest test ran; none skipped (a skip there would mean the guest lacks what it is for).
    assert "skipped" not in output, output[-4000:]
    assert "12 passed" in output, output[-4000:]
    assert "cgroup v2, systemd-containerd-burstable" in output


def test_the_guest_reports_cmds_exit_code_and_a_timeout_leaves_nothing_behind(tmp_path: Path) -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    probe = 'grep -qw io /sys/fs/cgroup/cgroup.subtree_control && test -d "$DRCIO_VM_SCRATCH" && test -n "$DRCIO_VM_DISK_DEV" && exit 7'
    # The two boots run side by side (each is one CPU-bound QEMU; the run's main guest has finished by
    # now, the test above waited for it), so they cost the time of the longer one, not both.
    killing = subprocess.Popen([str(SCRIPT), "--timeout", "8", "sleep", "600"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        done = subprocess.run([str(SCRIPT), "--timeout", "120", "sh", "-c", probe], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
        _, killed_stderr = killing.communicate(timeout=60)
    finally:
        if killing.poll() is None:
            killing.kill()
            killing.wait()
    assert done.returncode == 7, done.stdout + done.stderr
    assert killing.returncode == 124 and "timeout" in killed_stderr
    assert list(tmp_path.iterdir()) == []  # the guest's initramfs and scratch disk are gone
    qemus = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 .*{tmp_path}"], capture_output=True, text=True)
    assert qemus.stdout == ""
