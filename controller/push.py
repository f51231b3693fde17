"""Pushing targets to the node writers over HTTP, concurrently, each with its own deadline.

Called by the loop once per tick with the whole desired state (every LP
group), which makes pushes level-triggered and idempotent: a writer that
missed a tick is healed by the next one. Writers are pushed concurrently;
each gets ``timeout_seconds`` in total (connect + send + answer), so one slow
or dead writer never delays the others beyond its timeout.

Writer addresses come from a :class:`WriterDirectory`: a static list, or the
EndpointSlices of the writer Service on Kubernetes. ``--dry-run`` swaps in
:class:`DryRunPusher` at wiring time; nothing here branches on dry-run.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from pydantic import ValidationError

from controller.errors import ConfigError
from writer.api import TARGETS_PATH, CgroupResult, PushResponse, TargetsPush

__all__ = [
    "PushOutcome",
    "PushResult",
    "Pusher",
    "HttpPusher",
    "DryRunPusher",
    "WriterDirectory",
    "StaticWriters",
    "KubernetesWriterDirectory",
    "read_token",
]

log = logging.getLogger(__name__)

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


class Pusher(Protocol):
    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]: ...


class WriterDirectory(Protocol):
    """Where the writers are right now."""

    def writers(self) -> list[str]: ...


def read_token(path: Path | None) -> str | None:
    """The bearer token from its file (whitespace stripped); a missing or empty file is a config error."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(str(path), [f"token_file {path}: cannot read: {e.strerror or e}"]) from None
    if not token:
        raise ConfigError(str(path), [f"token_file {path}: is empty"])
    return token


class HttpPusher:
    """``PUT /v1/targets`` to every writer at once, with a per-writer deadline."""

    def __init__(
        self,
        *,
        token: str | None,
        timeout_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.token = token
        self.timeout_seconds = timeout_seconds
        self._transport = transport
        #: TLS verification of the writers (built by controller.tls; True = system trust store).
        self.verify = verify

    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        if not writers:
            return []
        return asyncio.run(self._push_all(writers, body))

    async def _push_all(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = body.model_dump_json().encode()
        timeout = httpx.Timeout(self.timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport, headers=headers, verify=self.verify) as client:
            return list(await asyncio.gather(*(self._push_one(client, w, payload) for w in writers)))

    async def _push_one(self, client: httpx.AsyncClient, writer: str, payload: bytes) -> PushResult:
        url = writer.rstrip("/") + TARGETS_PATH
        try:
            # wait_for bounds the whole exchange: httpx's timeouts are per phase,
            # and a writer trickling bytes could otherwise hold us far longer.
            resp = await asyncio.wait_for(client.put(url, content=payload), timeout=self.timeout_seconds)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return PushResult(writer, "timeout", detail=f"no answer within {self.timeout_seconds}s")
        except httpx.TransportError as e:
            return PushResult(writer, "unreachable", detail=f"{type(e).__name__}: {e}"[:300])
        return _classify(writer, resp)


def _classify(writer: str, resp: httpx.Response) -> PushResult:
    code = resp.status_code
    if code == 200:
        try:
            parsed = PushResponse.model_validate_json(resp.content)
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
    detail = resp.text[:500]
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


class StaticWriters:
    def __init__(self, urls: Sequence[str]) -> None:
        self._urls = list(urls)

    def writers(self) -> list[str]:
        return list(self._urls)


class KubernetesWriterDirectory:
    """The ready endpoints of the writer Service, from its EndpointSlices (one writer per node).

    ``api`` is a ``kubernetes.client.DiscoveryV1Api``-like object. A failed
    listing keeps the last known set (logged), so an API-server blip does not
    stop actuation.
    """

    def __init__(
        self, *, namespace: str, service: str, port: int, scheme: str = "http", api: Any | None = None,
        api_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.namespace, self.service, self.port, self.scheme = namespace, service, port, scheme
        self._api = api
        self._api_factory = api_factory or _in_cluster_discovery_api
        self._last: list[str] = []

    def writers(self) -> list[str]:
        try:
            if self._api is None:
                self._api = self._api_factory()
            slices = self._api.list_namespaced_endpoint_slice(
                self.namespace, label_selector=f"kubernetes.io/service-name={self.service}"
            )
        except Exception as e:  # the Kubernetes client raises many types; all mean "listing failed"
            log.warning("listing writer endpoints failed, keeping %d known writers: %s", len(self._last), e)
            return list(self._last)
        urls = set()
        for s in slices.items or []:
            for ep in s.endpoints or []:
                ready = ep.conditions is None or ep.conditions.ready is not False
                if not ready:
                    continue
                for addr in ep.addresses or []:
                    host = f"[{addr}]" if ":" in addr else addr
                    urls.add(f"{self.scheme}://{host}:{self.port}")
        self._last = sorted(urls)
        return list(self._last)


def _in_cluster_discovery_api() -> Any:
    from kubernetes import client, config

    config.load_incluster_config()
    return client.DiscoveryV1Api()
