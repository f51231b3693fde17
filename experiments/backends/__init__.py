"""Experiment backends: where a scenario's processes run and how its limits are applied.

``run-experiment --backend NAME`` picks one; the scenario runner
(:mod:`experiments.scenarios`) only sees the :class:`Backend` protocol: set
up the shared stack (``with backend:``), run one scenario at a time, and tell
where its Prometheus is. ``local`` (this machine, real cgroups) is the only
backend today; ``sim`` (no root, no cgroups) and ``kubernetes`` come in later
issues, which is what :class:`BackendUnavailable` messages point users to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from experiments.export import SeriesQueries

if TYPE_CHECKING:
    from experiments.scenarios import ScenarioSpec

__all__ = ["Backend", "BackendUnavailable", "ScenarioRun", "Tick", "BACKENDS"]

#: Names accepted by ``--backend``; only these are implemented.
BACKENDS = ("local",)

#: Progress callback: (seconds elapsed in the scenario's measured run, its planned length, status text).
Tick = Callable[[float, float, str], None]


class BackendUnavailable(RuntimeError):
    """This backend cannot run here. ``missing`` says what is missing, ``alternative`` what could run instead."""

    def __init__(self, missing: str, alternative: str) -> None:
        super().__init__(f"{missing}\n{alternative}")
        self.missing = missing
        self.alternative = alternative


@dataclass
class ScenarioRun:
    """What the backend reports after one scenario: its time range and where its raw files are.

    start / end: unix seconds of the measured run (HP load on; LP started at ``start``).
    client_csv: the load generator's per-request CSV.
    notes: facts for the report (limits applied, scheduler, ...).
    """

    name: str
    start: float
    end: float
    client_csv: Path
    raw_dir: Path
    notes: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """What the scenario runner needs from a backend."""

    @property
    def prometheus_url(self) -> str: ...

    @property
    def queries(self) -> SeriesQueries: ...

    def describe(self) -> dict[str, str]:
        """Facts about the environment for the report (host, disk, cgroup version, ...)."""
        ...

    def run_scenario(self, spec: ScenarioSpec, *, target_ms: float, raw_dir: Path, tick: Tick) -> ScenarioRun: ...

    def pause(self, seconds: float, tick: Tick) -> None:
        """Idle between scenarios (host write-back settles)."""
        ...

    def __enter__(self) -> Backend: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
