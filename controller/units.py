"""Human units in the SLO file: durations (``ms``/``s``/``m``) and sizes (``K``/``M``/``G`` or ``max``).

Called by :mod:`controller.config` while validating the SLO file. Values come
out in base units (seconds, bytes) so the rest of the controller never
guesses a unit. Sizes are powers of 1024, as in the kernel's and kubelet's
habits (``10M`` = 10 MiB/s for bandwidth).

The parsers are the writer's (:mod:`writer.api`, the wire contract the
controller may import): one notation, one parser, the same forms accepted in
the SLO file and in the writer file.
"""

from __future__ import annotations

from writer.api import parse_duration, parse_size

__all__ = ["parse_duration", "parse_size", "format_size"]

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def format_size(value: int | None) -> str:
    """Inverse of :func:`parse_size` for display (``10485760`` -> ``'10M'``)."""
    if value is None:
        return "max"
    for unit in ("G", "M", "K"):
        if value % _SIZE_UNITS[unit] == 0:
            return f"{value // _SIZE_UNITS[unit]}{unit}"
    return str(value)
