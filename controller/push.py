"""Pushing targets to the node writers over HTTP: concurrently, bounded, over kept-alive connections.

Called by the loop once per tick with the whole desired state (every LP
group), which makes pushes level-triggered and idempotent: a writer that
missed a tick is healed by the next one. Writers are pushed concurrently;
each gets ``timeout_seconds`` in total (connect + send + answer), so one slow
or dead writer never delays the others beyond its timeout.

Writer addresses come from a :class:`WriterDirectory`: a static list, or the
EndpointSlices of the writer Service on Kubernetes. ``--dry-run`` swaps in
:class:`DryRunPusher` at wiring time; nothing here branches on dry-run.

A controller that starts or takes over as leader first asks its writers what
they hold (``GET /status``, :meth:`HttpPusher.read_in_force`), so it can start
its policies from the levels in force (``start_level``, see
:meth:`controller.loop.Controller.take_over`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
from yarl import URL
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.errors import ConfigError
from writer.api import STATUS_PATH, TARGETS_PATH, CgroupResult, PushResponse, TargetsPush

__all__ = [
    "PushOutcome",
    "PushResult",
    "InForce",
    "Pusher",
    "HttpPusher",
    "DryRunPusher",
    "WriterDirectory",
    "StaticWriters",
    "KubernetesWriterDirectory",
    "read_token",
    "raise_open_files_limit",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PushOutcome = Literal["ok", "unauthorized", "stale", "rejected", "error", "timeout", "unreachable", "dry_run"]


@dataclass(frozen=True)
class PushResult:
    """What happened to one push to one writer."""

    writer: str
    outcome: PushOutcome
    status_code: int | None = None
    detail: str = ""
    node: str | None = None
    results: tuple[CgroupResult, ...] = field(default_factory=tuple)

    def as_record(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "node": self.node,
            "detail": self.detail,
            "cgroups": [r.model_dump() for r in self.results],
        }


@dataclass(frozen=True)
class InForce:
    """What one writer holds (its ``GET /status``): the level of each LP group in its last accepted push.

    ``error`` says why nothing was read (unreachable, refused, malformed); ``levels`` is then empty.
    """

    writer: str
    levels: dict[str, float] = field(default_factory=dict)
    #: The writer's lease ran out: it applies its fail-safe limits, not the last push.
    failsafe_active: bool = False
    #: The writer has had no push since it started: what it holds is its own start-up state.
    pushed: bool = False
    error: str | None = None


class _StatusGroup(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    level: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)


class _StatusPush(BaseModel):
    model_config = ConfigDict(extra="ignore")
    groups: list[_StatusGroup]


class _StatusFailsafe(BaseModel):
    model_config = ConfigDict(extra="ignore")
    active: bool


class _StatusView(BaseModel):
    """The part of the writer's ``GET /status`` a controller taking over reads (validated at the edge)."""

    model_config = ConfigDict(extra="ignore")
    failsafe: _StatusFailsafe
    last_push: _StatusPush | None


class Pusher(Protocol):
    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]: ...

    def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
        """What each writer holds (one entry per writer, in order), read within ``deadline_seconds`` in all
        (a writer not read by then is an error); a pusher that reaches none returns []."""
        ...


class WriterDirectory(Protocol):
    """Where the writers are right now."""

    def writers(self) -> list[str]: ...


def read_token(path: Path | None) -> str | None:
    """The bearer token: the file's first line (whitespace stripped); a missing or empty file is a config error.

    The writers accept every line of the same file (a rotation lists the new token beside the old one), the
    controller sends the first.
    """
    if path is None:
        return None
    try:
        token = path.read_text().strip().split("\n", 1)[0].strip()
    except OSError as e:
        raise ConfigError(str(path), [f"token_file {path}: cannot read: {e.strerror or e}"]) from None
    if not token:
        raise ConfigError(str(path), [f"token_file {path}: is empty"])
    return token


