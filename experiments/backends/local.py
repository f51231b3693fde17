"""The ``local`` backend: every part real, on this machine.

Used by ``run-experiment --backend local`` (the default) through the
scenario runner. On entry (``with LocalBackend(config):``) it checks the
prerequisites (root, a cgroup I/O controller, the Prometheus binary, BFQ when
a scenario needs it) and raises :class:`BackendUnavailable` naming what is
missing; then it builds the shared stack once:

* a work dir under ``/var/tmp`` (a real disk, not a tmpfs: the workloads use
  ``O_DIRECT``) with the HP feature store, the LP data file (both written in
  full before anything is measured) and a random bearer token in a 0600 file;
* a private Prometheus on loopback, scraping every second the HP service, the
  LP job, the writer and the controller on ports fixed for the run;
* the HP GNN service, running for the whole run.

Per scenario it creates two pod-shaped cgroups ``drcio-exp-<run>/<scenario>/{hp,lp}``,
each with a container cgroup below it holding the process, as kubelet lays a
pod out (through :mod:`writer.groups`; only ``writer/`` touches cgroup files).
The writer is told about the pod cgroups, so it drives the same write path as
on a node (on cgroup v1 that means the pod and every cgroup below it).
It moves the HP service into ``hp``'s container, starts the writer and the controller when
the scenario applies limits (waiting for the first decision, so a fixed limit
is in force before LP starts), starts the LP job paused, moves it into ``lp``,
starts the open-loop load generator waiting too, and then releases both with
one ``SIGUSR1`` each, back to back: that instant is the scenario's start and
both workloads' time zero. After the scenario it stops the scenario's
processes and removes its cgroups (the HP service goes back to the root
group), so scenarios never inherit limits.

A scenario with a load schedule (``--scenario dynamic``, and the oracle's
probes for it) writes the schedule to ``raw/<scenario>/schedule.yaml`` and
hands that file to both workloads, which follow it themselves from time zero:
the load generator's HP rate (ramps and quiet spells included) and the LP
job's mode per phase (read, write, mixed, idle, bursts). The load level still
sets the LP job's threads and block size and the generator's in-flight cap;
nothing signals the workloads during the scenario, and the LP job stays the
one process in the LP cgroup.

Processes are started and stopped through one
:class:`~experiments.backends.supervision.Supervisor` (own session each; a
death fails the scenario with the tail of its log); host facts (PSI, the
block scheduler) come from :mod:`experiments.backends.host`. On exit, whatever the reason (an error, Ctrl-C,
SIGTERM turned into ``KeyboardInterrupt`` by the CLI), every process group is
terminated (then killed), the run's cgroups removed, a switched block
scheduler restored and the work dir deleted; process logs live in the output
directory (``raw/``) and stay.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from experiments.backends.host import SchedulerSwitch, pressure_notes, pressure_totals
from experiments.backends.supervision import (
    ProcessFailed,
    Supervisor,
    entry_point,
    http_ok,
    json_event,
    nonempty,
    wait_until,
)
from experiments.export import Export, SeriesQueries, export_range
from experiments.model import LP_GROUP, BackendUnavailable, ScenarioRun, ScenarioSpec, SloWiring, Tick, load_facts
from experiments.prometheus_server import PrometheusServer, PrometheusUnavailable, ScrapeTarget, find_prometheus, free_port
from experiments.slo import slo_document, validate_slo
from experiments.workloads.levels import LoadLevel, load_level
from writer import cgroups, groups
from writer.api import MountRef
from writer.devices import DeviceError, disk_name, resolve_devices

__all__ = [
    "ALTERNATIVE",
    "LocalConfig",
    "LocalBackend",
    "check_prerequisites",
]

log = logging.getLogger(__name__)

ALTERNATIVE = (
    "To run the same scenarios without root, use the simulator: `run-experiment --backend sim` (a seeded model "
    "of the disk, the cgroup limits and the measurement path, driving the same controller loop and policies). "
    "For real measurements run as root on a Linux machine with cgroup v2 `io` or v1 `blkio`."
)
HP_JOB = "hp-gnn"
LP_JOB = "lp-batch"
_LOCAL = "127.0.0.1"
#: The container cgroup's name below each pod cgroup (a cgroupfs-driver-style container id).
_CONTAINER = "c" * 64


# --------------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class LocalConfig:
    """Settings of the local stack.

    load_level: the preset of ``experiments.workloads.levels``: HP request rate,
        LP mode, workers and block size (the reasons for each are there).
    rate_per_second: overrides the level's HP rate (tests use a light load).
    hp_nodes: the HP graph's size (store = nodes x 4 KiB); None = the service's default.
    lp_mode / lp_workers: override the level's LP I/O (``mixed`` = half the
        threads read, half write) and its I/O depth.
    lp_file_size: the LP data file; 1 GiB is far beyond what the limits let
        through in a scenario, so LP never re-reads a cached region.
    work_root: parent of the run's work dir; must be a real disk (O_DIRECT).
    cgroup_root: ``auto`` or the io/blkio hierarchy root (as for the writer).
    scrape_interval_seconds: Prometheus' scrape interval; 1 s as the issue asks.
    export_window_seconds: trailing window of every exported rate and quantile.
    needs_scheduler: schedulers the planned scenarios switch to (checked on entry).
    schedule_name: the load schedule the planned dynamic scenarios follow, for :meth:`LocalBackend.describe`
        (each scenario's schedule itself comes with its spec).
    """

    load_level: str = "medium"
    rate_per_second: float | None = None
    hp_nodes: int | None = None
    lp_mode: str | None = None
    lp_workers: int | None = None
    lp_file_size: str = "1G"
    work_root: Path = Path("/var/tmp")
    cgroup_root: str = "auto"
    scrape_interval_seconds: float = 1.0
    export_window_seconds: float = 5.0
    stop_timeout_seconds: float = 10.0
    needs_scheduler: tuple[str, ...] = ()
    base_slo: dict[str, Any] = field(default_factory=dict)
    schedule_name: str | None = None


def load_preset(name: str) -> LoadLevel:
    """The ``--load-level`` preset called ``name`` (ValueError listing the valid names)."""
    return load_level(name)


def check_prerequisites(
    config: LocalConfig,
    *,
    euid: Callable[[], int] = os.geteuid,
    detect: Callable[[str], cgroups.Hierarchy] = cgroups.detect_hierarchy,
    prometheus: Callable[[], str] = find_prometheus,
) -> cgroups.Hierarchy:
    """Raise :class:`BackendUnavailable` saying what is missing; return the cgroup hierarchy to use."""
    if euid() != 0:
        raise BackendUnavailable(
            f"the local backend needs root (running as uid {euid()}): it creates cgroups, moves processes into "
            "them and writes their I/O limits. Run it with sudo.",
            ALTERNATIVE,
        )
    try:
        hierarchy = detect(config.cgroup_root)
    except cgroups.WriterError as exc:
        raise BackendUnavailable(f"no cgroup I/O control on this machine: {exc}", ALTERNATIVE) from exc
    try:
        prometheus()
    except PrometheusUnavailable as exc:
        raise BackendUnavailable(str(exc), "Install it with `scripts/setup.sh` (or `make setup`).") from exc
    if not config.work_root.is_dir():
        raise BackendUnavailable(f"the work dir parent {config.work_root} does not exist",
                                 "Pass --work-dir pointing to a directory on a real disk.")
    scheduler = SchedulerSwitch(disk_name(_work_disk(config.work_root)[0]))
    for needed in config.needs_scheduler:
        if needed not in scheduler.available():
            raise BackendUnavailable(
                f"a planned scenario needs the {needed} scheduler, which {scheduler.path} does not offer",
                "Run the other scenarios, or load it with `modprobe " + needed + "`.")
    return hierarchy


def _work_disk(path: Path) -> list[str]:
    """The devices (MAJ:MIN) of the disk holding ``path``; :class:`BackendUnavailable` if it cannot be told."""
    try:
        return resolve_devices([MountRef(mount=str(path))])
    except DeviceError as exc:
        raise BackendUnavailable(f"cannot tell which disk holds {path}: {exc}",
                                 "Pass --work-dir on a local disk.") from exc


class LocalBackend:
    """See the module docstring. Enter it to build the shared stack; every exit path cleans up."""

    repeatable = False  # a real host: a rerun can come out differently

    def __init__(self, config: LocalConfig, *, status: Callable[[str], None] = lambda _: None) -> None:
        self.config = config
        self.status = status
        self.supervisor = Supervisor(stop_timeout_seconds=config.stop_timeout_seconds)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.cgroup_parent = f"drcio-exp-{self.run_id}"
        self.hierarchy: cgroups.Hierarchy | None = None
        self.workdir: Path | None = None
        self.prometheus: PrometheusServer | None = None
        self.scheduler: SchedulerSwitch | None = None
        self.hp_proc: subprocess.Popen[bytes] | None = None
        self.devices: list[str] = []
        self.rate = 0.0
        self.level: LoadLevel | None = None
        self.lp_mode = ""
        self.lp_workers = 0
        self.ports: dict[str, int] = {}
        self._logs: Path | None = None
        self._prometheus_pid: int | None = None

    # -- Backend protocol ------------------------------------------------------

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None, "backend not entered"
        return self.prometheus.url

    @property
    def queries(self) -> SeriesQueries:
        return SeriesQueries(
            window_seconds=self.config.export_window_seconds,
            hp_matcher=f'job="{HP_JOB}"',
            lp_matcher=f'job="{LP_JOB}"',
            group_matcher=f'group="{LP_GROUP}"',
        )

    def export(self, run: ScenarioRun) -> Export:
        return export_range(self.prometheus_url, run.start, run.end, queries=self.queries)

    def describe(self) -> dict[str, str]:
        h = self.hierarchy
        disk = ", ".join(f"{d} ({disk_name(d)})" for d in self.devices) if self.devices else "?"
        hp, lp = load_facts(f"{self.config.load_level} = {self.rate:g} requests/s, open loop (Poisson)",
                            self.lp_mode, self.config.schedule_name)
        return {
            "backend": "local (real Prometheus, real cgroups, real disk)",
            "host": f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs",
            "disk under test": disk + (f", scheduler {self.scheduler.active()}" if self.scheduler else ""),
            "cgroups": f"v{h.version} at {h.root}" if h else "?",
            "HP load": hp,
            "LP job": f"{lp}; {self.lp_workers} workers x "
                      f"{(self.level.lp_block_size_bytes if self.level else 0) >> 10} KiB O_DIRECT, "
                      f"{self.config.lp_file_size} file",
        }

    def __enter__(self) -> LocalBackend:
        self.hierarchy = check_prerequisites(self.config)
        # A run killed with SIGKILL cannot clean up; its empty groups are removed here.
        stale = groups.remove_empty_groups(self.hierarchy, "drcio-exp-")
        if stale:
            log.warning("removed %d empty cgroup(s) left by earlier runs: %s", len(stale), ", ".join(stale))
        self.level = load_preset(self.config.load_level)
        self.rate = self.config.rate_per_second or self.level.hp_rate_per_second
        self.lp_mode = self.config.lp_mode or self.level.lp_mode
        self.lp_workers = self.config.lp_workers or self.level.lp_workers
        try:
            self._start_stack()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._cleanup()

    # -- set-up ------------------------------------------------------------------

    def set_log_dir(self, path: Path) -> None:
        """Where the long-lived processes' logs go (the output dir, so they survive the run)."""
        self._logs = path

    def _start_stack(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"drcio-run-{self.run_id}-", dir=self.config.work_root))
        logs = self._logs or self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        token = self.workdir / "token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        for d in ("hp-data", "lp-data"):
            (self.workdir / d).mkdir()
        self.devices = _work_disk(self.workdir)  # its schedulers were checked on entry (check_prerequisites)
        self.scheduler = SchedulerSwitch(disk_name(self.devices[0]))
        self.ports = {name: free_port() for name in ("hp", "lp", "writer", "controller")}

        self.status("building the HP feature store and the LP data file (once per run)")
        py = sys.executable
        hp_args = ["--data-dir", str(self.workdir / "hp-data")]
        if self.config.hp_nodes is not None:
            hp_args += ["--nodes", str(self.config.hp_nodes)]
        hp_setup = self.supervisor.start(
            "hp-gnn setup", [py, "-m", "experiments.workloads.hp_gnn", *hp_args, "--setup-only"],
            log_path=logs / "hp-setup.log", expect_exit=True)
        lp_setup = self.supervisor.start(
            "lp-batch prepare", [py, "-m", "experiments.workloads.lp_batch", "--data-dir",
                                 str(self.workdir / "lp-data"), "--file-size", self.config.lp_file_size,
                                 "--prepare-only"], log_path=logs / "lp-prepare.log", expect_exit=True)
        for proc in (hp_setup, lp_setup):
            if proc.wait() != 0:
                raise ProcessFailed(self.supervisor.describe_failure(proc))
        os.sync()  # the set-up's writes reach the disk before anything is measured

        self.status("starting Prometheus and the HP service")
        self.prometheus = PrometheusServer(
            targets=[
                ScrapeTarget(HP_JOB, f"{_LOCAL}:{self.ports['hp']}"),
                ScrapeTarget(LP_JOB, f"{_LOCAL}:{self.ports['lp']}"),
                ScrapeTarget("drcio-writer", f"{_LOCAL}:{self.ports['writer']}"),
                ScrapeTarget("drcio-controller", f"{_LOCAL}:{self.ports['controller']}"),
            ],
            scrape_interval_seconds=self.config.scrape_interval_seconds,
            workdir=self.workdir / "prometheus",
        )
        (self.workdir / "prometheus").mkdir()
        self.prometheus.start()
        prom_proc = getattr(self.prometheus, "_proc", None)
        if prom_proc is not None:
            self._prometheus_pid = int(prom_proc.pid)
        self.hp_proc = self.supervisor.start(
            HP_JOB, [py, "-m", "experiments.workloads.hp_gnn", *hp_args, "--host", _LOCAL, "--port", str(self.ports["hp"])],
            log_path=logs / "hp-gnn.log")
        with http_ok(f"http://{_LOCAL}:{self.ports['hp']}/health") as ready:
            wait_until("the HP service", ready, proc=self.hp_proc, supervisor=self.supervisor, timeout=60)
        self.prometheus.wait_for_samples(f'up{{job="{HP_JOB}"}} == 1')

    # -- one scenario --------------------------------------------------------------

    def _rel(self, spec: ScenarioSpec, role: str = "") -> str:
        """The scenario's cgroup, or a role's pod cgroup in it (what the writer is told about)."""
        return f"{self.cgroup_parent}/{spec.name}" + (f"/{role}" if role else "")

    def _container(self, spec: ScenarioSpec, role: str) -> str:
        """The container cgroup below a role's pod cgroup, where its process runs (as kubelet places it)."""
        return f"{self._rel(spec, role)}/{_CONTAINER}"

    def _writer_yaml(self, spec: ScenarioSpec) -> dict[str, Any]:
        assert self.workdir is not None and self.hierarchy is not None
        from importlib import resources

        doc = yaml.safe_load(resources.files("experiments").joinpath("templates/writer.yaml").read_text())
        doc.update(
            listen=f"{_LOCAL}:{self.ports['writer']}",
            token_file=str(self.workdir / "token"),
            cgroup_root=str(self.hierarchy.root),
            discovery={"local": [
                {"name": "lp-batch", "path": self._rel(spec, "lp"), "labels": {"group-id": "lp"}},
                {"name": "hp-gnn", "path": self._rel(spec, "hp"), "labels": {"group-id": "hp"}},
            ]},
        )
        assert isinstance(doc, dict)
        return doc

    def wiring(self) -> SloWiring:
        assert self.workdir is not None
        return SloWiring(
            prometheus_url=self.prometheus_url,
            writer_url=f"http://{_LOCAL}:{self.ports['writer']}",
            token_file=self.workdir / "token",
            hp_job=HP_JOB,
            devices=list(self.devices),
        )

    def run_scenario(self, spec: ScenarioSpec, *, target_ms: float, raw_dir: Path, tick: Tick) -> ScenarioRun:
        h, sup = self.hierarchy, self.supervisor
        assert h is not None and self.workdir is not None and self.hp_proc is not None and self.level is not None
        logs = raw_dir / "logs"
        py = sys.executable
        procs: list[subprocess.Popen[bytes]] = []
        notes: dict[str, str] = {}
        D = spec.duration_seconds
        schedule_file = raw_dir / "schedule.yaml"
        if spec.schedule is not None:
            # Both workloads read this file; it is also a schedule a user can pass to --schedule.
            schedule_file.write_text(yaml.safe_dump(spec.schedule.to_document(), sort_keys=False))
            notes["schedule"] = spec.schedule.name
        try:
            tick(0, D, "creating cgroups")
            groups.create_group(h, self._container(spec, "hp"))
            groups.create_group(h, self._container(spec, "lp"))
            groups.move_pid(h, self._container(spec, "hp"), self.hp_proc.pid)
            if spec.scheduler:
                assert self.scheduler is not None
                tick(0, D, f"switching {self.scheduler.disk} to {spec.scheduler}")
                self.scheduler.switch(spec.scheduler)
                notes["scheduler"] = spec.scheduler
            if spec.controlled:
                tick(0, D, "starting writer and controller")
                writer_cfg = raw_dir / "writer.yaml"
                writer_cfg.write_text(yaml.safe_dump(self._writer_yaml(spec), sort_keys=False))
                slo = slo_document(spec, self.config.base_slo, target_ms=target_ms, wiring=self.wiring())
                validate_slo(slo, str(raw_dir / "slo.yaml"))
                (raw_dir / "slo.yaml").write_text(yaml.safe_dump(slo, sort_keys=False))
                writer = sup.start("drcio-writer", [*entry_point("drcio-writer", "writer.cli"), "--config", str(writer_cfg)],
                                   log_path=logs / "writer.log")
                procs.append(writer)
                with http_ok(f"http://{_LOCAL}:{self.ports['writer']}/health") as ready:
                    wait_until("the writer", ready, proc=writer, supervisor=sup, timeout=30)
                decisions = raw_dir / "decisions.jsonl"
                controller = sup.start(
                    "drcio-controller",
                    [*entry_point("drcio-controller", "controller.cli"), "--config", str(raw_dir / "slo.yaml"),
                     "--metrics-listen", f"{_LOCAL}:{self.ports['controller']}", "--decision-log", str(decisions)],
                    log_path=logs / "controller.log")
                procs.append(controller)
                # The first decision is pushed before LP starts: a fixed limit is in force from the first byte.
                wait_until("the controller's first decision", nonempty(decisions), proc=controller,
                            supervisor=sup, timeout=30)
            lp = None
            if spec.lp:
                tick(0, D, "starting the LP job (paused)")
                lp_out = logs / "lp-batch.out"
                lp_io = ["--schedule", str(schedule_file)] if spec.schedule is not None else ["--mode", self.lp_mode]
                lp = sup.start(
                    LP_JOB, [py, "-m", "experiments.workloads.lp_batch", "--data-dir", str(self.workdir / "lp-data"),
                             "--host", _LOCAL, "--port", str(self.ports["lp"]), *lp_io,
                             "--workers", str(self.lp_workers), "--block-size",
                             f"{self.level.lp_block_size_bytes >> 10}K", "--file-size", self.config.lp_file_size],
                    log_path=logs / "lp-batch.log", stdout_path=lp_out)
                procs.append(lp)
                wait_until("the LP job", json_event(lp_out, "prepared"), proc=lp, supervisor=sup, timeout=120)
                # Into its cgroup before it does a single I/O.
                groups.move_pid(h, self._container(spec, "lp"), lp.pid)
            hp_load = (["--schedule", str(schedule_file)] if spec.schedule is not None
                       else ["--rate", f"{self.rate:g}", "--duration", f"{D:g}"])
            loadgen = sup.start(
                "loadgen", [py, "-m", "experiments.workloads.loadgen", "--url",
                            f"http://{_LOCAL}:{self.ports['hp']}/score", *hp_load,
                            "--max-in-flight", str(self.level.hp_max_in_flight), "--wait-for-start",
                            "--out", str(raw_dir / "client.csv")],
                log_path=logs / "loadgen.log", stdout_path=raw_dir / "loadgen-summary.json", expect_exit=True)
            procs.append(loadgen)
            tick(0, D, "starting the load generator")
            wait_until("the load generator", json_event(logs / "loadgen.log", "ready"), proc=loadgen,
                       supervisor=sup, timeout=60)
            # One start for both: their schedules (or fixed load) count from these two signals, sent back to back.
            # Unix time for the export's range; the scenario's length by the monotonic clock (a wall step
            # must not stretch or cut it).
            start, began = time.time(), time.monotonic()
            pressure_before = pressure_totals()
            os.kill(loadgen.pid, signal.SIGUSR1)
            if lp is not None:
                os.kill(lp.pid, signal.SIGUSR1)
            while (elapsed := time.monotonic() - began) < D:
                sup.check()
                tick(min(elapsed, D), D, "running")
                time.sleep(min(0.5, max(0.0, D - elapsed)))
            end = start + D
            notes.update(pressure_notes(pressure_before, pressure_totals(), time.monotonic() - began))
            tick(D, D, "finishing")
            # One more scrape so every series has a sample at the end of the range.
            time.sleep(self.config.scrape_interval_seconds + 0.5)
            sup.check()
            try:
                loadgen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                raise ProcessFailed(f"the load generator did not finish within 15 s after the scenario ended "
                                    f"(see {logs / 'loadgen.log'})") from None
            if loadgen.returncode != 0:
                raise ProcessFailed(sup.describe_failure(loadgen))
            return ScenarioRun(spec.name, start, end, raw_dir / "client.csv", raw_dir, notes)
        finally:
            for proc in reversed(procs):
                sup.stop(proc)
            if spec.scheduler and self.scheduler is not None:
                self.scheduler.restore()
            # Moves the HP service back to the root group and removes both groups.
            groups.remove_group(h, self._rel(spec))

    def pause(self, seconds: float, tick: Tick) -> None:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            self.supervisor.check()
            tick(elapsed, seconds, "pause")
            time.sleep(min(0.5, seconds - elapsed))

    # -- tear-down -------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Every step runs even if an earlier one fails; failures are logged, the first re-raised at the end."""
        errors: list[BaseException] = []

        def attempt(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                log.error("cleanup: %s failed: %s", what, exc)
                errors.append(exc)

        attempt("stopping processes", self.supervisor.stop_all)
        if self.prometheus is not None:
            attempt("stopping Prometheus", self.prometheus.stop)
        if self.scheduler is not None:
            attempt("restoring the block scheduler", self.scheduler.restore)
        if self.hierarchy is not None:
            h = self.hierarchy
            attempt("removing cgroups", lambda: groups.remove_group(h, self.cgroup_parent))
        if self.workdir is not None:
            workdir = self.workdir
            attempt("removing the work dir", lambda: shutil.rmtree(workdir))
            self.workdir = None
        if errors:
            raise errors[0]

    @property
    def all_pids(self) -> list[int]:
        """Every pid this backend started (Prometheus included), for leak checks."""
        pids = list(self.supervisor.started_pids)
        return pids + ([self._prometheus_pid] if self._prometheus_pid is not None else [])
