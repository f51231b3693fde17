"""Scenarios of ``run-experiment``: what each one runs, the SLO it gives the controller, and the run loop.

Called by :mod:`experiments.cli`. Three parts:

* **Plan** (:func:`plan_scenarios`): the list of :class:`ScenarioSpec` for a
  ``--scenario`` choice. ``all`` = baseline, contention, static-max, sweep,
  drcio. With an automatic target a baseline is always planned first, since
  the target is derived from it.
* **SLO per scenario**: :mod:`experiments.slo` (re-exported here): every
  scenario with limits goes through the same controller, so a fixed limit is
  applied exactly as drcio would apply it.
* **Run** (:func:`run_plan`): for each scenario: run it on the backend,
  export its series (``backend.export``), write its files, derive the target
  after the baseline when it is automatic, rewrite summary/plots/report.
  Results are written as each scenario finishes, so an interrupted run keeps
  everything finished before the interrupt.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from experiments.export import write_export
from experiments.model import LOOP_KINDS, Backend, Kind, ScenarioRun, ScenarioSpec, SloWiring
from experiments.schedules import Schedule
from experiments.oracle import Probe, bisect_oracle
from experiments.report import (
    LEVEL_DISAGREEMENT,
    MIB,
    ORACLE_ATTAINMENT,
    SUPERSEDED,
    ScenarioResult,
    TargetChoice,
    auto_target_ms,
    histogram_quantile,
    period_buckets,
    summarize,
    write_report,
)
# Re-exported: callers planned and checked SLOs through this module before the split.
from experiments.slo import SloError, load_base_slo, slo_document, slo_target_text, validate_slo

__all__ = [
    "SCENARIO_CHOICES",
    "Kind",
    "ScenarioSpec",
    "PlanConfig",
    "SloWiring",
    "TargetSetting",
    "RunConfig",
    "ProgressSink",
    "SloError",
    "plan_scenarios",
    "remembered_starts",
    "CLOSING_BASELINE",
    "AFTER_SUFFIX",
    "load_base_slo",
    "slo_document",
    "slo_target_text",
    "validate_slo",
    "read_client_csv",
    "load_results",
    "run_plan",
]

SCENARIO_CHOICES = ("baseline", "contention", "static-max", "static-weight", "sweep", "oracle", "drcio", "dynamic", "all")
_ALL: tuple[Kind, ...] = ("baseline", "contention", "static-max", "sweep", "oracle", "drcio")
#: The second baseline that ends ``all`` and ``dynamic`` runs (see :func:`plan_scenarios`).
CLOSING_BASELINE = "baseline-end"
#: Appended to the name of a ``dynamic`` run's second drcio scenario, run after the oracle's probes
#: (``PlanConfig.drcio_after``).
AFTER_SUFFIX = "-after"


@dataclass(frozen=True)
class PlanConfig:
    """Durations and the sweep's shape.

    duration_seconds: each main scenario's measured run. Default 40 s: with a
        5 s warm-up that leaves about 32 counted one-second intervals per
        scenario (the report also skips the first three); ``all`` (13
        scenarios, the oracle's probes and the closing baseline) took about
        14 minutes on the dev VM with 20 s probes, before they lasted as long
        as drcio's run.
    warmup_seconds: excluded from every figure. Default 5 s = the export and
        SLO window, so the first counted interval sees only this scenario.
    sweep_levels: fixed levels from floor (0) to ceiling (1), equally spaced
        in level = geometric in bandwidth. At least 8 (the issue's frontier).
    sweep_duration_seconds: each sweep step; default half the duration, at
        least 15 s: fixed limits settle in a few seconds.
    drcio_after: ``dynamic`` only: drcio plays the schedule once more after
        the oracle's probes (``dynamic-<schedule>-after``), so that drcio's
        runs bracket the probes in time (drcio, probes, drcio) and the report
        can compare their mean with the oracle on a host that drifts. Default
        off: on a repeatable backend (the simulator) it repeats the first.
    """

    duration_seconds: float = 40.0
    warmup_seconds: float = 5.0
    sweep_levels: int = 8
    sweep_duration_seconds: float | None = None
    schedule: Schedule | None = None
    drcio_after: bool = False

    def __post_init__(self) -> None:
        errors = []
        if not (math.isfinite(self.duration_seconds) and self.duration_seconds > 0):
            errors.append(f"duration must be > 0 seconds, got {self.duration_seconds}")
        if not (math.isfinite(self.warmup_seconds) and self.warmup_seconds >= 0):
            errors.append(f"warm-up must be >= 0 seconds, got {self.warmup_seconds}")
        elif self.warmup_seconds >= min(self.duration_seconds, self.sweep_seconds):
            errors.append(
                f"warm-up ({self.warmup_seconds:g} s) must be shorter than every scenario "
                f"(duration {self.duration_seconds:g} s, sweep steps {self.sweep_seconds:g} s)"
            )
        elif self.schedule is not None and self.warmup_seconds >= self.schedule.duration_seconds:
            # A dynamic run's scenarios last as long as the schedule, whatever --duration says.
            errors.append(
                f"warm-up ({self.warmup_seconds:g} s) must be shorter than the schedule "
                f"({self.schedule.name}: {self.schedule.duration_seconds:g} s); lower --warmup or scale the schedule up"
            )
        if self.sweep_levels < 2:
            errors.append(f"the sweep needs at least 2 levels, got {self.sweep_levels}")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def sweep_seconds(self) -> float:
        if self.sweep_duration_seconds is not None:
            return self.sweep_duration_seconds
        return max(15.0, self.duration_seconds / 2)


def plan_scenarios(choice: str, config: PlanConfig, *, need_baseline: bool = False) -> list[ScenarioSpec]:
    """The scenarios ``--scenario choice`` runs, in order. ``need_baseline`` prepends a baseline if missing.

    ``all`` and ``dynamic`` runs that start with a baseline end with a second
    one (:data:`CLOSING_BASELINE`, HP alone for the same duration): the report
    compares the two to tell whether the host itself changed during the run.
    In a ``dynamic`` run both baselines play the schedule's HP rates with LP
    off (and last as long as the schedule); with ``drcio_after`` drcio runs
    the schedule again after the oracle, before the closing baseline.
    """
    if choice not in SCENARIO_CHOICES:
        raise ValueError(f"unknown scenario {choice!r} (choose from {', '.join(SCENARIO_CHOICES)})")
    kinds: list[Kind] = list(_ALL) if choice == "all" else [choice]  # type: ignore[list-item]
    if choice == "dynamic":
        if config.schedule is None:
            raise ValueError("--scenario dynamic needs --schedule NAME|FILE")
        kinds = ["dynamic", "oracle", "dynamic"] if config.drcio_after else ["dynamic", "oracle"]
    elif config.schedule is not None:
        raise ValueError("--schedule is only for --scenario dynamic")
    if need_baseline and "baseline" not in kinds:
        kinds.insert(0, "baseline")
    d, w = config.duration_seconds, config.warmup_seconds
    # HP alone under the same load: in a dynamic run the baselines play the schedule's HP rates (LP off), so an
    # automatic target is a multiple of what HP alone does under this schedule, not under a steady 200 requests/s
    # (hp-steps' 300 requests/s phases made a target from the steady baseline unmeetable even with LP at its floor).
    hp_alone = config.schedule if choice == "dynamic" else None
    hp_alone_seconds = hp_alone.duration_seconds if hp_alone is not None else d
    specs: list[ScenarioSpec] = []
    for kind in kinds:
        if kind == "sweep":
            n = config.sweep_levels
            specs += [
                ScenarioSpec(f"sweep-{i}", "sweep", config.sweep_seconds, w, lp=True, controlled=True, level=i / (n - 1))
                for i in range(n)
            ]
        elif kind == "baseline":
            specs.append(ScenarioSpec("baseline", kind, hp_alone_seconds, w, lp=False, controlled=False, schedule=hp_alone))
        elif kind == "contention":
            specs.append(ScenarioSpec("contention", kind, d, w, lp=True, controlled=False))
        elif kind == "static-weight":
            specs.append(ScenarioSpec(kind, kind, d, w, lp=True, controlled=True, scheduler="bfq"))
        elif kind == "dynamic":
            assert config.schedule is not None
            again = AFTER_SUFFIX if any(s.kind == "dynamic" for s in specs) else ""
            specs.append(ScenarioSpec(f"dynamic-{config.schedule.name}{again}", kind, config.schedule.duration_seconds,
                                      w, lp=True, controlled=True, schedule=config.schedule))
        elif kind == "oracle":
            # Probes as long as the drcio run they are compared with: the main duration (steady) or the whole
            # schedule (dynamic). Held to the same share of intervals over as many of them: a 20 s probe had 12
            # counted intervals, where 95 % allowed no miss at all, against drcio's one in 32 (2026-12-01).
            length = config.schedule.duration_seconds if config.schedule else d
            specs.append(ScenarioSpec("oracle", kind, length, w, lp=True, controlled=True, schedule=config.schedule))
        else:
            specs.append(ScenarioSpec(kind, kind, d, w, lp=True, controlled=True))
    if choice in ("all", "dynamic") and specs[0].kind == "baseline":
        # HP alone once more at the end: the report compares it with the first baseline, since a run this long
        # outlasts the host's own drift (HP alone measured 2-4x apart within 20 minutes on the dev VM).
        specs.append(ScenarioSpec(CLOSING_BASELINE, "baseline", hp_alone_seconds, w, lp=False, controlled=False,
                                  schedule=hp_alone))
    return specs


def _ended_at(decisions: Path) -> float:
    """The LP group's level in force after the last tick of the decision log ``decisions`` (its last record)."""
    try:
        lines = decisions.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"{decisions}: cannot read it ({exc.strerror})") from None
    last = next((line for line in reversed(lines) if line.strip()), None)
    if last is None:
        raise ValueError(f"{decisions}: empty, the loop made no decision there")
    try:
        level = json.loads(last)["group_level"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{decisions}: its last line is not a decision record with a group_level") from None
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0:
        raise ValueError(f"{decisions}: its last group_level is {level!r}, not a level in [0, 1]")
    return float(level)


def remembered_starts(plan: Sequence[ScenarioSpec], earlier: Path) -> list[ScenarioSpec]:
    """``plan`` with every loop scenario (drcio, dynamic) starting where its loop ended in the run in ``earlier``.

    ``earlier`` is an earlier run's output directory; a scenario's level is the
    one in force after the last tick of ``raw/<name>/decisions.jsonl`` there (a
    dynamic run's second drcio scenario, ``<name>-after``, falls back to the
    first's). That is where a deployed controller, which resumes from the
    level its writers hold, would have left it. Raises ``ValueError`` naming
    what is missing or malformed; nothing has run then.
    """
    out = []
    for spec in plan:
        if spec.kind in LOOP_KINDS:
            logs = (earlier / "raw" / n / "decisions.jsonl" for n in (spec.name, spec.name.removesuffix(AFTER_SUFFIX)))
            found = next((log for log in logs if log.exists()), None)
            if found is None:
                raise ValueError(f"{earlier}: no raw/{spec.name}/decisions.jsonl; run the same scenario with "
                                 f"--output {earlier} first")
            spec = dataclasses.replace(spec, start_level=_ended_at(found))
        out.append(spec)
    return out


# --------------------------------------------------------------------------- run loop


@dataclass(frozen=True)
class TargetSetting:
    """``target_ms`` given (with ``how``), or None = derive ``multiple`` x the baseline P95."""

    target_ms: float | None
    how: str
    multiple: float = 2.0


@dataclass
class RunConfig:
    output: Path
    target: TargetSetting
    pause_seconds: float = 5.0
    run_info: dict[str, str] = field(default_factory=dict)
    #: The oracle's bisection stops once the met / missed bracket's LP throughputs differ by at most this.
    oracle_tolerance: float = 0.05
    #: ... or after this many probes (each a whole scenario: on the local backend, for a dynamic schedule,
    #: the whole schedule in real time); the bracket it reached is reported as the oracle's uncertainty.
    oracle_max_probes: int = 14
    #: Rewrite plots and report after every scenario (an interrupted real run keeps them); the simulator,
    #: whose scenarios take milliseconds, writes them once at the end.
    report_each_scenario: bool = True


class ProgressSink(Protocol):
    """Where the run loop reports progress (the CLI renders it with rich)."""

    def scenario_started(self, index: int, total: int, spec: ScenarioSpec) -> None: ...

    def tick(self, elapsed: float, total: float, status: str) -> None: ...

    def scenario_finished(self, spec: ScenarioSpec, row: dict[str, object] | None) -> None: ...

    def message(self, text: str) -> None: ...


def read_client_csv(path: Path, start: float) -> pd.DataFrame:
    """The load generator's CSV as (timestamp, latency_ms, ok); ``sent_s`` is relative to its own start.

    Every request scheduled is a row: one dropped at the in-flight cap (never
    sent) is stamped with its scheduled time, without a latency and not ok, so
    that overload shows in the client's request and error counts.
    The local backend starts the load generator with a signal sent just after
    it takes ``start``, so its timestamps are early by that delivery time
    (milliseconds); the simulator's are exact.
    """
    if not path.exists():
        return pd.DataFrame({"timestamp": pd.Series(dtype="float64"), "latency_ms": pd.Series(dtype="float64"),
                             "ok": pd.Series(dtype="bool")})
    raw = pd.read_csv(path)
    return pd.DataFrame({
        "timestamp": start + raw["sent_s"].fillna(raw["scheduled_s"]).astype(float),
        "latency_ms": 1000.0 * raw["latency_s"].astype(float),
        "ok": raw["outcome"].astype(str).eq("ok"),
    }).reset_index(drop=True)


def _result_from_files(output: Path, meta: dict[str, Any]) -> ScenarioResult:
    name = meta["name"]
    raw = output / "raw" / name
    series = pd.read_csv(output / f"{name}.csv")
    histogram = pd.read_csv(raw / "histogram.csv")
    client = read_client_csv(raw / "client.csv", float(meta["start"]))
    record = meta.get("schedule")
    schedule = Schedule.from_record(record) if record else None
    steps = schedule.segments() if schedule else [(0.0, float(meta["duration_seconds"]), "start")]
    return ScenarioResult(name=name, kind=meta["kind"], series=series, histogram=histogram, client=client,
                          warmup_seconds=float(meta["warmup_seconds"]), lp=bool(meta["lp"]), level=meta.get("level"),
                          notes={str(k): str(v) for k, v in (meta.get("notes") or {}).items()}, steps=steps,
                          schedule=schedule)


def load_results(output: Path) -> tuple[list[ScenarioResult], TargetChoice | None, dict[str, str]]:
    """Read back the scenarios an earlier run wrote into ``output`` (for ``--report-only``)."""
    results = []
    for meta_path in sorted((output / "raw").glob("*/scenario.json")):
        results.append(_result_from_files(output, json.loads(meta_path.read_text())))
    run_path = output / "run.json"
    target, info = None, {}
    if run_path.exists():
        run = json.loads(run_path.read_text())
        info = run.get("run_info", {})
        if run.get("target_ms") is not None:
            target = TargetChoice(float(run["target_ms"]), str(run["target_how"]))
    return results, target, info


def _baseline_p95_ms(result: ScenarioResult) -> tuple[float, list[float]]:
    start = float(result.series["timestamp"].min()) + result.warmup_seconds
    buckets = period_buckets(result.histogram, start, float(result.series["timestamp"].max()))
    edges = [float(le) for le in buckets.index]
    return 1000.0 * histogram_quantile(0.95, buckets) if not buckets.empty else math.nan, edges


def _write_run_json(config: RunConfig, target: TargetChoice | None, plan: Sequence[ScenarioSpec]) -> None:
    config.output.mkdir(parents=True, exist_ok=True)
    (config.output / "run.json").write_text(json.dumps({
        "run_info": config.run_info,
        "target_ms": None if target is None else target.target_ms,
        "target_how": None if target is None else target.how,
        "plan": [asdict(s) for s in plan],
    }, indent=2))


def _finite_or_null(value: Any) -> Any:
    """``value`` with every infinite or NaN float, however deep in dicts and lists, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _probe_spec(spec: ScenarioSpec, index: int, level: float) -> ScenarioSpec:
    return ScenarioSpec(f"oracle-{index}", "probe", spec.duration_seconds, spec.warmup_seconds, lp=True,
                        controlled=True, level=round(level, 6), schedule=spec.schedule)


def _supersede(out: Path, results: list[ScenarioResult], level: float | None) -> None:
    """Mark the probes already run at ``level`` superseded, in ``results`` and in their ``scenario.json``.

    The bisection probes a level twice only to rerun a probe that disagreed
    with a higher level's (:func:`experiments.oracle.bisect_oracle`'s
    ``recheck_gap``): the later run stands, the earlier stays in the report.
    """
    for i, r in enumerate(results):
        if r.kind == "probe" and r.level == level:
            results[i] = dataclasses.replace(r, kind=SUPERSEDED)
            meta_path = out / "raw" / r.name / "scenario.json"
            meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "kind": SUPERSEDED}, indent=2))


def run_plan(plan: Sequence[ScenarioSpec], backend: Backend, config: RunConfig, progress: ProgressSink) -> pd.DataFrame | None:
    """Run every scenario of ``plan`` on ``backend`` (already entered); returns the final summary.

    Each scenario's outputs are written as soon as it finishes; on an
    exception the report is rewritten with what finished and the exception
    propagates (the backend's ``__exit__`` cleans up). An ``oracle`` spec runs
    as a bisection (:func:`experiments.oracle.bisect_oracle`): fixed-level
    probes ``oracle-1``, ``oracle-2``, ... until the best fixed level's LP
    throughput is pinned within ``PlanConfig``'s tolerance; a probe meets the
    SLO when its attainment reaches :data:`experiments.report.ORACLE_ATTAINMENT`.
    A probe that misses it by more than :data:`experiments.report.LEVEL_DISAGREEMENT`
    below a higher level's attainment (the host stalled during it) is run
    again, and the first run is kept as kind ``superseded``; not on a
    ``repeatable`` backend, where the rerun would repeat the first run.
    """
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    target: TargetChoice | None = (
        TargetChoice(config.target.target_ms, config.target.how) if config.target.target_ms is not None else None
    )
    _write_run_json(config, target, plan)
    results: list[ScenarioResult] = []
    summary: pd.DataFrame | None = None
    done: list[str] = []
    count = 0

    def run_one(spec: ScenarioSpec, index: int, total: int, pending: list[str]) -> dict[str, object] | None:
        nonlocal target, summary, count
        if count > 0 and config.pause_seconds > 0:
            progress.message(f"pausing {config.pause_seconds:g} s (host write-back settles)")
            backend.pause(config.pause_seconds, progress.tick)
        count += 1
        progress.scenario_started(index, total, spec)
        if spec.controlled and target is None:
            raise RuntimeError(f"scenario {spec.name} needs an SLO target, but none is known yet")
        raw = out / "raw" / spec.name
        raw.mkdir(parents=True, exist_ok=True)
        run: ScenarioRun = backend.run_scenario(
            spec, target_ms=target.target_ms if target else math.nan, raw_dir=raw, tick=progress.tick
        )
        progress.tick(spec.duration_seconds, spec.duration_seconds, "exporting the series")
        export = backend.export(run)
        write_export(export, out / f"{spec.name}.csv", raw / "histogram.csv")
        meta = {**asdict(spec), "start": export.start, "end": export.end, "notes": run.notes}
        (raw / "scenario.json").write_text(json.dumps(meta, indent=2))
        result = _result_from_files(out, meta)
        results.append(result)
        done.append(spec.name)
        if spec.kind == "baseline" and target is None:
            p95, edges = _baseline_p95_ms(result)
            value = auto_target_ms(p95, config.target.multiple, edges)
            target = TargetChoice(value, f"auto: {config.target.multiple:g} x the baseline's measured P95 "
                                         f"({p95:.3f} ms), rounded up to the next histogram bucket edge")
            progress.message(f"SLO target {value:g} ms ({target.how})")
            _write_run_json(config, target, plan)
        known = target or TargetChoice(math.nan, "not yet known")
        if config.report_each_scenario:
            summary = write_report(out, results, known, run_info=config.run_info, pending=pending)
        else:
            summary = summarize(results, known)
        row = summary[summary["scenario"] == spec.name]
        found = row.iloc[0].to_dict() if not row.empty else None
        progress.scenario_finished(spec, found)
        return found

    try:
        for index, spec in enumerate(plan):
            later = [s.name for s in plan[index + 1:]]
            if spec.kind != "oracle":
                run_one(spec, index + 1, len(plan), later)
                continue

            def probe(level: float, spec: ScenarioSpec = spec, index: int = index, later: list[str] = later) -> Probe:
                number = sum(1 for r in results if r.kind in ("probe", SUPERSEDED)) + 1
                probe_spec = _probe_spec(spec, number, level)
                _supersede(out, results, probe_spec.level)
                row = run_one(probe_spec, index + 1, len(plan), later) or {}
                attainment = float(row.get("slo_attainment", math.nan))  # type: ignore[arg-type]
                lp = float(row.get("lp_mbps", 0.0)) * MIB  # type: ignore[arg-type]
                return Probe(level, lp, attainment >= ORACLE_ATTAINMENT,
                             attainment if math.isfinite(attainment) else None)

            found = bisect_oracle(probe, tolerance=config.oracle_tolerance, max_probes=config.oracle_max_probes,
                                  recheck_gap=None if backend.repeatable else LEVEL_DISAGREEMENT)
            progress.message(f"oracle: {found.describe()}")
            # Strict JSON: an unbounded uncertainty (no level met, or none missed) is null, not Infinity, and so
            # is a probe's LP when its series was missing (NaN).
            found_record = _finite_or_null(asdict(found))
            (out / "oracle.json").write_text(json.dumps({**found_record, "scenario": spec.name,
                                                         "tolerance": config.oracle_tolerance,
                                                         "max_probes": config.oracle_max_probes,
                                                         "meets": f"attainment >= {ORACLE_ATTAINMENT:g}"},
                                                        indent=2, allow_nan=False))
        if not config.report_each_scenario and results:
            summary = write_report(out, results, target or TargetChoice(math.nan, "not yet known"),
                                   run_info=config.run_info)
    except BaseException:
        if results:
            summary = write_report(out, results, target or TargetChoice(math.nan, "not yet known"),
                                   run_info=config.run_info, pending=[s.name for s in plan if s.name not in done])
        raise
    return summary