class HttpPusher:
    """``PUT /v1/targets`` to every writer, over one connection pool that lives as long as the pusher.

    What makes a tick cheap at thousands of writers (measured by
    ``benchmarks/scale.py``, figures in the README's "Scale" section):

    * the body is serialized once per tick, not once per writer;
    * connections are kept alive across ticks (one per writer, idle for at
      most ``idle_seconds``), so a steady tick costs one request per writer
      and no TCP or TLS handshake; the writer keeps them open longer than an
      interval (``drcio-writer`` serves with a 75 s keep-alive);
    * no cyclic garbage collection while the requests are in flight;
    * at most ``max_in_flight`` requests are outstanding at once, so a
      10,000-node tick does not open 10,000 sockets in the same instant, and
      each writer's deadline starts when its own request starts;
    * the client is aiohttp on uvloop where installed: about a third of
      httpx's CPU per request (``benchmarks/http_client_cpu.py``), and the
      client's CPU is what bounds a controller replica.

    A pusher owns an event loop and the pool: call :meth:`close` (or use it
    as a context manager) when done. ``verify`` is the TLS setting used for
    ``https://`` writers: ``True`` (system CA bundle), ``False`` (no check;
    tests only) or an :class:`ssl.SSLContext` (custom CA, client certificate
    for mTLS), built by the caller.
    """

    def __init__(
        self,
        *,
        token: str | None,
        timeout_seconds: float,
        verify: ssl.SSLContext | bool = True,
        max_in_flight: int = 256,
        idle_seconds: float = 60.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.token = token
        self.timeout_seconds = timeout_seconds
        self.verify = verify
        self.max_in_flight = max_in_flight
        self.idle_seconds = idle_seconds
        self._loop = _new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._connector: _CountingConnector | None = None
        #: Parsed target URLs per writer, kept across ticks (parsing costs as much as sending).
        self._urls: dict[str, URL] = {}

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far; a steady tick to known writers opens none."""
        return self._connector.opened if self._connector is not None else 0

    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        if not writers:
            return []
        payload = body.model_dump_json().encode()  # once per tick, shared by every request
        # No cyclic GC during the fan-out: with thousands of requests in flight,
        # allocation-triggered collections rescan them again and again (measured at
        # 10,000 writers: 38% of the pusher's CPU, benchmarks/scale.py). A tick's
        # garbage is freed by reference counting; the rest at the next collection.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._loop.run_until_complete(self._push_all(writers, payload))
        finally:
            if gc_was_enabled:
                gc.enable()

    def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
        if not writers:
            return []
        read = self._loop.run_until_complete(self._fan_out(writers, self._read_one, deadline_seconds=deadline_seconds))
        late = f"not read within the take-over's {deadline_seconds:g} s"
        return [r if r is not None else InForce(w, error=late) for w, r in zip(writers, read)]

    def close(self) -> None:
        """Close the pooled connections and the event loop."""
        if self._loop.is_closed():
            return
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
            self._session = None
        self._loop.close()

    def __enter__(self) -> HttpPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Content-Type": "application/json"}
            if self.token is not None:
                headers["Authorization"] = f"Bearer {self.token}"
            self._connector = _CountingConnector(
                limit=0,  # the semaphore bounds what is in flight; the pool keeps one idle connection per writer
                keepalive_timeout=self.idle_seconds,
                ssl=self.verify,
            )
            self._session = aiohttp.ClientSession(connector=self._connector, headers=headers, raise_for_status=False)
        return self._session

    def _url(self, writer: str) -> URL:
        url = self._urls.get(writer)
        if url is None:
            if len(self._urls) > 100_000:  # writers come and go; do not keep every one ever seen
                self._urls.clear()
            url = self._urls[writer] = URL(writer.rstrip("/") + TARGETS_PATH)
        return url

    async def _push_all(self, writers: Sequence[str], payload: bytes) -> list[PushResult]:
        done = await self._fan_out(writers, lambda client, timeout, writer: self._push_one(client, timeout, writer, payload))
        return [r for r in done if r is not None]

    async def _fan_out(
        self, writers: Sequence[str], one: Callable[[aiohttp.ClientSession, aiohttp.ClientTimeout, str], Awaitable[_T]],
        *, deadline_seconds: float | None = None,
    ) -> list[_T | None]:
        """``one`` for every writer, at most ``max_in_flight`` at once; results in the writers' order.

        With ``deadline_seconds``, whatever is unfinished then is cancelled and stays None.
        """
        client = self._client()
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        results: list[_T | None] = [None] * len(writers)
        todo = iter(enumerate(writers))

        # max_in_flight workers share one queue of writers: the bound on what is in
        # flight, without a task per writer waiting on a semaphore (10,000 of them).
        async def worker() -> None:
            for i, writer in todo:
                results[i] = await one(client, timeout, writer)

        workers = asyncio.gather(*(worker() for _ in range(min(self.max_in_flight, len(writers)))))
        try:
            await asyncio.wait_for(workers, deadline_seconds)
        except asyncio.TimeoutError:
            pass  # wait_for cancelled the workers; what they finished is in results
        return results

    async def _read_one(self, client: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout, writer: str) -> InForce:
        try:
            async with client.get(URL(writer.rstrip("/") + STATUS_PATH), timeout=timeout) as resp:
                content = await resp.read()
        except asyncio.TimeoutError:
            return InForce(writer, error=f"no answer within {self.timeout_seconds}s")
        except (aiohttp.ClientError, OSError) as e:
            return InForce(writer, error=f"{type(e).__name__}: {e}"[:300])
        if resp.status != 200:
            return InForce(writer, error=f"HTTP {resp.status}: {content[:200].decode('utf-8', 'replace')}")
        try:
            view = _StatusView.model_validate_json(content)
        except ValidationError as e:
            return InForce(writer, error=f"malformed status: {e.errors()[:2]}"[:300])
        groups = view.last_push.groups if view.last_push is not None else []
        return InForce(writer, {g.name: g.level for g in groups if g.level is not None},
                       failsafe_active=view.failsafe.active, pushed=view.last_push is not None)

    async def _push_one(
        self, client: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout, writer: str, payload: bytes
    ) -> PushResult:
        try:
            # ``total`` bounds the whole exchange (connect, send, answer), so a
            # writer trickling bytes cannot hold the tick beyond its deadline.
            async with client.put(self._url(writer), data=payload, timeout=timeout) as resp:
                content = await resp.read()
                return _classify(writer, resp.status, content)
        except asyncio.TimeoutError:
            return PushResult(writer, "timeout", detail=f"no answer within {self.timeout_seconds}s")
        except aiohttp.ClientError as e:
            return PushResult(writer, "unreachable", detail=f"{type(e).__name__}: {e}"[:300])
        except OSError as e:  # e.g. EMFILE: too many open files for the pool
            return PushResult(writer, "unreachable", detail=f"{type(e).__name__}: {e}"[:300])


class _CountingConnector(aiohttp.TCPConnector):
    """aiohttp's connector, counting the connections it opens (cheaper than a TraceConfig on every request)."""

    opened = 0

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        proto = await super()._create_connection(*args, **kwargs)
        self.opened += 1
        return proto


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (less CPU per request), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; the fallback keeps pure-Python installs working
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never above the hard limit); returns the soft limit.

    The pool keeps one connection per writer, so a controller for N writers
    needs N file descriptors plus a few; the common soft default of 1024 would
    make pushes fail with EMFILE beyond ~1000 nodes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if limit > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        return limit
    return soft


