"""``drcio-controller``: parse options, build the controller, call one run.

Exit codes: 0 done, 2 bad configuration or arguments, 1 anything else.
Wiring happens here and only here: ``--dry-run`` (or ``mode: dry-run``) swaps
in a pusher that changes nothing, instead of ``if dry_run`` branches below.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click
import yaml
from prometheus_client import start_http_server

from controller.config import ControllerConfig, load_config
from controller.decision_log import DecisionLog
from controller.errors import ConfigError
from controller.leader import (
    ElectionConfig,
    LeaderElector,
    LeaderGatedPusher,
    LeaseApi,
    in_cluster_lease_api,
    push_gate,
)
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.push import (
    DryRunPusher,
    HttpPusher,
    KubernetesWriterDirectory,
    Pusher,
    StaticWriters,
    WriterDirectory,
    raise_open_files_limit,
    read_token,
)
from controller.sensor_batch import BatchedPrometheusSensor
from controller.shard import Shard, ShardedWriters, aligned_clock, host_of
from controller.tls import ReloadingPusher, client_context, tls_files

__all__ = ["main", "build_controller"]

log = logging.getLogger("drcio.controller")


def _parse_listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--metrics-listen")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_controller(
    config: ControllerConfig,
    *,
    dry_run: bool,
    metrics: ControllerMetrics | None = None,
    decision_log: DecisionLog | None = None,
    leader: Callable[[], bool] | None = None,
    shard: Shard | None = None,
) -> Controller:
    """Wire a controller for real Prometheus and real writers (or a dry-run pusher).

    ``leader``: with leader election, pushes go out only while it returns True.
    ``shard``: this replica pushes only to the writers whose node hashes to it (README "Scale").
    """
    pusher: Pusher
    if dry_run:
        pusher = DryRunPusher()
    else:
        token_file, tls = config.effective_token_file, config.writers.tls
        # One kept-alive connection per writer: lift the soft fd limit (as Go programs do at start).
        raise_open_files_limit(65536)

        def build_pusher() -> Pusher:
            return HttpPusher(
                token=read_token(token_file), timeout_seconds=config.writers.timeout_seconds, verify=client_context(tls)
            )

        # Token and certificates are re-read when their files change (a rotated Secret).
        pusher = ReloadingPusher(build_pusher, [*([token_file] if token_file else []), *tls_files(tls)])
    if leader is not None:
        pusher = LeaderGatedPusher(pusher, leader)
    writers: WriterDirectory
    node_of = host_of
    if config.writers.static is not None:
        writers = StaticWriters(config.writers.static)
    else:
        k = config.writers.kubernetes
        assert k is not None  # the config model guarantees one source
        # The writers' push deadline bounds the listing of them too.
        kube = KubernetesWriterDirectory(namespace=k.namespace, service=k.service, port=k.port, scheme=k.scheme,
                                         timeout_seconds=config.writers.timeout_seconds)
        writers, node_of = kube, kube.node_of
    if shard is not None and shard.count > 1:
        writers = ShardedWriters(writers, shard, node_of=node_of)
    return Controller(
        config,
        # All SLOs in one Prometheus request per tick (README "Scale").
        sensor=BatchedPrometheusSensor(config.prometheus, config.slos),
        pusher=pusher,
        writers=writers,
        metrics=metrics,
        decision_log=decision_log,
        dry_run=dry_run,
    )


def build_elector(
    controller: Controller, api: LeaseApi, election: ElectionConfig, metrics: ControllerMetrics,
    *, monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
) -> LeaderElector:
    """This replica's elector. Elected, the controller continues above the old leader's generations, and its
    next tick takes over (:meth:`Controller.take_over`) before its first push as leader."""

    def elected(floor: int) -> None:
        controller.resume_after(floor)
        controller.request_take_over()

    return LeaderElector(api, election, generation=lambda: controller.generation, on_elected=elected,
                         on_change=lambda lead: metrics.leader.set(1.0 if lead else 0.0), monotonic=monotonic, wall=wall)


# main() dispatches export-rules by hand (this command has no subcommands), so the epilog names it.
@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Also: drcio-controller export-rules --help: build the Prometheus recording rules and alerts "
    "of the SLO file.",
)
@click.option(
    "--config",
    "config_path",
    envvar="DRCIO_CONFIG",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SLO file (YAML). See README 'SLO file'. Env: DRCIO_CONFIG.",
)
@click.option("--once", is_flag=True, help="Run one step, print one JSON line per SLO, and exit.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Compute and show decisions but push nothing, so no cgroup changes. Same as 'mode: dry-run'.",
)
@click.option(
    "--metrics-listen",
    envvar="DRCIO_METRICS_LISTEN",
    default=None,
    metavar="HOST:PORT",
    help="Serve the controller's Prometheus metrics on HOST:PORT/metrics (default: not served with --once, "
    "0.0.0.0:9095 otherwise). Env: DRCIO_METRICS_LISTEN.",
)
@click.option(
    "--decision-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append every step's decision records (JSON lines, the same records --once prints) to this file.",
)
@click.option(
    "--max-ticks",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many steps (for bounded runs and experiments; default: run until SIGTERM/SIGINT).",
)
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Run as one of several replicas: only the holder of the Lease --lease-name pushes; the others keep "
    "their policies warm and take over when the lease expires (see controller/leader.py).",
)
@click.option("--lease-name", default="drcio-controller", show_default=True, help="The coordination.k8s.io Lease.")
@click.option(
    "--lease-namespace",
    envvar="POD_NAMESPACE",
    default="drcio-system",
    show_default=True,
    help="Namespace of the Lease. Env: POD_NAMESPACE.",
)
@click.option(
    "--identity",
    envvar="POD_NAME",
    default=None,
    help="This replica's name in the Lease (default: the host name). Env: POD_NAME.",
)
@click.option(
    "--lease-duration",
    type=click.FloatRange(min=3),
    default=15.0,
    show_default=True,
    help="Seconds a standby waits after the Lease last changed before taking over; the leader renews every "
    "2 s and steps down after 2/3 of this without a renewal.",
)
@click.option(
    "--shards",
    envvar="DRCIO_SHARDS",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Number of controller replicas sharing the writers (see README 'Scale'). Each replica pushes only to "
    "the nodes whose name hashes to its --shard-index, and evaluates at interval-aligned times so all replicas "
    "read the same data. With --leader-elect, each shard elects its own leader (Lease <lease-name>-shard-<k>). "
    "Env: DRCIO_SHARDS.",
)
@click.option(
    "--shard-index",
    envvar="DRCIO_SHARD_INDEX",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This replica's index, 0..shards-1 (on Kubernetes: the StatefulSet ordinal, from the pod label "
    "apps.kubernetes.io/pod-index). Env: DRCIO_SHARD_INDEX.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log verbosity (logs go to stderr; decisions go to stdout only with --once).",
)
def _command(
    config_path: Path,
    once: bool,
    dry_run: bool,
    metrics_listen: str | None,
    decision_log: Path | None,
    max_ticks: int | None,
    leader_elect: bool,
    lease_name: str,
    lease_namespace: str,
    identity: str | None,
    lease_duration: float,
    shards: int,
    shard_index: int,
    log_level: str,
) -> None:
    """Closed-loop latency-SLO controller for block I/O.

    Every interval it reads each SLO's latency quantile from Prometheus, runs the
    SLO's policy (pid, aimd, knee or static) to choose how much disk the low-priority
    pods may use, and pushes the resulting io.max / io.weight targets to the node
    writers. When it starts, and when it is elected leader, the policies start from
    the level the writers hold (the SLO file's start_level).

    Exit codes: 0 done, 2 bad configuration or arguments, 1 anything else.
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 warns on every retry; the sensor reports failures itself, once, with context.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    listen = _parse_listen(metrics_listen)
    if leader_elect and once:
        raise click.UsageError("--leader-elect is for the long-running controller, not --once")
    if shard_index >= shards:
        raise click.BadParameter(f"must be below --shards ({shards}), got {shard_index}", param_hint="--shard-index")
    shard = Shard(shard_index, shards)
    if shards > 1:
        lease_name = f"{lease_name}-shard-{shard_index}"  # one leader per shard
    elector: LeaderElector | None = None
    try:
        config = load_config(config_path)
        dry = dry_run or config.mode == "dry-run"
        metrics = ControllerMetrics()
        dlog = DecisionLog(decision_log) if decision_log is not None else None
        election: ElectionConfig | None = None
        if leader_elect:
            try:
                election = ElectionConfig(
                    name=lease_name, namespace=lease_namespace, identity=identity or socket.gethostname(),
                    lease_duration_seconds=lease_duration, renew_deadline_seconds=lease_duration * 2 / 3,
                    retry_period_seconds=min(2.0, lease_duration / 5),
                )
            except ValueError as e:
                raise click.UsageError(str(e)) from None
        gate: list[LeaderElector] = []
        controller = build_controller(config, dry_run=dry, metrics=metrics, decision_log=dlog,
                                      leader=push_gate(lambda: gate[0].is_leader(), lambda: controller.take_over_pending)
                                      if election is not None else None, shard=shard)
        if election is not None:
            elector = build_elector(controller, in_cluster_lease_api(), election, metrics)
            gate.append(elector)
            metrics.leader.set(0.0)
        else:
            controller.request_take_over()  # the first tick starts from the levels in force
            metrics.leader.set(1.0)
    except ConfigError as e:
        for problem in e.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)

    if once:
        if listen is not None:
            start_http_server(listen[1], addr=listen[0], registry=metrics.registry)
        try:
            result = controller.step(time.time())
        finally:
            _close(controller.pusher)
        for record in result.records:
            click.echo(json.dumps(record, allow_nan=False))
        if dlog is not None:
            dlog.close()
        return

    host, port = listen if listen is not None else ("0.0.0.0", 9095)
    start_http_server(port, addr=host, registry=metrics.registry)
    log.info(
        "controller started: %d SLO(s), interval %ss, mode %s, metrics on %s:%d",
        len(config.slos), config.interval_seconds, "dry-run" if dry else "active", host, port,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after this tick", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    election_thread = elector.start(stop) if elector is not None else None
    # Sharded replicas evaluate at the start of the interval slot, so they query the same data.
    wall_clock = aligned_clock(config.interval_seconds, time.time) if shards > 1 else time.time
    try:
        controller.run(stop, max_ticks=max_ticks, wall_clock=wall_clock)
    finally:
        _close(controller.pusher)
        if election_thread is not None:
            stop.set()
            election_thread.join(timeout=5)  # lets it release the Lease for the standby
        if dlog is not None:
            dlog.close()


def _close(pusher: object) -> None:
    """Close the push client's pooled connections, through the wrappers around it."""
    while pusher is not None:
        close = getattr(pusher, "close", None)
        if callable(close):
            close()
            return
        pusher = getattr(pusher, "inner", None)  # LeaderGatedPusher


@click.command("export-rules", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", envvar="DRCIO_CONFIG", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The SLO file the rules are built from.")
@click.option("--format", "fmt", type=click.Choice(["prometheusrule", "rules"]), default="prometheusrule",
              show_default=True, help="prometheusrule: a prometheus-operator PrometheusRule (kube-prometheus-stack); "
              "rules: a plain Prometheus rules file (rule_files:, promtool check rules).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of stdout (nothing is written when the SLO file or a check fails).")
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="Check against this Prometheus that each SLO's target is a bucket edge (le) of its "
              "histogram; without it the check happens at run time (alert DrcioSloTargetBucketMissing).")
