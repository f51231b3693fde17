"""``drcio-writer``: the per-node agent's command line.

Thin on purpose: parse options, load the config (:mod:`writer.config`), wire
the parts together in :func:`build_state`, and serve with uvicorn in
:func:`run`. Usage and configuration errors exit 2 with the reason; anything
else that stops the writer exits 1.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import click
import uvicorn
from prometheus_client import CollectorRegistry

from writer.api import Devices
from writer.cgroup_paths import kubelet_tree_problem, pod_cgroup_dir
from writer.cgroups import Hierarchy, Limits, WriterError, detect_hierarchy
from writer.config import ConfigError, WriterConfig, load_config, parse_listen
from writer.devices import active_scheduler, resolve_devices
from writer.discovery import Discovery, KubernetesDiscovery, LocalDiscovery
from writer.lease import Failsafe, Lease
from writer.lp_memory import LpMemory
from writer.reconcile import IoCost, Reconciler
from writer.server import ServerState, build_app
from writer.tls import CertReloader, TokenFile, uvicorn_config

__all__ = ["main", "build_state", "read_token", "run"]

log = logging.getLogger("writer")


def read_token(path: Path | None) -> str:
    """The token from ``path``, whitespace stripped; :class:`ConfigError` if missing or empty."""
    if path is None:
        raise ConfigError(["token_file is not set (or start with --insecure-no-auth)"])
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ConfigError([f"token_file {path}: cannot read: {err.strerror} (or start with --insecure-no-auth)"]) from err
    if not token:
        raise ConfigError([f"token_file {path} is empty (or start with --insecure-no-auth)"])
    return token


def _discovery(config: WriterConfig, hierarchy: Hierarchy, node: str) -> Discovery:
    d = config.discovery
    if d.local is not None:
        return LocalDiscovery(d.local, hierarchy_root=hierarchy.root, hp_selector=d.hp, lp_selector=d.lp)
    assert d.kubernetes is not None
    import kubernetes  # imported here: local mode must not need a kubeconfig

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    k = d.kubernetes
    return KubernetesDiscovery(
        node,
        # CoreV1Api's typed signatures do not match discovery's **kwargs Protocol; it is the real thing.
        api=cast(Any, kubernetes.client.CoreV1Api()),
        hierarchy_root=hierarchy.root,
        driver=None if config.driver == "auto" else config.driver,
        kubelet_cgroup_root=config.kubelet_cgroup_root,
        hp_selector=k.hp,
        lp_selector=k.lp,
        namespace=k.namespace,
        hp_namespaces=k.hp_namespaces,
        lp_namespaces=k.lp_namespaces,
    )


def _node_name(config: WriterConfig, node_name: str | None) -> str:
    if node_name:
        return node_name
    if config.node_name:
        return config.node_name
    if config.discovery.kubernetes is not None:
        env = os.environ.get(config.discovery.kubernetes.node_name_env)
        if not env:
            raise ConfigError([f"discovery.kubernetes: environment variable {config.discovery.kubernetes.node_name_env} is not set"])
        return env
    return socket.gethostname()


def build_state(
    config: WriterConfig,
    *,
    token: str | None,
    node_name: str | None = None,
    registry: CollectorRegistry | None = None,
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    discovery: Discovery | None = None,
) -> ServerState:
    """Wire hierarchy, discovery, lease, fail-safe and reconciler from the config (nothing started)."""
    kubepods = _kubepods_dirs(config.kubelet_cgroup_root) if config.discovery.kubernetes is not None else ()
    hierarchy = detect_hierarchy(config.cgroup_root, mountinfo=Path("/proc/self/mountinfo"), require_any=kubepods)
    proc_root = config.proc_root if proc_root == Path("/proc") else proc_root
    mount_pid = "self" if proc_root == Path("/proc") else "1"
    node = _node_name(config, node_name)
    registry = registry if registry is not None else CollectorRegistry()
    fs = config.failsafe

    def resolve(devices: Devices) -> list[str]:
        return resolve_devices(
            devices, proc_root=proc_root, sys_root=sys_root, include_dm=config.include_dm, mountinfo_pid=mount_pid
        )

    reconciler = Reconciler(
        hierarchy=hierarchy,
        discovery=discovery if discovery is not None else _discovery(config, hierarchy, node),
        lease=Lease(initial_ttl_seconds=fs.ttl),
        failsafe=Failsafe(
            fs.mode, Limits(rbps=fs.rbps, wbps=fs.wbps, riops=fs.riops, wiops=fs.wiops),
            floor_bps=fs.floor_bps, floor_iops=fs.floor_iops,
        ),
        max_lease_ttl_seconds=fs.max_ttl,
        failsafe_devices=fs.devices,
        resolve_devices=resolve,
        scheduler_of=partial(active_scheduler, sys_root=sys_root),
        registry=registry,
        node=node,
        io_cost=_io_cost(config),
        tree_problem=_tree_check(config, hierarchy),
        lp_memory=LpMemory(config.state_file) if config.state_file is not None else None,
        config_summary={
            **config.model_dump(mode="json"),
            "auth": token is not None,
            "hierarchy": {"version": hierarchy.version, "root": str(hierarchy.root)},
        },
    )
    return ServerState(reconciler=reconciler, registry=registry, token=token)


def _io_cost(config: WriterConfig) -> IoCost | None:
    if config.io_cost == "off":
        return None
    if config.io_cost == "auto":
        return IoCost()
    return IoCost(model=config.io_cost.model, qos=config.io_cost.qos)


def _kubepods_dirs(kubelet_cgroup_root: str) -> tuple[str, ...]:
    """Where kubelet's kubepods cgroup is under the hierarchy root, for either driver."""
    probe = "00000000-0000-0000-0000-000000000000"
    dirs = []
    for driver in ("systemd", "cgroupfs"):
        pod = pod_cgroup_dir(Path("/"), probe, "guaranteed", driver, cgroup_root=kubelet_cgroup_root)
        dirs.append(str(pod.parent.relative_to("/")))
    return tuple(dirs)


