"""The writer on a real cgroup v2 kernel: one guest boot runs every v2 check.

``scripts/run-in-v2-kernel.sh`` boots Debian's 6.1 kernel under QEMU/TCG
with this machine's file system read-only, and runs pytest there on the
kernel modules: ``test_kernel_pods.py`` (the reader-in-a-container limit test
that also runs on this host's v1 kernel) and ``test_kernel_v2_node.py`` (the
real ``drcio-writer`` receiving pushes, a push matching nothing, the weight
measurement). One boot for all of them keeps the cost to a few minutes.

Skips, naming the reason, only where the guest cannot run: not root, or
``scripts/setup.sh`` has not installed QEMU, busybox and the kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run-in-v2-kernel.sh"
GUEST_MODULES = ["tests/writer/test_kernel_pods.py", "tests/writer/test_kernel_v2_node.py"]
CACHE = Path(os.environ.get("DRCIO_VM_CACHE", "/var/cache/drcio/v2-kernel"))


def _guest_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("the cgroup v2 guest needs root (it shares the host's whole file system)")
    missing = [name for name in ("qemu-system-x86_64", "busybox") if shutil.which(name) is None]
    if not any(CACHE.glob("*/boot/vmlinuz-*")):
        missing.append(f"an unpacked kernel in {CACHE}")
    if missing:
        pytest.skip(f"no cgroup v2 guest here: {', '.join(missing)} missing; run scripts/setup.sh as root")


def test_the_v2_guest_passes_every_kernel_check() -> None:
    _guest_or_skip()
    pytest_bin = Path(sys.executable).with_name("pytest")
    cmd = [
        str(SCRIPT), "--timeout", "480", "--memory", "1G",
        str(pytest_bin), "-q", "-s", "-rs", "-p", "no:cacheprovider", "--color=no", *GUEST_MODULES,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output[-4000:]
    # Every guest test ran; none skipped (a skip there would mean the guest lacks what it is for).
    assert "skipped" not in output, output[-4000:]
    assert "9 passed" in output, output[-4000:]
    assert "cgroup v2, systemd-containerd-burstable" in output


def test_the_guest_reports_cmds_exit_code_and_a_timeout_leaves_nothing_behind(tmp_path: Path) -> None:
    _guest_or_skip()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    probe = 'grep -qw io /sys/fs/cgroup/cgroup.subtree_control && test -d "$DRCIO_VM_SCRATCH" && test -n "$DRCIO_VM_DISK_DEV" && exit 7'
    done = subprocess.run([str(SCRIPT), "--timeout", "120", "sh", "-c", probe], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 7, done.stdout + done.stderr
    killed = subprocess.run([str(SCRIPT), "--timeout", "8", "sleep", "600"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 124 and "timeout" in killed.stderr
    assert list(tmp_path.iterdir()) == []  # the guest's initramfs and scratch disk are gone
    qemus = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 .*{tmp_path}"], capture_output=True, text=True)
    assert qemus.stdout == ""
