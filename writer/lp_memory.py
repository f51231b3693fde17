"""The cgroups of the node's LP workloads, kept in a file across the writer's restarts.

The reconciler lifts io.max and the weight from a workload that was LP last
round and is found with another role now (relabelled HP, or its LP role
refused). Kept in memory only, that memory starts empty when the writer
restarts, so a pod relabelled while its node's writer was down kept its
limits. With ``state_file`` set in the writer's config (the DaemonSet puts it
on a hostPath), the set is saved after every round that changes it and read
back at start.

The file is JSON, ``{"lp_cgroups": ["/sys/fs/cgroup/...", ...]}``, written to
a temporary file beside it and renamed over it, so a crash leaves the old
file or the new one, never part of either. It only names cgroups to compare
with what discovery finds: the writer writes to a cgroup because discovery
found its workload with another role, never because the file names it. A
missing file is a first start; an unreadable or malformed one is reported
(with the file and what is wrong) and counts as empty, and the next save
replaces it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["LpMemory"]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lp_cgroups: list[Path]


class LpMemory:
    """Load and save the set of LP cgroup dirs in ``path``; every problem is returned as a message, never raised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: set[Path] | None = None

    def load(self) -> tuple[set[Path], str | None]:
        """The cgroups saved last, and what was wrong with the file (None: nothing, or no file yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return set(), None
        except OSError as err:
            return set(), f"{self.path}: cannot read: {err.strerror}; starting without the LP cgroups of the last run"
        try:
            found = {p for p in _File.model_validate_json(text).lp_cgroups if p.is_absolute()}
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            return set(), (f"{self.path}: not a list of LP cgroups ({where}: {first['msg']}); "
                           "starting without the LP cgroups of the last run")
        self._saved = found
        return set(found), None

    def save(self, cgroups: set[Path]) -> str | None:
        """Write ``cgroups`` unless the file already holds them; what went wrong, or None."""
        if cgroups == self._saved:
            return None
        body = json.dumps({"lp_cgroups": sorted(str(p) for p in cgroups)}, indent=1) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(body)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            return f"{self.path}: cannot save the LP cgroups: {err.strerror}"
        self._saved = set(cgroups)
        return None
