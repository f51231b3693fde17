"""The cgroup v2 guest of the test run: booted as soon as the run is collected, collected by its test.

``scripts/run-in-v2-kernel.sh`` boots Debian's 6.1 kernel under QEMU/TCG and
runs pytest there on the kernel modules (see ``test_v2_guest.py``). That takes
minutes of one core (measured 2026-11-29: about 6 minutes, most of it Python
importing under emulation), while the rest of the run mostly waits on
Prometheus scrapes, sockets and the disk. So ``tests/writer/conftest.py``
starts the guest in the background when the collected run includes its test,
and the test waits for the result.

The guest's scratch disk and initramfs go to a private directory in
``/dev/shm`` where there is one, so the guest adds no I/O to the host's disk
while other tests measure it. Whatever happens, :meth:`GuestRun.stop` kills
the guest and removes its files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run-in-v2-kernel.sh"
CACHE = Path(os.environ.get("DRCIO_VM_CACHE", "/var/cache/drcio/v2-kernel"))
GUEST_MODULES = ["tests/writer/test_kernel_pods.py", "tests/writer/test_kernel_v2_node.py"]
#: The test that collects the guest's result (the hook in ``tests/writer/conftest.py`` looks for it).
GUEST_TEST = "test_v2_guest.py::test_the_v2_guest_passes_every_kernel_check"
#: pytest plugins the guest modules do not use (cloudcoil is already off in pyproject's addopts).
#: Importing them takes ~3.6 s on the host and most of a minute under TCG: measured 2026-11-29, the
#: whole guest run took 414 s with them and 353 s without.
GUEST_UNUSED_PLUGINS = ("cacheprovider", "hypothesispytest", "schemathesis", "anyio")
#: The guest's own limit (the script kills it after this), and how long the test waits beyond it.
#: Alone the guest took 160-350 s on this host; sharing the two cores with the rest of the run, more.
GUEST_TIMEOUT_SECONDS = 900
WAIT_MARGIN_SECONDS = 60


def unavailable() -> str | None:
    """Why the guest cannot run here, or None."""
    if os.geteuid() != 0:
        return "the cgroup v2 guest needs root (it shares the host's whole file system)"
    missing = [name for name in ("qemu-system-x86_64", "busybox") if shutil.which(name) is None]
    if not any(CACHE.glob("*/boot/vmlinuz-*")):
        missing.append(f"an unpacked kernel in {CACHE}")
    if missing:
        return f"no cgroup v2 guest here: {', '.join(missing)} missing; run scripts/setup.sh as root"
    return None


def command() -> list[str]:
    pytest_bin = Path(sys.executable).with_name("pytest")
    return [
        str(SCRIPT), "--timeout", str(GUEST_TIMEOUT_SECONDS), "--memory", "1G",
        str(pytest_bin), "-q", "-s", "-rs", "--color=no", "--durations=5",
        *(arg for plugin in GUEST_UNUSED_PLUGINS for arg in ("-p", f"no:{plugin}")), *GUEST_MODULES,
    ]


@dataclass
class GuestRun:
    """One guest boot running the kernel modules, its output going to a file."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls) -> GuestRun:
        shm = Path("/dev/shm")
        workdir = Path(tempfile.mkdtemp(prefix="drcio-v2-guest-", dir=shm if os.access(shm, os.W_OK) else None))
        with open(workdir / "output", "wb") as out:
            proc = subprocess.Popen(
                command(), cwd=ROOT, env={**os.environ, "TMPDIR": str(workdir)},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return cls(proc, workdir)

    def result(self) -> tuple[int, str, float]:
        """Wait for the guest: its exit code, its output, and the seconds since it was started."""
        deadline = self.started + GUEST_TIMEOUT_SECONDS + WAIT_MARGIN_SECONDS
        returncode = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        output = (self.workdir / "output").read_text(errors="replace")
        return returncode, output, time.monotonic() - self.started

    def stop(self) -> None:
        """Kill the guest if it still runs (the script's trap kills QEMU and removes its files), then ours."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
