"""Load schedules: how HP's request rate and LP's I/O change during one dynamic scenario.

Read by ``run-experiment --scenario dynamic --schedule NAME|FILE`` (through
:func:`load_schedule`) and by ``benchmarks/control_quality.py``. The sim
backend plays a schedule against its plant; the local backend hands it (as
the file :meth:`Schedule.to_document` writes) to its load generator and LP
job, which follow it themselves from a common start; the kubernetes backend
switches the LP Job and the HP rate per phase. A schedule is a list of
phases; each phase holds for its duration (the last one holds after the end):

.. code-block:: yaml

    name: my-day
    description: what it exercises
    phases:
      - {duration: 40s, hp_rate: 200, lp: mixed}
      - {duration: 20s, hp_rate: 0, lp: mixed}          # a quiet spell: no HP traffic at all
      - {duration: 40s, hp_rate: 100, hp_rate_end: 300, lp: read}   # HP ramps linearly
      - {duration: 40s, hp_rate: 200, lp: bursts, burst_on: 5s, burst_off: 10s}

``lp`` is one of ``read`` (every LP worker reads), ``write`` (every worker
writes), ``mixed`` (half and half, the steady scenarios' load), ``idle`` (no
LP I/O) and ``bursts`` (mixed for ``burst_on``, idle for ``burst_off``,
repeating). ``hp_rate`` is HP requests/s (open-loop Poisson); 0 is a quiet
spell. Durations take ``ms``/``s``/``m``. ``name`` names the run's files
(``dynamic-<name>.csv``): letters, digits, ``.``, ``_`` and ``-`` only.

Built-in schedules (:data:`BUILTIN_SCHEDULES`): ``hp-steps``, ``lp-phases``
and ``diurnal`` are the issue's dynamic schedules; ``steady``, ``lp-step``,
``lp-bursts``, ``hp-ramp`` and ``hp-quiet`` are the control-quality
benchmark's plant scenarios, written as schedules so every scenario goes
through the same code.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from experiments.yamlfile import read_yaml

__all__ = [
    "LpMode",
    "Phase",
    "Schedule",
    "ScheduleError",
    "BUILTIN_SCHEDULES",
    "DYNAMIC_SCHEDULES",
    "PLANT_SCHEDULES",
    "load_schedule",
    "parse_schedule",
]

LpMode = Literal["read", "write", "mixed", "idle", "bursts"]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class ScheduleError(ValueError):
    """A schedule file or name is unusable; the message says where and why."""


def _seconds(value: object) -> float:
    from controller.units import parse_duration

    seconds = parse_duration(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


class _PhaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)
    duration: float
    hp_rate: float = Field(ge=0, allow_inf_nan=False, strict=True)  # strict: ``true`` is not 1 request/s
    hp_rate_end: float | None = Field(None, ge=0, allow_inf_nan=False, strict=True)
    lp: LpMode
    burst_on: float = 5.0
    burst_off: float = 10.0

    @field_validator("duration", "burst_on", "burst_off", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v)


class _ScheduleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    phases: list[_PhaseModel] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # The name becomes file and directory names (raw/dynamic-<name>/, dynamic-<name>.csv).
        if not _NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a usable name: 1-63 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (it names the run's files)")
        return v


@dataclass(frozen=True)
class Phase:
    """One phase: HP rate (linear from ``hp_rate`` to ``hp_rate_end``) and LP's mode for ``duration_seconds``."""

    duration_seconds: float
    hp_rate: float
    lp: LpMode
    hp_rate_end: float | None = None
    burst_on_seconds: float = 5.0
    burst_off_seconds: float = 10.0

    def hp_rate_at(self, t: float) -> float:
        """HP requests/s ``t`` seconds into the phase."""
        if self.hp_rate_end is None:
            return self.hp_rate
        frac = min(1.0, max(0.0, t / self.duration_seconds))
        return self.hp_rate + (self.hp_rate_end - self.hp_rate) * frac

    def lp_mode_at(self, t: float) -> LpMode:
        """LP's mode ``t`` seconds into the phase (``bursts`` resolves to ``mixed`` or ``idle``)."""
        if self.lp != "bursts":
            return self.lp
        period = self.burst_on_seconds + self.burst_off_seconds
        return "mixed" if (t % period) < self.burst_on_seconds else "idle"

    @property
    def label(self) -> str:
        """What LP and HP do in the phase, for a table: ``LP bursts (5s on, 10s off), HP 50->300/s``."""
        lp = (f"bursts ({self.burst_on_seconds:g}s on, {self.burst_off_seconds:g}s off)" if self.lp == "bursts"
              else self.lp)
        hp = "quiet" if self.hp_rate == 0 and not self.hp_rate_end else (
            f"{self.hp_rate:g}/s" if self.hp_rate_end is None else f"{self.hp_rate:g}->{self.hp_rate_end:g}/s")
        return f"LP {lp}, HP {hp}"