def _classify(writer: str, code: int, content: bytes) -> PushResult:
    if code == 200:
        try:
            parsed = PushResponse.model_validate_json(content)
        except ValidationError as e:
            return PushResult(writer, "error", code, detail=f"writer answered 200 with a malformed body: {e.errors()[:2]}")
        bad = [r for r in parsed.results if r.outcome == "error"]
        return PushResult(
            writer,
            "error" if bad else "ok",
            code,
            node=parsed.node,
            results=tuple(parsed.results),
            detail="; ".join(f"{r.cgroup}: {r.detail}" for r in bad)[:500],
        )
    detail = content[:500].decode("utf-8", "replace")
    outcome: PushOutcome
    if code == 401 or code == 403:
        outcome = "unauthorized"
    elif code == 409:
        outcome = "stale"
    elif 400 <= code < 500:
        outcome = "rejected"
    else:
        outcome = "error"
    return PushResult(writer, outcome, code, detail=detail)


class DryRunPusher:
    """Used for ``--dry-run`` and ``mode: dry-run``: records what would be pushed, changes nothing."""

    def __init__(self) -> None:
        self.bodies: list[TargetsPush] = []

    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        self.bodies.append(body)
        return [PushResult(w, "dry_run", detail="dry run: nothing pushed") for w in writers]

    def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
        return []  # a dry run contacts no writer, so it starts from the fail-safe level


class StaticWriters:
    def __init__(self, urls: Sequence[str]) -> None:
        self._urls = list(urls)

    def writers(self) -> list[str]:
        return list(self._urls)


class KubernetesWriterDirectory:
    """The ready endpoints of the writer Service, from its EndpointSlices (one writer per node).

    ``api`` is a ``kubernetes.client.DiscoveryV1Api``-like object. A failed
    listing keeps the last known set (logged), so an API-server blip does not
    stop actuation. Every listing has a deadline (``timeout_seconds``): the
    client's default is none, and a half-open connection to the API server
    would stop the loop inside its tick while the leader keeps its Lease.
    """

    def __init__(
        self, *, namespace: str, service: str, port: int, scheme: str = "http", api: Any | None = None,
        api_factory: Callable[[], Any] | None = None, timeout_seconds: float = 2.0,
    ) -> None:
        self.namespace, self.service, self.port, self.scheme = namespace, service, port, scheme
        self.timeout_seconds = timeout_seconds
        self._api = api
        self._api_factory = api_factory or _in_cluster_discovery_api
        self._last: list[str] = []
        self._nodes: dict[str, str] = {}

    def node_of(self, url: str) -> str:
        """The node a writer URL runs on (the endpoint's ``nodeName``; its address if unknown)."""
        return self._nodes.get(url) or urlsplit(url).netloc

    def writers(self) -> list[str]:
        try:
            if self._api is None:
                self._api = self._api_factory()
            slices = self._api.list_namespaced_endpoint_slice(
                self.namespace, label_selector=f"kubernetes.io/service-name={self.service}",
                _request_timeout=self.timeout_seconds,
            )
        except Exception as e:  # the Kubernetes client raises many types; all mean "listing failed"
            log.warning("listing writer endpoints failed, keeping %d known writers: %s", len(self._last), e)
            return list(self._last)
        urls = set()
        nodes: dict[str, str] = {}
        for s in slices.items or []:
            for ep in s.endpoints or []:
                ready = ep.conditions is None or ep.conditions.ready is not False
                if not ready:
                    continue
                for addr in ep.addresses or []:
                    host = f"[{addr}]" if ":" in addr else addr
                    url = f"{self.scheme}://{host}:{self.port}"
                    urls.add(url)
                    node = getattr(ep, "node_name", None)
                    if node:
                        nodes[url] = node
        self._last = sorted(urls)
        self._nodes = nodes
        return list(self._last)


def _in_cluster_discovery_api() -> Any:
    from kubernetes import client, config

    config.load_incluster_config()
    return client.DiscoveryV1Api()
