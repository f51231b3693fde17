"""The writer's HTTP API (FastAPI): ``PUT /v1/targets``, ``/health``, ``/status``, ``/metrics``.

:mod:`writer.cli` builds a :class:`ServerState` and serves :func:`build_app`
with uvicorn; tests do the same in-process on a loopback port.

The push endpoint reads its body by hand instead of declaring a body
parameter, because the order of checks is part of the security contract and
FastAPI would parse the body before any dependency runs:

1. bearer token, compared in constant time -> 401 (body never read);
2. ``Content-Length`` above :data:`writer.api.MAX_BODY_BYTES` -> 413, then the
   bytes actually received are counted too (a lying or chunked client) -> 413;
3. JSON syntax -> 400; the :class:`writer.api.TargetsPush` model -> 422 listing
   every error with its location;
4. a stale generation -> 409.

Only then does anything reach the cgroup files. Every 4xx/5xx body is an
:class:`writer.api.ErrorResponse`. The request body schema is still published
in ``/openapi.json`` so the API can be fuzzed against it.

``/status`` needs the bearer token too: it names every workload, cgroup
path, namespace, device and the last push, which is a map of the node an
attacker should not get for free. ``/health`` (probes) and ``/metrics``
(Prometheus scrapes) stay open. ``/metrics`` reveals, by design: LP/HP
workload counts, per LP workload ``namespace/name`` and its push group, the
limits and weights in force per device (``MAJ:MIN``), bytes read/written,
the lease state and the last accepted generation and push time. It never
shows the token, cgroup paths, selectors or the controller's identity; a
NetworkPolicy should still restrict who may scrape it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from writer.api import MAX_BODY_BYTES, STATUS_PATH, TARGETS_PATH, ErrorResponse, PushResponse, TargetsPush
from writer.reconcile import Reconciler, StalePush

__all__ = ["ServerState", "build_app"]

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the app serves: the reconciler, its registry, and the token (``None`` = no auth, explicitly)."""

    reconciler: Reconciler
    registry: CollectorRegistry
    token: str | None
    max_body_bytes: int = MAX_BODY_BYTES
    #: Where the current token comes from when it can change (the token file, re-read on change).
    token_source: Callable[[], str] | None = None

    def current_token(self) -> str | None:
        return self.token_source() if self.token_source is not None else self.token


def _error(status: int, error: str, detail: list[str] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=error, detail=detail or [])
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _authorized(state: ServerState, header: str | None) -> bool:
    token = state.current_token()
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    # One token per line of the file, any of them accepted: a rotation adds the new token beside the old, and
    # no writer refuses the controller while the kubelet refreshes the Secret on each node in its own time.
    # compare_digest on bytes, against every line without stopping early: constant time in the tokens' content.
    offered = given.strip().encode()
    accepted = False
    for line in token.splitlines():
        if line.strip():
            accepted |= hmac.compare_digest(offered, line.strip().encode())
    return scheme.lower() == "bearer" and accepted


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def build_app(state: ServerState) -> FastAPI:
    """The FastAPI application over ``state``."""
    # No /docs, /redoc or /openapi.json: a node agent serves its API, its probe and its scrape, nothing
    # else without the token (the schema is app.openapi(), for the tests' fuzzer and anyone reading the code).
    app = FastAPI(title="drcio writer", version="1", description="Per-node cgroup I/O writer of drcio.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    pushes = state.reconciler.metrics.pushes

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request", [f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()])

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error serving %s %s", request.method, request.url.path)
        return _error(500, "internal error", [type(exc).__name__])

    @app.put(
        TARGETS_PATH,
        response_model=PushResponse,
        responses={
            s: {"model": ErrorResponse, "description": d}
            for s, d in (
                (400, "Body is not JSON"),
                (401, "Missing or wrong bearer token"),
                (409, "Stale generation, or a replayed generation with a different body"),
                (413, "Body too large"),
                (422, "Body does not match TargetsPush"),
            )
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TargetsPush"}}},
            }
        },
        summary="Replace the desired I/O limits of every LP group on this node",
    )
    async def put_targets(request: Request) -> Response:
        if not _authorized(state, request.headers.get("authorization")):
            pushes.labels("unauthorized").inc()
            return _error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > state.max_body_bytes):
            pushes.labels("too_large").inc()
            return _error(413, f"body larger than {state.max_body_bytes} bytes")
        raw = await _read_body(request, state.max_body_bytes)
        if raw is None:
            pushes.labels("too_large").inc()
            return _error(413, f"body larger than {state.max_body_bytes} bytes")
        try:
            # One pass in pydantic-core: parsing and validation together (a JSON
            # syntax error comes back as the one error of type json_invalid).
            body = TargetsPush.model_validate_json(raw)
        except ValidationError as err:
            pushes.labels("invalid").inc()
            errors = err.errors()
            if errors and errors[0]["type"] == "json_invalid":
                return _error(400, "body is not valid JSON", [e["msg"] for e in errors])
            return _error(422, "body does not match TargetsPush", [f"{_loc(e['loc'])}: {e['msg']}" for e in errors])
        try:
            # Inline, not in a worker thread: a push is a few pseudo-file reads and
            # writes under /sys/fs/cgroup (no network, nothing that blocks), and the
            # hop to a thread and back cost more CPU than the push itself (0.5 ms of
            # ~1.4 ms per push, measured with benchmarks/scale_fleet.py). Unless a
            # background round holds the reconciler (0.57 s at 1,000 cgroups on v1):
            # then the push waits for it in a thread, and the event loop goes on
            # serving (/health at once; /metrics reads the reconciler, after the round).
            result = state.reconciler.try_push(body)
            if result is None:
                result = await run_in_threadpool(state.reconciler.push, body)
        except StalePush as err:
            return _error(409, "stale generation", [str(err)])
        return Response(result.model_dump_json(), media_type="application/json")

    @app.get("/health", summary="200 while serving")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        STATUS_PATH,
        summary="Workloads, limits in force (read back), lease, errors, config (bearer token required)",
        responses={401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"}},
    )
    async def status(request: Request) -> Response:
        if not _authorized(state, request.headers.get("authorization")):
            return _error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse(await run_in_threadpool(state.reconciler.status))

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        data = await run_in_threadpool(generate_latest, state.registry)
        return Response(content=data, media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        # The push body is read by hand (see the module docstring); publish its schema anyway.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, defs = models_json_schema([(TargetsPush, "validation")], ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
