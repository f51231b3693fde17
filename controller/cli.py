"""``drcio-controller``: parse options, build the controller, call one run.

Exit codes: 0 done, 2 bad configuration or arguments, 1 anything else.
Wiring happens here and only here: ``--dry-run`` (or ``mode: dry-run``) swaps
in a pusher that changes nothing, instead of ``if dry_run`` branches below.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import click
from prometheus_client import start_http_server

from controller.config import ControllerConfig, load_config
from controller.decision_log import DecisionLog
from controller.errors import ConfigError
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.push import (
    DryRunPusher,
    HttpPusher,
    KubernetesWriterDirectory,
    Pusher,
    StaticWriters,
    WriterDirectory,
    read_token,
)
from controller.sensor import PrometheusSensor
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
) -> Controller:
    """Wire a controller for real Prometheus and real writers (or a dry-run pusher)."""
    pusher: Pusher
    if dry_run:
        pusher = DryRunPusher()
    else:
        token_file, tls = config.effective_token_file, config.writers.tls

        def build_pusher() -> Pusher:
            return HttpPusher(
                token=read_token(token_file), timeout_seconds=config.writers.timeout_seconds, verify=client_context(tls)
            )

        # Token and certificates are re-read when their files change (a rotated Secret).
        pusher = ReloadingPusher(build_pusher, [*([token_file] if token_file else []), *tls_files(tls)])
    writers: WriterDirectory
    if config.writers.static is not None:
        writers = StaticWriters(config.writers.static)
    else:
        k = config.writers.kubernetes
        assert k is not None  # the config model guarantees one source
        writers = KubernetesWriterDirectory(namespace=k.namespace, service=k.service, port=k.port, scheme=k.scheme)
    return Controller(
        config,
        sensor=PrometheusSensor(config.prometheus),
        pusher=pusher,
        writers=writers,
        metrics=metrics,
        decision_log=decision_log,
        dry_run=dry_run,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    log_level: str,
) -> None:
    """Closed-loop latency-SLO controller for block I/O.

    Every interval it reads each SLO's latency quantile from Prometheus, runs the
    SLO's policy (pid, aimd or static) to choose how much disk the low-priority
    pods may use, and pushes the resulting io.max / io.weight targets to the node
    writers.

    Exit codes: 0 done, 2 bad configuration or arguments, 1 anything else.
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 warns on every retry; the sensor reports failures itself, once, with context.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    listen = _parse_listen(metrics_listen)
    try:
        config = load_config(config_path)
        dry = dry_run or config.mode == "dry-run"
        metrics = ControllerMetrics()
        dlog = DecisionLog(decision_log) if decision_log is not None else None
        controller = build_controller(config, dry_run=dry, metrics=metrics, decision_log=dlog)
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
        result = controller.step(time.time())
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
    try:
        controller.run(stop, max_ticks=max_ticks)
    finally:
        if dlog is not None:
            dlog.close()


def main() -> None:
    """Console entry point; usage errors exit 2 (click's convention matches ours)."""
    try:
        _command.main(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as e:  # anything unexpected: readable message, exit 1
        log.exception("drcio-controller failed")
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
