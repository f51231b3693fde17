"""A fleet of real drcio writers in one process, for benchmarks/scale.py.

How one process serves many writers: every writer is a real
:class:`writer.reconcile.Reconciler` over its own fake cgroup v2 tree (a temp
dir, ``--lp`` LP cgroups each) behind its own FastAPI app from
:func:`writer.server.build_app` — the writer's own application, unchanged.
Each writer has its own listening socket (127.0.0.1, a kernel-chosen port);
ONE uvicorn server accepts on all the sockets, and a three-line ASGI
dispatcher hands each request to the app of the socket it arrived on
(``scope["server"]`` is the connection's local address). So the controller
sees N distinct endpoints with N distinct TCP connections, exactly as with N
nodes; what is shared is only the event loop.

Every writer is also served a second way, on a socket of 127.0.0.2, by
:class:`LeanWriter`: the same Reconciler and wire models behind a minimal
HTTP server, to show the controller's cost apart from FastAPI's on a box
where fleet and controller share the cores. The event loop is uvloop.

Run by scale.py as a subprocess (so the controller's CPU and RSS are its own)::

    python benchmarks/scale_fleet.py --writers 500 --lp 2 --root /tmp/x

It prints one JSON line ``{"urls": {"app": [...], "lean": [...]}, "rss_mb": ...}``
when every socket listens, then serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import hmac
import io
import json
import pstats
import resource
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import click
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from writer.cgroups import Hierarchy
from writer.discovery import LocalDiscovery, LocalEntry
from writer.lease import Failsafe, Lease
from writer.api import TargetsPush
from writer.reconcile import Reconciler, StalePush
from writer.server import ServerState, build_app

#: What a fresh cgroup v2 directory shows (the files the writer reads and writes).
_V2_FILES = {"io.max": "", "io.weight": "default 100\n", "io.stat": "", "cgroup.procs": ""}


def raise_nofile(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (at most the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def fake_v2_tree(root: Path, lp: int) -> tuple[Hierarchy, list[LocalEntry]]:
    """A fake cgroup v2 hierarchy with ``lp`` LP cgroups labelled ``group-id: lp<j % 2>``."""
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("io\n")
    entries = []
    for j in range(lp):
        d = root / "kubepods" / f"pod-lp-{j}"
        d.mkdir(parents=True)
        for name, text in _V2_FILES.items():
            (d / name).write_text(text)
        entries.append(
            LocalEntry.model_validate({"name": f"lp-{j}", "path": f"kubepods/pod-lp-{j}", "labels": {"group-id": f"lp{j % 2}"}})
        )
    return Hierarchy(2, root), entries


def one_disk(devices: object) -> list[str]:
    """Device resolution on a fake tree: every group limits the one disk 254:0."""
    return ["254:0"]


def build_writer(root: Path, *, lp: int, node: str, token: str | None) -> ServerState:
    hierarchy, entries = fake_v2_tree(root, lp)
    registry = CollectorRegistry()
    reconciler = Reconciler(
        hierarchy=hierarchy,
        discovery=LocalDiscovery(entries, hierarchy_root=hierarchy.root),
        lease=Lease(initial_ttl_seconds=600.0),
        failsafe=Failsafe(),
        resolve_devices=one_disk,
        scheduler_of=lambda dev: "mq-deadline",
        registry=registry,
        node=node,
    )
    return ServerState(reconciler=reconciler, registry=registry, token=token)


class LeanWriter(asyncio.Protocol):
    """``--server lean``: the writer's own Reconciler and wire models behind a minimal HTTP/1.1 keep-alive server.

    It exists to show the controller's cost apart from FastAPI's on a box
    where the fleet and the controller share two cores: a real node serves
    only its own push. The order of the checks is the real server's (token,
    body model -> 422, stale -> 409); only the framework is left out.
    """

    def __init__(self, state: ServerState) -> None:
        import httptools

        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.body: list[bytes] = []
        self.auth = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(400, b'{"error":"bad request","detail":[]}')
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body, self.auth = [], b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        token = self.state.token
        if token is not None and not hmac.compare_digest(self.auth, f"Bearer {token}".encode()):
            self._answer(401, b'{"error":"missing or wrong bearer token","detail":[]}')
            return
        try:
            body = TargetsPush.model_validate_json(b"".join(self.body))
        except ValidationError:
            self._answer(422, b'{"error":"body does not match TargetsPush","detail":[]}')
            return
        try:
            result = self.state.reconciler.push(body)
        except StalePush:
            self._answer(409, b'{"error":"stale generation","detail":[]}')
            return
        self._answer(200, result.model_dump_json().encode())

    def _answer(self, status: int, payload: bytes) -> None:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        self.transport.write(head.encode() + payload)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command()
@click.option("--writers", type=click.IntRange(min=1), required=True, help="Writers this process serves.")
@click.option("--lp", type=click.IntRange(min=0), default=2, show_default=True, help="LP cgroups per writer.")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), required=True, help="Temp dir for the fake trees.")
@click.option("--first", type=int, default=0, show_default=True, help="Index of the first writer (node names).")
@click.option("--token", default=None, help="Bearer token the writers require (default: none).")
@click.option("--profile", type=click.Path(path_type=Path, dir_okay=False), default=None, help="cProfile the serving; stats to this file.")
def main(writers: int, lp: int, root: Path, first: int, token: str | None, profile: Path | None) -> None:
    """Serve WRITERS real writers, each on two loopback sockets: its FastAPI app (127.0.0.1) and the lean server (127.0.0.2)."""
    raise_nofile(4 * writers + 256)  # two listening sockets and up to two kept-alive connections per writer
    apps: dict[int, Any] = {}
    socks: list[socket.socket] = []
    states: list[ServerState] = []
    urls: list[str] = []
    for i in range(first, first + writers):
        state = build_writer(root / f"w{i}", lp=lp, node=f"node-{i:05d}", token=token)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        apps[port] = build_app(state)
        socks.append(s)
        states.append(state)
        urls.append(f"http://127.0.0.1:{port}")

    async def dispatch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await apps[scope["server"][1]](scope, receive, send)

    # 2,500 writers' apps and reconcilers make a heap no real writer has (a node runs one):
    # keep the garbage collector from rescanning it, or its full collections stall every
    # writer of the process for a second or more and the controller sees timeouts.
    gc.collect()
    gc.freeze()

    # timeout_keep_alive above the controller's interval, so connections are reused across ticks.
    config = uvicorn.Config(
        dispatch, lifespan="off", access_log=False, log_level="warning", timeout_keep_alive=120, backlog=4096
    )
    uvicorn_server = uvicorn.Server(config)

    def stop_on_stdin_eof() -> None:
        sys.stdin.read()
        uvicorn_server.should_exit = True

    threading.Thread(target=stop_on_stdin_eof, daemon=True).start()

    async def serve() -> None:
        task = asyncio.create_task(uvicorn_server.serve(sockets=socks))
        loop = asyncio.get_running_loop()
        lean_urls = []
        # The lean servers listen on 127.0.0.2 so their ports do not eat the ephemeral range of 127.0.0.1.
        for state in states:
            srv = await loop.create_server(lambda st=state: LeanWriter(st), "127.0.0.2", 0, backlog=4096)  # type: ignore[misc]
            lean_urls.append(f"http://127.0.0.2:{srv.sockets[0].getsockname()[1]}")
        while not uvicorn_server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        print(json.dumps({"urls": {"app": urls, "lean": lean_urls}, "rss_mb": round(_rss_mb(), 1)}), flush=True)
        await task

    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    uvloop.run(serve())
    if profiler is not None and profile is not None:
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        profile.write_text(text.getvalue())


if __name__ == "__main__":
    main()
