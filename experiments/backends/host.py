"""Facts about the host the local backend reads or sets: pressure stall information and the block scheduler.

Used by :mod:`experiments.backends.local`. Both take their root as an argument
(``/proc``, ``/sys``) so tests run on a made-up tree. Neither file is a
cgroup file, so the experiment may read and write them itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from experiments.model import BackendUnavailable

__all__ = ["pressure_totals", "pressure_notes", "SchedulerSwitch"]


def pressure_totals(proc_root: Path = Path("/proc")) -> dict[str, float]:
    """Cumulative seconds in which some task waited for I/O / CPU (PSI ``some total``); {} without PSI."""
    totals: dict[str, float] = {}
    for resource in ("io", "cpu"):
        try:
            text = (proc_root / "pressure" / resource).read_text()
        except OSError:
            continue
        match = re.search(r"^some .*total=(\d+)", text, re.MULTILINE)
        if match:
            totals[resource] = int(match.group(1)) / 1e6
    return totals


def pressure_notes(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, str]:
    """Share of the scenario's wall time with some task stalled, per resource, as notes for the report.

    It includes the experiment's own processes (LP stalls on its limit), so
    it is a witness, not a measurement: a baseline with high I/O pressure
    means something else used the disk during the run.
    """
    return {f"{r}_pressure_pct": f"{100.0 * (after[r] - before[r]) / seconds:.1f}"
            for r in before if r in after and seconds > 0}


@dataclass
class SchedulerSwitch:
    """Switch one disk's block scheduler and put the previous one back.

    The scheduler file is not a cgroup file, so the experiment may write it.
    """

    disk: str
    sys_root: Path = Path("/sys")
    previous: str | None = None

    @property
    def path(self) -> Path:
        return self.sys_root / "block" / self.disk / "queue" / "scheduler"

    def available(self) -> list[str]:
        try:
            return self.path.read_text().replace("[", "").replace("]", "").split()
        except OSError:
            return []

    def active(self) -> str | None:
        try:
            match = re.search(r"\[([^\]]+)\]", self.path.read_text())
        except OSError:
            return None
        return match.group(1) if match else None

    def switch(self, scheduler: str) -> None:
        if scheduler not in self.available():
            raise BackendUnavailable(
                f"the block scheduler {scheduler!r} is not available for {self.disk} ({self.path} lists "
                f"{', '.join(self.available()) or 'nothing'}); try `modprobe {scheduler}`",
                "Run the scenarios that do not need it (all but static-weight).",
            )
        current = self.active()
        if current == scheduler:
            return
        if self.previous is None:
            self.previous = current
        self.path.write_text(scheduler)

    def restore(self) -> None:
        if self.previous is not None and self.active() != self.previous:
            self.path.write_text(self.previous)
        self.previous = None
