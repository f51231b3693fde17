"""The experiment's shared vocabulary: what a scenario is, what a backend must do, what a run returns.

Both sides of ``run-experiment`` use this module and nothing else of each
other: the scenario runner (:mod:`experiments.scenarios`) plans
:class:`ScenarioSpec` values and drives any :class:`Backend`; every backend
(:mod:`experiments.backends.local`, ``sim``, ``kubernetes``) runs one spec at a
time and hands back a :class:`ScenarioRun` plus its exported series. Keeping
these types here (and not in either side) is what keeps the import graph a
tree: ``scenarios`` and ``backends`` are siblings that never import each other
(checked by the import-linter layers contract in ``pyproject.toml``).

The Backend contract, in the order the runner calls it:

1. ``with backend:`` builds the shared stack once (processes, Prometheus, a
   simulated plant ...) and tears everything down on every exit path.
   ``describe()`` may be called inside, for the report's environment facts.
2. Per scenario: ``run_scenario(spec, target_ms=..., raw_dir=..., tick=...)``
   runs it (``tick`` reports progress), writes its raw files (the HP client's
   per-request CSV, logs, ``slo.yaml``, ``decisions.jsonl`` when a controller
   ran) into ``raw_dir`` and returns the measured time range. Then
   ``export(run)`` returns the scenario's series and histogram frames with the
   columns of :mod:`experiments.export` (``local`` queries its Prometheus;
   ``sim`` computes the same frames from its model of the measurement path).
3. ``pause(seconds, tick)`` between scenarios.

A backend that cannot run on this machine raises :class:`BackendUnavailable`
(from its prerequisite check or from ``__enter__``) saying what is missing
and what could run instead; the CLI prints both and exits 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from experiments.export import Export
from experiments.schedules import Schedule

__all__ = [
    "Kind",
    "LOOP_KINDS",
    "ScenarioSpec",
    "ScenarioRun",
    "SloWiring",
    "Tick",
    "Backend",
    "BackendUnavailable",
    "LP_GROUP",
    "LP_SELECTOR",
    "load_facts",
]

Kind = Literal["baseline", "contention", "static-max", "static-weight", "sweep", "drcio", "dynamic", "oracle", "probe"]
#: The kinds that run the closed loop (the SLO's own policy), not a fixed limit or none.
LOOP_KINDS: tuple[Kind, ...] = ("drcio", "dynamic")

#: The LP group's name on the wire and in metrics, and its selector.
LP_GROUP = "lp"
LP_SELECTOR = {"group-id": "lp"}

#: Progress callback: (seconds elapsed in the scenario's measured run, its planned length, status text).
Tick = Callable[[float, float, str], None]


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario to run.

    lp: the LP batch job runs. controlled: the controller and the writer run
    (limits or weights are applied). level: a sweep step's fixed level.
    scheduler: the block scheduler the scenario needs (``bfq``), restored after.
    schedule: the load schedule of a dynamic scenario (and of the oracle's
        probes and the baselines of its run; without LP, only its HP rates
        apply); None = steady load for ``duration_seconds``.
    start_level: the level a loop scenario's controller starts at (the one an
        earlier run's loop ended at: ``run-experiment --start-from``); None =
        the fail-safe level.
    """

    name: str
    kind: Kind
    duration_seconds: float
    warmup_seconds: float
    lp: bool
    controlled: bool
    level: float | None = None
    scheduler: str | None = None
    schedule: Schedule | None = None
    start_level: float | None = None


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


@dataclass(frozen=True)
class SloWiring:
    """What the backend fills into every SLO it hands the controller."""

    prometheus_url: str
    writer_url: str
    token_file: Path
    hp_job: str
    devices: Any  # "auto" | list of "MAJ:MIN" | {mount: path}


def load_facts(hp: str, lp: str, schedule_name: str | None) -> tuple[str, str]:
    """A backend's "HP load" and "LP job" facts for the report: with a schedule planned, they name it.

    A schedule is planned only by a dynamic run, and then every scenario of the
    run follows it (the baselines its HP rates, with LP off), so the steady
    ``hp`` rate and ``lp`` mode are not used.
    """
    if schedule_name is None:
        return hp, lp
    return (f"the rates of the schedule {schedule_name} in every scenario of this run (the baselines too), "
            "open loop (Poisson)",
            f"the LP phases of the schedule {schedule_name}")


class BackendUnavailable(RuntimeError):
    """This backend cannot run here. ``missing`` says what is missing, ``alternative`` what could run instead."""

    def __init__(self, missing: str, alternative: str) -> None:
        super().__init__(f"{missing}\n{alternative}")
        self.missing = missing
        self.alternative = alternative


class Backend(Protocol):
    """What the scenario runner needs from a backend (see the module docstring for the call order)."""

    #: A scenario run twice gives the same result (a seeded model drawing the same random numbers every
    #: run). The oracle's bisection then never reruns a probe to undo a host stall: a rerun would repeat it.
    repeatable: bool

    def describe(self) -> dict[str, str]:
        """Facts about the environment for the report (host, disk, cgroup version, ...)."""
        ...

    def run_scenario(self, spec: ScenarioSpec, *, target_ms: float, raw_dir: Path, tick: Tick) -> ScenarioRun:
        """Run ``spec`` (with the SLO target ``target_ms``; NaN while unknown) and write its raw files."""
        ...

    def export(self, run: ScenarioRun) -> Export:
        """The series and histogram frames of ``run``'s time range (columns of :mod:`experiments.export`)."""
        ...

    def pause(self, seconds: float, tick: Tick) -> None:
        """Idle between scenarios (host write-back settles)."""
        ...

    def __enter__(self) -> Backend: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
