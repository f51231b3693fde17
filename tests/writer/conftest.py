"""Shared fixtures of the writer tests: fake cgroup trees in tmp dirs; the v2 guest started early.

A fake tree stands in only for layouts this machine's kernel lacks (cgroup v2
``io.*``) and for exact-format checks; the real kernel is exercised in
``test_kernel.py``. Files start the way the kernel shows a fresh cgroup.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from tests.writer.v2_guest import GUEST_TEST, GuestRun, unavailable
from writer.cgroups import Hierarchy
from writer.discovery import LocalDiscovery, LocalEntry
from writer.lease import Failsafe, Lease
from writer.lp_memory import LpMemory
from writer.reconcile import Reconciler
from writer.server import ServerState, build_app

_GUEST = pytest.StashKey[GuestRun]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Boot the cgroup v2 guest now, in the background, when this run includes its test (see v2_guest.py)."""
    if session.config.option.collectonly or unavailable() is not None:
        return
    if any(item.nodeid.endswith(GUEST_TEST) for item in session.items):
        session.config.stash[_GUEST] = GuestRun.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_GUEST, None)
    if run is not None:
        run.stop()


@pytest.fixture
def v2_guest(request: pytest.FixtureRequest) -> Iterator[GuestRun]:
    """The guest the run started when it was collected; should the hook not have started one, one started now."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    started = request.config.stash.get(_GUEST, None)
    run = started or GuestRun.start()
    try:
        yield run
    finally:
        if started is None:
            run.stop()


V2_FILES = {
    "io.max": "",
    "io.weight": "default 100\n",
    "io.stat": "",
    "cgroup.procs": "",
}
V1_FILES = {
    "blkio.throttle.read_bps_device": "",
    "blkio.throttle.write_bps_device": "",
    "blkio.throttle.read_iops_device": "",
    "blkio.throttle.write_iops_device": "",
    "blkio.throttle.io_service_bytes": "Total 0\n",
    "blkio.throttle.io_service_bytes_recursive": "Total 0\n",
    "blkio.bfq.weight": "100\n",
    "cgroup.procs": "",
}


@dataclass
class FakeTree:
    """A fake cgroup hierarchy: ``group(rel)`` makes a cgroup dir with the kernel's files."""

    hierarchy: Hierarchy

    @property
    def root(self) -> Path:
        return self.hierarchy.root

    def group(self, relative: str, **overrides: str) -> Path:
        d = self.root / relative
        d.mkdir(parents=True, exist_ok=True)
        files = V2_FILES if self.hierarchy.version == 2 else V1_FILES
        for name, text in {**files, **overrides}.items():
            (d / name).write_text(text)
        return d

    def read(self, relative: str, name: str) -> str:
        return (self.root / relative / name).read_text()

    def snapshot(self) -> dict[str, str]:
        """Every file's content, to assert that nothing was written."""
        return {str(p.relative_to(self.root)): p.read_text() for p in sorted(self.root.rglob("*")) if p.is_file()}


def _v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "io.cost.qos").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


def _v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "blkio"
    root.mkdir()
    for name, text in V1_FILES.items():
        if name != "blkio.bfq.weight":
            (root / name).write_text(text)
    return root


def make_tree(tmp_path: Path, version: int) -> FakeTree:
    """A fresh fake hierarchy of the given cgroup version under ``tmp_path``."""
    make: Callable[[Path], Path] = _v2_root if version == 2 else _v1_root
    return FakeTree(Hierarchy(2 if version == 2 else 1, make(tmp_path)))


@pytest.fixture
def fake_v2(tmp_path: Path) -> FakeTree:
    return FakeTree(Hierarchy(2, _v2_root(tmp_path)))


@pytest.fixture
def fake_v1(tmp_path: Path) -> FakeTree:
    return FakeTree(Hierarchy(1, _v1_root(tmp_path)))


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def fake_tree(request: pytest.FixtureRequest, tmp_path: Path) -> FakeTree:
    return make_tree(tmp_path, request.param)


# ---------------------------------------------------------------- a writer over a fake tree, served for real


