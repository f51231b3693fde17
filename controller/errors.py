"""The controller's exception tree, classified by what the caller should do.

* :class:`ConfigError` — reject the input: the file or arguments are wrong;
  the CLI exits 2 and nothing starts.
* :class:`SensorError` — this reading failed (Prometheus down, timeout, bad
  answer); the loop records ``sensor_error`` for this SLO and carries on.
* :class:`PushError` — one writer could not be served this tick; the others
  are unaffected and the next tick retries.

Library errors (requests, httpx, OSError) are translated into these at the
boundary modules (:mod:`controller.sensor`, :mod:`controller.push`).
"""

from __future__ import annotations

__all__ = ["DrcioError", "ConfigError", "SensorError", "PushError"]


class DrcioError(Exception):
    """Base of everything the controller raises on purpose."""


class ConfigError(DrcioError):
    """The configuration is invalid; ``problems`` lists every error found, each naming where."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


class SensorError(DrcioError):
    """A Prometheus query failed; ``reason`` is a short machine label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class PushError(DrcioError):
    """A push to one writer failed."""