@dataclass(frozen=True)
class Schedule:
    """A named list of phases (see the module docstring for the YAML form)."""

    name: str
    phases: tuple[Phase, ...]
    description: str = ""

    @property
    def duration_seconds(self) -> float:
        return sum(p.duration_seconds for p in self.phases)

    @property
    def boundaries(self) -> list[float]:
        """Start time (s from the schedule's start) of every phase, the first at 0."""
        out, t = [], 0.0
        for p in self.phases:
            out.append(t)
            t += p.duration_seconds
        return out

    def at(self, t: float) -> tuple[Phase, float]:
        """The phase in force ``t`` seconds into the schedule and the time into it (the last phase holds)."""
        i = self.phase_index_at(t)
        return self.phases[i], t - self.boundaries[i]

    def hp_rate_at(self, t: float) -> float:
        phase, into = self.at(t)
        return phase.hp_rate_at(into)

    def lp_mode_at(self, t: float) -> LpMode:
        phase, into = self.at(t)
        return phase.lp_mode_at(into)

    def phase_index_at(self, t: float) -> int:
        """Index of the phase in force ``t`` seconds into the schedule (the last one after the end)."""
        start = 0.0
        for i, p in enumerate(self.phases):
            start += p.duration_seconds
            if t < start:
                return i
        return len(self.phases) - 1

    def mean_hp_rate(self, until: float | None = None) -> float:
        """Mean HP requests/s over the first ``until`` seconds (default: the whole schedule); ramps are linear."""
        end = self.duration_seconds if until is None else until
        if end <= 0:
            return 0.0
        total, start = 0.0, 0.0
        for p in self.phases:
            if start >= end:
                break
            span = min(p.duration_seconds, end - start)
            total += span * (p.hp_rate_at(0.0) + p.hp_rate_at(span)) / 2
            start += p.duration_seconds
        if end > start:  # the last phase holds after the schedule's end
            total += (end - start) * self.phases[-1].hp_rate_at(self.phases[-1].duration_seconds)
        return total / end

    def segments(self) -> list[tuple[float, float, str]]:
        """(start, end, what) per phase; what = start | lp-step (LP from idle) | hp-return (after quiet) | step."""
        out = []
        bounds = [*self.boundaries, self.duration_seconds]
        for i, p in enumerate(self.phases):
            what = "start"
            if i > 0:
                prev = self.phases[i - 1]
                if prev.lp == "idle" and p.lp != "idle":
                    what = "lp-step"
                elif prev.hp_rate_at(prev.duration_seconds) == 0 and p.hp_rate > 0:
                    what = "hp-return"
                else:
                    what = "step"
            out.append((bounds[i], bounds[i + 1], what))
        return out

    def steps(self) -> list[float]:
        """Times (s) at which the load changes at once: phase starts, and every burst edge."""
        times: set[float] = set()
        for start, p in zip(self.boundaries, self.phases):
            times.add(round(start, 6))
            if p.lp == "bursts":
                t = 0.0
                while t < p.duration_seconds:
                    times.add(round(start + t, 6))
                    if t + p.burst_on_seconds < p.duration_seconds:
                        times.add(round(start + t + p.burst_on_seconds, 6))
                    t += p.burst_on_seconds + p.burst_off_seconds
        return sorted(times)

    @staticmethod
    def from_record(record: dict[str, Any]) -> Schedule:
        """The schedule from its ``dataclasses.asdict`` form (as ``scenario.json`` keeps it)."""
        return Schedule(str(record["name"]), tuple(Phase(**p) for p in record["phases"]),
                        str(record.get("description", "")))

    @property
    def peak_hp_rate(self) -> float:
        """The highest HP rate anywhere in the schedule (ramps are linear, so an end point)."""
        return max(max(p.hp_rate, p.hp_rate_end or 0.0) for p in self.phases)

    @property
    def writes(self) -> bool:
        """True if some phase has LP writing (``write``, ``mixed`` or ``bursts``)."""
        return any(p.lp in ("write", "mixed", "bursts") for p in self.phases)

    def to_document(self) -> dict[str, Any]:
        """The YAML form :func:`parse_schedule` reads, durations in ms to the microsecond.

        The local backend writes it next to a scenario's raw files and passes
        the path to its workload processes, so the file they follow is also
        one a user could hand to ``--schedule``.
        """
        def ms(seconds: float) -> str:
            return f"{seconds * 1000:.3f}ms"

        phases: list[dict[str, Any]] = []
        for p in self.phases:
            phase: dict[str, Any] = {"duration": ms(p.duration_seconds), "hp_rate": p.hp_rate, "lp": p.lp}
            if p.hp_rate_end is not None:
                phase["hp_rate_end"] = p.hp_rate_end
            if p.lp == "bursts":
                phase.update(burst_on=ms(p.burst_on_seconds), burst_off=ms(p.burst_off_seconds))
            phases.append(phase)
        return {"name": self.name, "description": self.description, "phases": phases}

    def until(self, seconds: float) -> Schedule:
        """The schedule's first ``seconds`` (a phase cut short keeps its ramp's slope: it ends at the rate reached)."""
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        phases: list[Phase] = []
        left = seconds
        for p in self.phases:
            if left <= 1e-9:
                break
            take = min(left, p.duration_seconds)
            end_rate = None if p.hp_rate_end is None else p.hp_rate_at(take)
            phases.append(dataclasses.replace(p, duration_seconds=take, hp_rate_end=end_rate))
            left -= take
        return dataclasses.replace(self, phases=tuple(phases))

    def pieces(self, max_seconds: float) -> list[tuple[float, float, Phase]]:
        """(start, end, phase) of every phase cut into consecutive pieces of at most ``max_seconds``."""
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        out = []
        for start, p in zip(self.boundaries, self.phases):
            t, end = start, start + p.duration_seconds
            while t < end - 1e-9:
                out.append((t, min(end, t + max_seconds), p))
                t = out[-1][1]
        return out

    def scaled(self, factor: float) -> Schedule:
        """The same schedule with every duration times ``factor`` (``--quick`` runs)."""
        return Schedule(self.name, tuple(
            Phase(p.duration_seconds * factor, p.hp_rate, p.lp, p.hp_rate_end, p.burst_on_seconds, p.burst_off_seconds)
            for p in self.phases), self.description)