class FakeClock:
    """A monotonic clock the test moves by hand (lease expiry without sleeping)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_resolver(devices: object) -> list[str]:
    """Device resolution for fake trees: ``auto`` is one disk 254:0; explicit numbers pass through."""
    if devices == "auto":
        return ["254:0"]
    assert isinstance(devices, list)
    out = []
    for d in devices:
        if not isinstance(d, str):
            raise ValueError(f"mount {d!r} cannot be resolved on a fake tree")
        out.append(d)
    return out


TOKEN = "s3cret-token-for-tests"


@dataclass
class WriterUnderTest:
    """A reconciler over a fake tree with its registry, clock and (optionally) a live HTTP server."""

    tree: FakeTree
    clock: FakeClock
    state: ServerState
    url: str = ""

    @property
    def reconciler(self) -> Reconciler:
        return self.state.reconciler

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.state.registry.get_sample_value(name, labels or {})

    def put(self, body: object, *, token: str | None = TOKEN, **kwargs: Any) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.put(f"{self.url}/v1/targets", content=content, headers={**headers, "Content-Type": "application/json"}, **kwargs)

    def get(self, path: str, *, token: str | None = TOKEN) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={} if token is None else {"Authorization": f"Bearer {token}"})


LP_HP_ENTRIES = [
    {"name": "lp-batch", "path": "drcio-demo/lp", "labels": {"group-id": "lp"}},
    {"name": "hp-gnn", "path": "drcio-demo/hp", "labels": {"group-id": "hp"}},
]


def make_writer(
    tree: FakeTree,
    *,
    entries: list[dict[str, Any]] | None = None,
    failsafe: Failsafe | None = None,
    initial_ttl: float = 30.0,
    token: str | None = TOKEN,
    discovery: Any = None,
    max_ttl: float = 300.0,
    lp_memory: LpMemory | None = None,
) -> WriterUnderTest:
    clock = FakeClock()
    registry = CollectorRegistry()
    entries = LP_HP_ENTRIES if entries is None else entries
    if discovery is None:
        discovery = LocalDiscovery([LocalEntry.model_validate(e) for e in entries], hierarchy_root=tree.root)
    reconciler = Reconciler(
        hierarchy=tree.hierarchy,
        discovery=discovery,
        lease=Lease(initial_ttl_seconds=initial_ttl, clock=clock),
        failsafe=failsafe or Failsafe(),
        resolve_devices=fake_resolver,
        scheduler_of=lambda dev: "mq-deadline",
        registry=registry,
        node="node-a",
        wall_clock=lambda: 1_700_000_000.0,
        config_summary={"listen": "127.0.0.1:0"},
        max_lease_ttl_seconds=max_ttl,
        lp_memory=lp_memory,
    )
    return WriterUnderTest(tree, clock, ServerState(reconciler=reconciler, registry=registry, token=token))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:  # readiness, not timing: bounded so a broken server fails the test
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def writer_v2(fake_v2: FakeTree) -> Iterator[WriterUnderTest]:
    """A live writer (real HTTP) over a v2 fake tree with an LP and an HP cgroup."""
    fake_v2.group("drcio-demo/lp")
    fake_v2.group("drcio-demo/hp")
    w = make_writer(fake_v2)
    with serving(build_app(w.state)) as url:
        w.url = url
        yield w


@pytest.fixture
def writer_any(fake_tree: FakeTree) -> Iterator[WriterUnderTest]:
    """Like ``writer_v2``, for both cgroup versions."""
    fake_tree.group("drcio-demo/lp")
    fake_tree.group("drcio-demo/hp")
    w = make_writer(fake_tree)
    with serving(build_app(w.state)) as url:
        w.url = url
        yield w


def push_body(generation: int = 1, *, ttl: float = 30.0, **group: Any) -> dict[str, Any]:
    """A valid push with one LP group (``lp``) whose fields ``group`` overrides."""
    g: dict[str, Any] = {"name": "lp", "selector": {"group-id": "lp"}, "devices": ["254:0"], "io_max": {"rbps": 10 * 1024 * 1024}}
    g.update(group)
    return {"generation": generation, "lease_ttl_seconds": ttl, "groups": [g], "controller": "test"}
