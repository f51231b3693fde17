"""The one ``/proc/self/mountinfo`` parser of drcio.

Called by :mod:`writer.cgroups` (which hierarchy carries the I/O controller)
and :mod:`writer.devices` (which block device backs a mount path). A line is
``id parent MAJ:MIN root mount-point options [optional fields...] - fstype
source super-options`` (proc(5)); paths escape space, tab, newline and
backslash as octal (``\\040``), which is undone here, once, for both callers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["MountEntry", "parse_line", "entries", "unescape"]

_OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One mount, with its paths unescaped."""

    majmin: str
    root: str
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` -> space)."""
    return _OCTAL_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_line(line: str) -> MountEntry | None:
    """One mountinfo line, or ``None`` when it is not one (the caller decides whether that is an error)."""
    fields = line.split()
    try:
        sep = fields.index("-")
    except ValueError:
        return None
    if sep < 6 or len(fields) < sep + 3:
        return None
    return MountEntry(
        majmin=fields[2],
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        fstype=fields[sep + 1],
        source=unescape(fields[sep + 2]),
        super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
    )


def entries(text: str) -> Iterator[tuple[int, str, MountEntry | None]]:
    """``(line number, line, entry or None)`` for every non-empty line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line, parse_line(line)
