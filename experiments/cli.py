"""The ``run-experiment`` and ``export-metrics`` commands.

Thin by design: parse and check the options, build the plan and the backend,
call :func:`experiments.scenarios.run_plan` with a rich progress display, and
turn failures into readable messages and exit codes: 0 done, 2 bad options or
this machine cannot run the backend (the message says what is missing and
what could run instead), 1 a failure while running, 130 interrupted (Ctrl-C
or SIGTERM; every process, cgroup and temp dir is cleaned up and the results
of finished scenarios are kept).
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import signal
import tempfile
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from experiments.backends import BACKENDS
from experiments.export import ExportError, SeriesQueries, export_range, write_export
from experiments.model import LOOP_KINDS, BackendUnavailable, ScenarioSpec, SloWiring
from experiments.report import HOST_DRIFT_FACTOR, LEVEL_DISAGREEMENT, write_report
from experiments.schedules import Schedule
from experiments.scenarios import (
    SCENARIO_CHOICES,
    PlanConfig,
    RunConfig,
    TargetSetting,
    load_results,
    plan_scenarios,
    remembered_starts,
    run_plan,
)
from experiments.slo import SloError, load_base_slo, slo_document, slo_target_text, validate_slo

__all__ = ["main", "export_main", "run_experiment", "export_metrics"]

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Files a run writes at the top of its output dir; a rerun into the same dir replaces exactly these.
_OUTPUT_GLOBS = ("run.json", "summary.csv", "report.md", "oracle.json", "*.png", "*.csv")


class RichProgress:
    """Renders the run loop's progress: overall bar, current scenario i/n with elapsed and remaining time."""

    def __init__(self, console: Console, total_seconds: float) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("left"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.total_task: TaskID = self.progress.add_task("[bold]all scenarios", total=total_seconds)
        self.task: TaskID | None = None
        self._done_seconds = 0.0
        self._label = ""
        self._pause_seconds = 0.0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def scenario_started(self, index: int, total: int, spec: ScenarioSpec) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self._done_seconds += self._pause_seconds
        self._pause_seconds = 0.0
        self._label = f"[{index}/{total}] {spec.name}"
        self.task = self.progress.add_task(self._label, total=spec.duration_seconds)

    def tick(self, elapsed: float, total: float, status: str) -> None:
        if status == "pause":
            self._pause_seconds = total
        elif self.task is not None:
            self.progress.update(self.task, completed=elapsed, description=f"{self._label}: {status}")
        self.progress.update(self.total_task, completed=self._done_seconds + min(elapsed, total))

    def scenario_finished(self, spec: ScenarioSpec, row: dict[str, object] | None) -> None:
        self._done_seconds += spec.duration_seconds
        if row is not None:
            self.console.print(
                f"  {spec.name}: P95 {_num(row.get('p95_ms'))} ms (client {_num(row.get('client_p95_ms'))} ms), "
                f"LP {_num(row.get('lp_mbps'))} MiB/s, SLO met in {_pct(row.get('slo_attainment'))} of intervals"
            )

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")


def _num(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) and not math.isnan(value) else "–"


def _pct(value: object) -> str:
    return f"{value:.0%}" if isinstance(value, float) and not math.isnan(value) else "–"


class _Interrupts:
    """SIGINT/SIGTERM -> KeyboardInterrupt once; later signals while cleaning up only print a note.

    Without this a second Ctrl-C would abort the clean-up and leave cgroups
    and processes behind.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.fired = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:
            self.console.print("[yellow]still cleaning up (stopping processes, removing cgroups); please wait[/yellow]")
            return
        self.fired = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _parse_target(text: str) -> float:
    from controller.units import parse_duration

    seconds = parse_duration(text)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"the target must be a positive duration, got {text!r}")
    return seconds * 1000.0


def _check_slo(base_slo: dict[str, Any], source: str, setting: TargetSetting) -> None:
    """Validate the SLO drcio would get (with placeholder wiring) before anything starts."""
    wiring = SloWiring(prometheus_url="http://127.0.0.1:9090", writer_url="http://127.0.0.1:9100",
                       token_file=Path("/nonexistent/token"), hp_job="hp-gnn", devices="auto")
    spec = ScenarioSpec("drcio", "drcio", 1.0, 0.0, lp=True, controlled=True)
    try:
        document = slo_document(spec, base_slo, target_ms=setting.target_ms or 1.0, wiring=wiring)
    except (KeyError, TypeError, AttributeError) as exc:
        raise SloError(f"{source}: slos[0] is not an SLO the experiment can use ({exc})") from exc
    validate_slo(document, source)


def _prepare_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} exists and is not a directory", param_hint="--output")
    if output.is_dir() and any(output.iterdir()):
        if not (output / "run.json").exists():
            raise click.BadParameter(
                f"{output} is not empty and holds no earlier run (no run.json); choose a new or empty directory",
                param_hint="--output")
        # An earlier run's output: replace exactly what a run writes.
        shutil.rmtree(output / "raw", ignore_errors=True)
        for pattern in _OUTPUT_GLOBS:
            for path in output.glob(pattern):
                path.unlink()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {output}: {exc.strerror}", param_hint="--output") from exc


def _default_output() -> Path:
    return Path("results") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


@click.command(context_settings=_CONTEXT)
@click.option("--scenario", type=click.Choice(SCENARIO_CHOICES), default="all", show_default=True,
              help="baseline: HP alone. contention: HP + unthrottled LP. static-max: LP fixed at read 200M / "
                   "write 50M. static-weight: LP I/O weight 10 (HP keeps the default 100) with the BFQ scheduler. sweep: LP at "
                   "fixed levels from floor to ceiling of the SLO's throttle range (the static frontier). oracle: "
                   "the best fixed level, bisected until its LP throughput is pinned within 5 % (each probe as long "
                   "as drcio's run, held to the same share of intervals). drcio: the "
                   "closed-loop controller. dynamic: drcio over a --schedule of load phases, then the oracle "
                   "bisected over the same schedule (every probe replays the whole schedule; see --oracle-probes "
                   "for what that costs on the local backend). all: baseline, contention, static-max, sweep, "
                   "oracle, drcio. all and dynamic runs that start with a baseline end with a second one "
                   f"(baseline-end): the report warns when HP alone moved by more than {HOST_DRIFT_FACTOR:g}x "
                   "during the run.")
@click.option("--duration", type=click.FloatRange(min=1), default=40.0, show_default=True,
              help="Seconds of each scenario's measured run (HP load on), warm-up included. A dynamic run's "
                   "scenarios, its baselines included, last as long as the schedule instead.")
@click.option("--load-level", type=click.Choice(["low", "medium", "high"]), default="medium", show_default=True,
              help="Load preset: HP request rate (open-loop Poisson) 100/200/300 per s and the LP job's "
                   "intensity (low: read x2, medium: mixed x4, high: mixed x8); see experiments/workloads/levels.py.")
@click.option("--slo", "slo_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="SLO file whose first SLO supplies the policy (for drcio), window, throttle range (swept by "
                   "sweep) and, unless --target is given, the target. Default: experiments/templates/slo.yaml. "
                   "Its wiring (URLs, token, selectors) is replaced by the experiment's own.")
@click.option("--target", default=None, metavar="auto|DURATION",
              help="HP P95 target, e.g. 5ms, or 'auto' = --target-multiple x the baseline's P95, rounded up to "
                   "the next histogram bucket edge (a baseline is run first if not planned). "
                   "Default: the --slo file's target, else auto.")
@click.option("--target-multiple", type=click.FloatRange(min=1, min_open=True), default=2.0, show_default=True,
              help="For --target auto: the target as a multiple of the baseline's P95.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (per-scenario CSVs, summary.csv, plots, report.md, raw/ logs). "
                   "Default: results/<UTC time>. An earlier run's output dir is replaced.")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
              help="Where to run: local = this machine with real Prometheus, cgroups and disk (needs root); "
                   "sim = the same controller loop and policies against a seeded model of the disk and the "
                   "measurement path, fitted to this machine (no root; ten simulated minutes take seconds); "
                   "kubernetes = the demo on the cluster of your kubeconfig (see README 'Deploy on Kubernetes').")
@click.option("--schedule", default=None, metavar="NAME|FILE",
              help="For --scenario dynamic: a built-in schedule (hp-steps, lp-phases, diurnal, steady, lp-step, "
                   "lp-bursts, hp-ramp, hp-quiet) or a YAML schedule file (see experiments/schedules.py). "
                   "On the local backend the load generator follows its HP rate and the LP job its LP phases "
                   "(the load level then sets only LP's threads and block size). The baselines of the run play "
                   "its HP rates with LP off, so an auto target is a multiple of HP alone under the same load.")
@click.option("--schedule-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Multiply every phase's duration of --schedule by this (burst on/off times stay as written), "
                   "e.g. 0.25 plays hp-steps' 190 s in 47.5 s. The report names the scale.")
@click.option("--oracle-probes", type=click.IntRange(min=2), default=14, show_default=True,
              help="At most this many fixed-level probes for the bisected oracle (level 1, level 0, then "
                   "midpoints until the LP bracket is within 5 %; a probe that met the target in a share of "
                   f"intervals more than {100 * LEVEL_DISAGREEMENT:g} points below a higher level's, which a host "
                   "stall does, runs once more and counts twice; not on the sim backend, where a rerun would "
                   "repeat the run); if the cap stops it first, the report gives "
                   "the bracket it reached as the oracle's uncertainty. Each probe is a whole scenario: for "
                   "dynamic on the local backend the whole schedule in real time plus ~7 s of set-up and "
                   "--pause. Local dynamic costs about (2 + probes) x (schedule + 12 s) + 15 s (drcio before and "
                   "after the probes, see --drcio-after), plus two "
                   "baselines as long as the schedule when the target is auto: full hp-steps (190 s) needs ~9 "
                   "probes for a 5 % bracket, about 37 min (+7 min of baselines), at most ~54 min at the default "
                   "cap.")
@click.option("--drcio-after/--no-drcio-after", default=None,
              help="For --scenario dynamic: drcio plays the schedule once more after the oracle's probes "
                   "(dynamic-SCHEDULE-after), so its two runs bracket the probes in time and the report compares "
                   "their mean with the oracle: the host drifts over a run this long. Default: on, but not on the "
                   "sim backend, where every run draws the same random numbers and the second would repeat the "
                   "first. Costs one more schedule (+ ~7 s of set-up and --pause).")
@click.option("--start-from", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              metavar="DIR",
              help="Start each loop scenario (drcio, dynamic) at the level its loop ended at in the earlier run "
                   "whose output directory is DIR (the last record of DIR/raw/<scenario>/decisions.jsonl), as a "
                   "deployed controller resumes from the level its writers hold; the report names the level. "
                   "Default: the fail-safe level, a first start with nothing remembered.")
@click.option("--seed", type=int, default=1, show_default=True, help="sim backend: the random seed (same seed, same files).")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="sim backend: simulated nodes (one disk, an even share of HP's requests and an LP job each).")
@click.option("--warmup", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds at the start of each scenario left out of every figure.")
@click.option("--pause", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds of idle between scenarios, so the host's write-back of the previous one settles.")
@click.option("--sweep-levels", type=click.IntRange(min=2), default=8, show_default=True,
              help="Number of fixed levels in the sweep (0 = floor ... 1 = ceiling, geometric in bandwidth).")
@click.option("--sweep-duration", type=click.FloatRange(min=1), default=None,
              help="Seconds per sweep level. Default: half of --duration, at least 15.")
@click.option("--lp-mode", type=click.Choice(["read", "write", "mixed"]), default=None,
              help="Override the load level's LP I/O: large O_DIRECT reads, writes, or both (alternating).")
@click.option("--lp-workers", type=click.IntRange(min=1), default=None,
              help="Override the load level's LP I/O threads (its I/O depth).")
@click.option("--lp-file-size", default="1G", show_default=True,
              help="Size of the LP data file (K/M/G), written in full once per run before anything is measured.")
@click.option("--hp-nodes", type=click.IntRange(min=2), default=None,
              help="Accounts in the HP service's graph; its feature store is nodes x 4 KiB. Default: the "
                   "service's own (512 MiB of features).")
@click.option("--work-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=Path("/var/tmp"),
              show_default=True, help="Parent of the run's temp dir (data files, Prometheus); must be a real disk.")
@click.option("--cgroup-root", default="auto", show_default=True,
              help="The cgroup io/blkio hierarchy root, or auto (v2 with io, else v1 blkio).")
@click.option("--report-only", is_flag=True,
              help="Run nothing: rebuild summary.csv, plots and report.md from the raw data in --output.")
@click.option("--dry-run", is_flag=True,
              help="kubernetes backend: print what would be applied, patched, scaled, waited for and queried, "
                   "in order, and touch nothing.")
@click.option("--manifests", type=click.Path(dir_okay=False, path_type=Path), default=Path("deploy/rendered/demo.yaml"),
              show_default=True, help="kubernetes backend: the rendered demo (kubectl kustomize deploy/demo).")
@click.option("--prometheus-url", default="http://127.0.0.1:9090", show_default=True, envvar="PROMETHEUS_URL",
              help="kubernetes backend: the cluster's Prometheus as reachable from here (e.g. a port-forward). "
                   "Env: PROMETHEUS_URL.")
def _run_command(**options: Any) -> None:
    """Run drcio's experiments on this machine and write CSVs, plots and a report.

    Example: run-experiment --scenario all --duration 40 --output results/latest
    """
    sys.exit(run_experiment(**options))


def run_experiment(
    *,
    scenario: str,
    duration: float,
    load_level: str,
    slo_path: Path | None,
    target: str | None,
    target_multiple: float,
    output: Path | None,
    backend: str,
    warmup: float,
    schedule: str | None = None,
    schedule_scale: float = 1.0,
    oracle_probes: int = 14,
    drcio_after: bool | None = None,
    start_from: Path | None = None,
    seed: int = 1,
    nodes: int = 1,
    pause: float,
    sweep_levels: int,
    sweep_duration: float | None,
    lp_mode: str | None,
    lp_workers: int | None,
    lp_file_size: str,
    hp_nodes: int | None,
    work_dir: Path,
    cgroup_root: str,
    report_only: bool,
    dry_run: bool = False,
    manifests: Path = Path("deploy/rendered/demo.yaml"),
    prometheus_url: str = "http://127.0.0.1:9090",
    console: Console | None = None,
) -> int:
    """The body of ``run-experiment``; returns the exit code."""
    console = console or Console(stderr=True, soft_wrap=True)
    if report_only:
        return _report_only(output, console)
    try:
        base_slo, slo_source = load_base_slo(slo_path)
        target_text = target if target is not None else (slo_target_text(base_slo) if slo_path else "auto")
        if target_text is None:
            raise SloError(f"{slo_path}: slos[0] has no target; give one there or pass --target")
        if target_text == "auto":
            setting = TargetSetting(None, "auto", multiple=target_multiple)
        else:
            how = "given with --target" if target is not None else f"given in the SLO file {slo_source}"
            try:
                setting = TargetSetting(_parse_target(target_text), how)
            except ValueError as exc:
                raise ValueError(f"{slo_source}: slos[0].target: {exc}" if target is None else f"--target: {exc}") from exc
        from experiments.workloads.levels import load_level as level_preset
        from experiments.workloads.lp_batch import BatchConfig, parse_size

        preset = level_preset(load_level)
        # A bad size is a usage error now, not a failed LP job after the last run's results are gone.
        try:
            BatchConfig(Path("."), block_size_bytes=preset.lp_block_size_bytes, file_size_bytes=parse_size(lp_file_size))
        except ValueError as exc:
            raise ValueError(f"--lp-file-size {lp_file_size}: {exc}") from exc
        from experiments.schedules import ScheduleError, load_schedule

        try:
            loaded = load_schedule(schedule) if schedule is not None else None
        except ScheduleError as exc:
            raise ValueError(f"--schedule: {exc}") from exc
        if schedule_scale != 1.0:
            if loaded is None:
                raise ValueError("--schedule-scale needs --schedule")
            loaded = loaded.scaled(schedule_scale)
        if drcio_after and scenario != "dynamic":
            raise ValueError("--drcio-after is only for --scenario dynamic")
        after = scenario == "dynamic" and (not _repeatable(backend) if drcio_after is None else drcio_after)
        plan_config = PlanConfig(duration, warmup, sweep_levels, sweep_duration, schedule=loaded, drcio_after=after)
        plan = plan_scenarios(scenario, plan_config, need_baseline=setting.target_ms is None)
        if start_from is not None:
            if not any(s.kind in LOOP_KINDS for s in plan):
                raise ValueError(f"--start-from: --scenario {scenario} runs no loop (drcio or dynamic) to start")
            try:
                plan = remembered_starts(plan, start_from)
            except ValueError as exc:
                raise ValueError(f"--start-from: {exc}") from exc
        _check_slo(base_slo, slo_source, setting)
    except (SloError, ValueError) as exc:
        console.print(f"[red]run-experiment: {exc}[/red]")
        return 2

    if backend == "kubernetes":
        return _run_kubernetes(plan, setting, base_slo, manifests=manifests, prometheus_url=prometheus_url,
                               dry_run=dry_run, output=output, pause=pause, console=console,
                               oracle_probes=oracle_probes)
    if dry_run:
        console.print("[red]run-experiment: --dry-run is for --backend kubernetes[/red]")
        return 2
    from experiments.backends.local import LocalBackend, LocalConfig, check_prerequisites
    from experiments.model import Backend

    local_config = LocalConfig(
        load_level=load_level, lp_mode=lp_mode, lp_workers=lp_workers, lp_file_size=lp_file_size,
        hp_nodes=hp_nodes, work_root=work_dir, cgroup_root=cgroup_root, base_slo=base_slo,
        needs_scheduler=tuple(sorted({s.scheduler for s in plan if s.scheduler})),
        schedule_name=loaded.name if loaded is not None else None,
    )
    try:
        if backend == "local":
            check_prerequisites(local_config)  # before anything is created
        output = output or _default_output()
        _prepare_output(output)
    except BackendUnavailable as exc:
        return _unavailable(console, backend, exc)
    except click.BadParameter as exc:
        console.print(f"[red]run-experiment: {exc.format_message()}[/red]")
        return 2
    chosen: Backend
    if backend == "sim":
        from experiments.backends.sim import SimBackend, SimConfig

        chosen = SimBackend(SimConfig(seed=seed, nodes=nodes, hp_rate_per_second=preset.hp_rate_per_second,
                                      lp_mode=lp_mode or preset.lp_mode, base_slo=base_slo,
                                      schedule_name=local_config.schedule_name))
        pause = 0.0
    else:
        local = LocalBackend(local_config, status=lambda text: console.print(f"[dim]{text}[/dim]"))
        local.set_log_dir(output / "raw" / "logs")
        chosen = local
    total = sum(s.duration_seconds for s in plan) + pause * (len(plan) - 1)
    console.print(f"run-experiment: {len(plan)} scenarios ({', '.join(s.name for s in plan)}), "
                  f"about {total / 60:.0f} min of measurement; output in {output}")
    oracle = next((s for s in plan if s.kind == "oracle"), None)
    if oracle is not None and backend != "sim":
        console.print(f"  (the oracle counts as one scenario above; it bisects with up to {oracle_probes} probes of "
                      f"{oracle.duration_seconds:g} s each, + set-up and --pause per probe: up to "
                      f"{(oracle_probes - 1) * (oracle.duration_seconds + pause) / 60:.0f} min more)")
    run_info = {
        "command": shlex.join(["run-experiment", *sys.argv[1:]]) if sys.argv[0].endswith("run-experiment")
        else shlex.join(sys.argv),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "SLO file": slo_source,
        "durations": f"{duration:g} s per scenario, sweep levels {plan_config.sweep_seconds:g} s, "
                     f"warm-up {warmup:g} s, pause {pause:g} s",
        **_schedule_info(loaded, schedule_scale, oracle_probes, plan, reruns=not chosen.repeatable),
        "loop start": ("the fail-safe level (the SLO file's failsafe.level)" if start_from is None else
                       ", ".join(f"{s.name} at level {s.start_level:.3f}" for s in plan if s.start_level is not None)
                       + f": where its loop ended in {start_from}"),
    }
    started = time.monotonic()
    with _Interrupts(console) as interrupts:
        try:
            with chosen:
                run_info.update(chosen.describe())
                with RichProgress(console, total) as progress:
                    run_plan(plan, chosen, RunConfig(output, setting, pause, run_info,
                                                     oracle_max_probes=oracle_probes,
                                                     report_each_scenario=backend != "sim"), progress)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted: every process stopped, cgroups and temp dirs removed; "
                          f"results of finished scenarios are in {output}[/yellow]")
            return 130
        except BackendUnavailable as exc:
            return _unavailable(console, backend, exc)
        except SloError as exc:
            console.print(f"[red]run-experiment: bad SLO: {exc}[/red]")
            return 2
        except Exception as exc:  # noqa: BLE001 - the CLI's last word: say what failed, exit 1
            console.print(f"[red]run-experiment failed: {exc.__class__.__name__}: {exc}[/red]\n"
                          f"Processes stopped, cgroups and temp dirs removed; finished scenarios are in {output}.")
            return 1
        if interrupts.fired:
            return 130
    console.print(f"done in {(time.monotonic() - started) / 60:.1f} min: {output / 'report.md'}, "
                  f"{output / 'summary.csv'}")
    return 0


def _repeatable(backend: str) -> bool:
    """The ``repeatable`` of ``--backend``'s class (:class:`experiments.model.Backend`), before one is built."""
    if backend == "sim":
        from experiments.backends.sim import SimBackend
        return SimBackend.repeatable
    if backend == "kubernetes":
        from experiments.backends.kubernetes import KubernetesBackend
        return KubernetesBackend.repeatable
    from experiments.backends.local import LocalBackend
    return LocalBackend.repeatable


def _schedule_info(schedule: Schedule | None, scale: float, probes: int, plan: list[ScenarioSpec], *,
                   reruns: bool) -> dict[str, str]:
    """The report's lines on the load schedule (with its scale) and on the oracle's probe budget."""
    info: dict[str, str] = {}
    if schedule is not None:
        scaled = f", every phase's duration x {scale:g} (--schedule-scale)" if scale != 1.0 else ""
        info["schedule"] = (f"{schedule.name}: {len(schedule.phases)} phases, {schedule.duration_seconds:g} s"
                            f"{scaled}" + (f"; {schedule.description}" if schedule.description else "")
                            + "; every scenario of the run follows it (the baselines its HP rates, LP off)")
    if any(s.kind == "oracle" for s in plan):
        length = "the whole schedule" if schedule is not None else "as long as drcio's run"
        info["oracle"] = (f"bisected until the met / missed bracket's LP throughputs differ by <= 5 %, at most "
                          f"{probes} probes (--oracle-probes), each probe {length}; "
                          + (f"a probe that misses the target in a share of intervals more than "
                             f"{100 * LEVEL_DISAGREEMENT:g} points below a higher level's is run once more and the "
                             "first run kept as superseded" if reruns else
                             "no probe is run twice (every run of this backend draws the same random numbers, so "
                             "a rerun would repeat it)"))
    return info


def _unavailable(console: Console, backend: str, exc: BackendUnavailable) -> int:
    """Say what the backend is missing here and what to use instead; the usage exit code."""
    console.print(f"[red]run-experiment: the {backend} backend cannot run here: {exc.missing}[/red]\n{exc.alternative}")
    return 2


def _run_kubernetes(plan: list[ScenarioSpec], setting: TargetSetting, base_slo: dict[str, Any], *, manifests: Path,
                    prometheus_url: str, dry_run: bool, output: Path | None, pause: float, console: Console,
                    oracle_probes: int = 14) -> int:
    """``--backend kubernetes``: the plan on a cluster through the API (or, with --dry-run, printed)."""
    from experiments.backends.kubernetes import (
        ApiCluster,
        DryRunCluster,
        KubernetesBackend,
        KubernetesConfig,
        in_cluster_or_kubeconfig,
    )

    config = KubernetesConfig(manifests=manifests, prometheus_url=prometheus_url, base_slo=base_slo)
    if dry_run:
        backend = KubernetesBackend(config, DryRunCluster(sys.stdout))
        target = setting.target_ms if setting.target_ms is not None else math.nan
        if setting.target_ms is None:
            print("(target: auto, from the baseline's P95; the SLOs below show a 100 ms placeholder)")
        try:
            with backend:
                with tempfile.TemporaryDirectory() as raw:
                    for i, spec in enumerate(plan):
                        if i:
                            backend.pause(pause, lambda *_: None)
                        print(f"--- scenario {spec.name}")
                        run = backend.run_scenario(spec, target_ms=target, raw_dir=Path(raw), tick=lambda *_: None)
                        backend.export(run)
        except (BackendUnavailable, SloError) as exc:
            console.print(f"[red]run-experiment: {exc}[/red]")
            return 2
        return 0
    try:
        backend = KubernetesBackend(config, ApiCluster(in_cluster_or_kubeconfig()),
                                    status=lambda text: console.print(f"[dim]{text}[/dim]"))
        output = output or _default_output()
        _prepare_output(output)
    except BackendUnavailable as exc:
        return _unavailable(console, "kubernetes", exc)
    except click.BadParameter as exc:
        console.print(f"[red]run-experiment: {exc.format_message()}[/red]")
        return 2
    run_info = {"command": shlex.join(sys.argv), "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    with _Interrupts(console):
        try:
            with backend:
                run_info.update(backend.describe())
                total = sum(s.duration_seconds for s in plan) + pause * (len(plan) - 1)
                with RichProgress(console, total) as progress:
                    run_plan(plan, backend, RunConfig(output, setting, pause, run_info,
                                                      oracle_max_probes=oracle_probes), progress)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted; the LP job is scaled to 0; finished scenarios are in {output}[/yellow]")
            return 130
        except (BackendUnavailable, SloError) as exc:
            console.print(f"[red]run-experiment: {exc}[/red]")
            return 2
        except Exception as exc:  # noqa: BLE001 - the CLI's last word
            console.print(f"[red]run-experiment failed: {exc.__class__.__name__}: {exc}[/red]")
            return 1
    console.print(f"done: {output / 'report.md'}, {output / 'summary.csv'}")
    return 0


def _report_only(output: Path | None, console: Console) -> int:
    if output is None or not (output / "run.json").exists():
        console.print("[red]run-experiment --report-only needs --output pointing to an earlier run (with run.json)[/red]")
        return 2
    try:
        results, target, info = load_results(output)
        planned = json.loads((output / "run.json").read_text()).get("plan", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a file gone, cut short or edited
        console.print(f"[red]run-experiment --report-only: cannot read the run in {output}: "
                      f"{type(exc).__name__}: {exc}[/red]")
        return 2
    if not results or target is None:
        console.print(f"[red]{output} holds no finished scenario with a known target; nothing to report[/red]")
        return 2
    # The oracle's probes are results of their own (oracle-N); its bisection ended when it wrote oracle.json.
    done = {r.name for r in results} | {s["name"] for s in planned if s.get("kind") == "oracle"
                                        and (output / "oracle.json").exists()}
    write_report(output, results, target, run_info=info, pending=[s["name"] for s in planned if s["name"] not in done])
    console.print(f"wrote {output / 'report.md'} and {output / 'summary.csv'}")
    return 0


def main() -> None:
    """Entry point of ``run-experiment``."""
    _run_command()


# --------------------------------------------------------------------------- export-metrics


@click.command(context_settings=_CONTEXT)
@click.option("--duration", type=click.FloatRange(min=1), required=True,
              help="Seconds to export, ending at --end (default now).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The series CSV to write (same columns as run-experiment's per-scenario CSV).")
@click.option("--prometheus", "url", default="http://127.0.0.1:9090", show_default=True, envvar="PROMETHEUS_URL",
              help="Base URL of the Prometheus to query. Env: PROMETHEUS_URL.")
@click.option("--end", type=float, default=None, help="End of the range, unix seconds. Default: now.")
@click.option("--step", type=click.FloatRange(min=0.001, min_open=True), default=1.0, show_default=True,
              help="Seconds between rows (raised automatically to stay under Prometheus' 11 000 points).")
@click.option("--window", type=click.FloatRange(min=1), default=5.0, show_default=True,
              help="Trailing window (s) of every rate and quantile.")
@click.option("--hp-selector", default="", help='Extra label matchers for the HP series, e.g. job="hp-gnn".')
@click.option("--lp-selector", default="", help='Extra label matchers for the LP job series, e.g. job="lp-batch".')
@click.option("--group-selector", default="", help='Extra label matchers for the LP group, e.g. group="lp".')
@click.option("--histogram", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the cumulative HP latency histogram (timestamp, le, count) here.")
def _export_command(duration: float, output: Path, url: str, end: float | None, step: float, window: float,
                    hp_selector: str, lp_selector: str, group_selector: str, histogram: Path | None) -> None:
    """Export the experiment's time series (HP P50/P95/P99, request rate, LP bytes/s, throttle level,
    io.max in force) from any Prometheus into a CSV."""
    sys.exit(export_metrics(duration=duration, output=output, url=url, end=end, step=step, window=window,
                            hp_selector=hp_selector, lp_selector=lp_selector, group_selector=group_selector,
                            histogram=histogram))


def export_metrics(*, duration: float, output: Path, url: str, end: float | None, step: float, window: float,
                   hp_selector: str = "", lp_selector: str = "", group_selector: str = "",
                   histogram: Path | None = None, console: Console | None = None) -> int:
    """The body of ``export-metrics``; returns the exit code."""
    console = console or Console(stderr=True, soft_wrap=True)
    end = time.time() if end is None else end
    try:
        queries = SeriesQueries(window, hp_selector, lp_selector, group_selector)
        export = export_range(url, end - duration, end, queries=queries, step_seconds=step)
    except ValueError as exc:
        console.print(f"[red]export-metrics: {exc}[/red]")
        return 2
    except ExportError as exc:
        console.print(f"[red]export-metrics: {exc}[/red]")
        return 1
    write_export(export, output, histogram)
    filled = [c for c in export.series.columns[2:] if export.series[c].notna().any()]
    console.print(f"wrote {len(export.series)} rows to {output}; series with data: {', '.join(filled) or 'none'}")
    return 0


def export_main() -> None:
    """Entry point of ``export-metrics``."""
    _export_command()

