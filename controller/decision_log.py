"""The decision log: one JSON line per SLO per tick, the same record ``--once`` prints.

Called by the loop. Each record carries the tick's inputs (status, latency,
request rate, target) and outputs (the SLO's level, the level in force for
its LP group, the concrete targets, policy terms, push results), so a run
can be replayed and audited without Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

__all__ = ["DecisionLog"]


class DecisionLog:
    """Appends JSON lines to a file (flushed per tick), or to an open stream."""

    def __init__(self, path: Path | None = None, *, stream: IO[str] | None = None) -> None:
        if (path is None) == (stream is None):
            raise ValueError("give exactly one of path or stream")
        self._own = stream is None
        self._stream: IO[str] = stream if stream is not None else open(path, "a", encoding="utf-8")  # type: ignore[arg-type]

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._stream.write(json.dumps(record, sort_keys=False, allow_nan=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._own:
            self._stream.close()