def parse_schedule(raw: Any, *, source: str) -> Schedule:
    """Validate a schedule document; raise :class:`ScheduleError` listing every problem with its location."""
    try:
        model = _ScheduleModel.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ScheduleError(f"{source}: " + "; ".join(problems)) from None
    return Schedule(
        name=model.name,
        description=model.description,
        phases=tuple(Phase(p.duration, p.hp_rate, p.lp, p.hp_rate_end, p.burst_on, p.burst_off) for p in model.phases),
    )


def _builtin(name: str, description: str, *phases: dict[str, Any]) -> Schedule:
    return parse_schedule({"name": name, "description": description, "phases": list(phases)}, source=f"built-in {name}")


#: The issue's dynamic schedules (a few minutes each).
DYNAMIC_SCHEDULES: dict[str, Schedule] = {
    s.name: s for s in (
        _builtin("hp-steps", "HP 100 -> 300 -> 100 requests/s, a quiet spell, then 300 at once; LP mixed throughout",
                 {"duration": "40s", "hp_rate": 100, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 300, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 100, "lp": "mixed"},
                 {"duration": "30s", "hp_rate": 0, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 300, "lp": "mixed"}),
        _builtin("lp-phases", "HP 200 requests/s; LP read-heavy, write-heavy, idle, bursts, mixed",
                 {"duration": "40s", "hp_rate": 200, "lp": "read"},
                 {"duration": "40s", "hp_rate": 200, "lp": "write"},
                 {"duration": "30s", "hp_rate": 200, "lp": "idle"},
                 {"duration": "45s", "hp_rate": 200, "lp": "bursts", "burst_on": "5s", "burst_off": "10s"},
                 {"duration": "40s", "hp_rate": 200, "lp": "mixed"}),
        _builtin("diurnal", "a day in four minutes: night batch (read-heavy), morning ramp, peak, evening "
                            "write-heavy batch, quiet night",
                 {"duration": "30s", "hp_rate": 50, "lp": "read"},
                 {"duration": "40s", "hp_rate": 50, "hp_rate_end": 300, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 300, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 300, "hp_rate_end": 150, "lp": "write"},
                 {"duration": "30s", "hp_rate": 150, "lp": "bursts", "burst_on": "5s", "burst_off": "5s"},
                 {"duration": "20s", "hp_rate": 0, "lp": "read"},
                 {"duration": "40s", "hp_rate": 100, "lp": "read"}),
    )
}

