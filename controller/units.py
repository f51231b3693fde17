"""Human units in the SLO file: durations (``ms``/``s``/``m``) and sizes (``K``/``M``/``G`` or ``max``).

Called by :mod:`controller.config` while validating the SLO file. Values come
out in base units (seconds, bytes) so the rest of the controller never
guesses a unit. Sizes are powers of 1024, as in the kernel's and kubelet's
habits (``10M`` = 10 MiB/s for bandwidth).

The writer parses the same notation in its own config module: the writer
may import nothing of ours, and the notation is small enough to state twice.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration", "parse_size", "format_size"]

_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*$")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_duration(value: object) -> float:
    """``"100ms"`` -> 0.1, ``"5s"`` -> 5.0, ``"2m"`` -> 120.0. A bare number is not accepted:
    an SLO without a unit is a bug waiting to happen (is ``100`` seconds or milliseconds?)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration such as '100ms', '5s' or '2m', got {value!r}")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"expected a duration such as '100ms', '5s' or '2m', got {value!r}")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be > 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int | None:
    """``"10M"`` -> 10485760, ``"max"`` -> None (no limit), plain integers are taken as-is."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '10M' or 'max', got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str):
        if value.strip() == "max":
            return None
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"expected a size such as '512K', '10M', '1G' or 'max', got {value!r}")
        number, unit = float(m.group(1)), m.group(2)
    else:
        raise ValueError(f"expected a size such as '10M' or 'max', got {value!r}")
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"size must be > 0, got {value!r}")
    return size


def format_size(value: int | None) -> str:
    """Inverse of :func:`parse_size` for display (``10485760`` -> ``'10M'``)."""
    if value is None:
        return "max"
    for unit in ("T", "G", "M", "K"):
        if value % _SIZE_UNITS[unit] == 0:
            return f"{value // _SIZE_UNITS[unit]}{unit}"
    return str(value)