@click.option("--controller-job", default="drcio-controller", show_default=True,
              help="The controller's scrape job (on Kubernetes: its metrics Service's name).")
@click.option("--writer-job", default="drcio-writer", show_default=True,
              help="The writers' scrape job (on Kubernetes: the writer Service's name).")
@click.option("--namespace", default="drcio-system", show_default=True, help="The PrometheusRule's namespace.")
@click.option("--rule-label", "rule_labels", multiple=True, metavar="KEY=VALUE",
              help="Label of the PrometheusRule (repeatable); default release=kube-prometheus-stack, "
              "which that chart's default ruleSelector matches.")
def _export_rules(
    config_path: Path, fmt: str, output: Path | None, prometheus_url: str | None, controller_job: str,
    writer_job: str, namespace: str, rule_labels: tuple[str, ...],
) -> None:
    """Build the recording rules and alerts of every SLO in the SLO file.

    Per SLO: its quantile, and the share of requests slower than the target over
    5m..3d (from the histogram bucket whose le is the target); multi-window
    multi-burn-rate alerts (page: 1h/5m at 14.4x, 6h/30m at 6x; ticket: 1d/2h at
    3x, 3d/6h at 1x). Plus alerts on the controller, the writers and the sensor.

    Example: drcio-controller export-rules --config slo.yaml > prometheusrule.yaml
    """
    from controller.rules import RuleOptions, missing_target_buckets, prometheus_rule, rules_file

    labels: dict[str, str] = {}
    for item in rule_labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--rule-label")
        labels[key] = value
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for problem in e.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    if prometheus_url is not None:
        from controller.rules import bucket_edges

        metrics = sorted({s.metric for s in config.slos if s.metric is not None})
        try:
            edges = {m: bucket_edges(prometheus_url, m) for m in metrics}
        except OSError as e:
            click.echo(f"error: cannot read the histograms' buckets from {prometheus_url}: {e}", err=True)
            sys.exit(1)
        problems = missing_target_buckets(config.slos, {m: e for m, e in edges.items() if e})
        if problems:
            for problem in problems:
                click.echo(f"error: {config_path}: {problem}", err=True)
            sys.exit(2)
    options = RuleOptions(controller_job=controller_job, writer_job=writer_job, namespace=namespace,
                          labels=labels or None)
    doc = prometheus_rule(config, options) if fmt == "prometheusrule" else rules_file(config, options)
    header = f"# Generated by drcio-controller export-rules from {config_path.name}; do not edit.\n"
    text = header + yaml.safe_dump(doc, sort_keys=False, width=120)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)


def main() -> None:
    """Console entry point; usage errors exit 2 (click's convention matches ours).

    ``drcio-controller export-rules ...`` is a subcommand of its own; every
    other invocation is the controller itself (``drcio-controller --config ...``).
    """
    command = _export_rules if sys.argv[1:2] == ["export-rules"] else _command
    args = sys.argv[2:] if command is _export_rules else sys.argv[1:]
    try:
        command.main(args=args, prog_name="drcio-controller export-rules" if command is _export_rules else None,
                     standalone_mode=True)
    except SystemExit:
        raise
    except Exception as e:  # anything unexpected: readable message, exit 1
        log.exception("drcio-controller failed")
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