#: The control-quality benchmark's plant scenarios.
PLANT_SCHEDULES: dict[str, Schedule] = {
    s.name: s for s in (
        _builtin("steady", "HP 200 requests/s, LP mixed: the steady scenario",
                 {"duration": "90s", "hp_rate": 200, "lp": "mixed"}),
        _builtin("lp-step", "LP idle, then mixed at full demand at once",
                 {"duration": "30s", "hp_rate": 200, "lp": "idle"},
                 {"duration": "60s", "hp_rate": 200, "lp": "mixed"}),
        _builtin("lp-bursts", "LP mixed 5 s on, 10 s off",
                 {"duration": "90s", "hp_rate": 200, "lp": "bursts", "burst_on": "5s", "burst_off": "10s"}),
        _builtin("hp-ramp", "HP ramps 100 -> 300 requests/s, LP mixed",
                 {"duration": "20s", "hp_rate": 100, "lp": "mixed"},
                 {"duration": "60s", "hp_rate": 100, "hp_rate_end": 300, "lp": "mixed"},
                 {"duration": "20s", "hp_rate": 300, "lp": "mixed"}),
        _builtin("hp-quiet", "HP quiet for 40 s (no traffic), then 300 requests/s at once; LP mixed",
                 {"duration": "30s", "hp_rate": 200, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 0, "lp": "mixed"},
                 {"duration": "40s", "hp_rate": 300, "lp": "mixed"}),
    )
}

BUILTIN_SCHEDULES: dict[str, Schedule] = {**DYNAMIC_SCHEDULES, **PLANT_SCHEDULES}


def load_schedule(name_or_path: str) -> Schedule:
    """A built-in schedule by name, else the YAML file at that path; :class:`ScheduleError` says why not."""
    if name_or_path in BUILTIN_SCHEDULES:
        return BUILTIN_SCHEDULES[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise ScheduleError(f"{name_or_path!r} is neither a built-in schedule ({', '.join(BUILTIN_SCHEDULES)}) "
                            "nor an existing file")
    return parse_schedule(read_yaml(path, ScheduleError, "schedule"), source=str(path))