def _tree_check(config: WriterConfig, hierarchy: Hierarchy) -> Callable[[], str | None]:
    """For Kubernetes discovery: a check that kubelet's tree is there (local mode names its cgroups itself)."""
    if config.discovery.kubernetes is None:
        return lambda: None
    return partial(kubelet_tree_problem, hierarchy.root, cgroup_root=config.kubelet_cgroup_root)


def run(config: WriterConfig, state: ServerState, *, listen: str, log_level: str) -> None:
    """Start reconciling, serve (HTTPS when configured, certificates reloaded on change) until interrupted."""
    host, port = parse_listen(listen)
    server_config = uvicorn_config(build_app(state), host=host, port=port, log_level=log_level, tls=config.tls)
    # Keep-alive longer than a controller interval, so the controller's pushes reuse one connection.
    server_config.timeout_keep_alive = 75
    server_config.load()  # builds the SSLContext now, so the reloader can load rotated certificates into it
    reloader = None
    if config.tls is not None and server_config.ssl is not None:
        reloader = CertReloader(server_config.ssl, config.tls)
        reloader.start()
    state.reconciler.start(config.reconcile_interval)
    try:
        uvicorn.Server(server_config).run()
    finally:
        state.reconciler.stop()
        if reloader is not None:
            reloader.stop()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
    help="Writer YAML file (listen, token_file, cgroup_root, discovery, failsafe, ...).",
)
@click.option("--listen", default=None, metavar="HOST:PORT", help="Override the file's listen address.")
@click.option(
    "--insecure-no-auth", is_flag=True, default=False,
    help="Serve without a bearer token. Only for a trusted loopback test; never on a node.",
)
@click.option(
    "--node-name", envvar="NODE_NAME", default=None, show_envvar=True,
    help="This node's name (Kubernetes injects NODE_NAME); default: the file's node_name, else the host name.",
)
@click.option(
    "--log-level", default="INFO", show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), help="Log verbosity.",
)
def main(config_path: Path, listen: str | None, insecure_no_auth: bool, node_name: str | None, log_level: str) -> None:
    """Per-node drcio writer: accepts pushed io.max / io.weight targets and writes them into LP cgroups."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path)
        if listen is not None:
            try:
                parse_listen(listen)
            except ValueError as err:
                raise ConfigError([f"--listen: {err}"]) from None
            config = config.model_copy(update={"listen": listen})  # so /status shows what is served
        token = None if insecure_no_auth else read_token(config.token_file)
        state = build_state(config, token=token, node_name=node_name)
        if token is not None and config.token_file is not None:
            state.token_source = TokenFile(config.token_file, token)  # a rotated Secret is picked up per request
    except (ConfigError, WriterError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    if token is None:
        log.warning("serving WITHOUT authentication (--insecure-no-auth)")
    try:
        run(config, state, listen=config.listen, log_level=log_level)
    except Exception as err:  # exit 1, with the reason, for anything that stops a configured writer
        log.exception("writer stopped")
        click.echo(f"drcio-writer: {err}", err=True)
        sys.exit(1)
