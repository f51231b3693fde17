"""Hostile and broken pushes: refused with 4xx and an ErrorResponse, and nothing is written.

Every case runs against the real HTTP server on loopback and compares the
whole fake cgroup tree before and after.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.core.result import Ok
from hypothesis import HealthCheck, given, settings

from tests.writer.conftest import TOKEN, WriterUnderTest, make_writer, push_body, serving
from writer.api import MAX_BODY_BYTES
from writer.server import build_app


def _assert_refused(w: WriterUnderTest, r: httpx.Response, status: int, before: dict[str, str]) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"error", "detail"} and body["error"]
    assert w.tree.snapshot() == before
    return body


@pytest.mark.parametrize(
    "token",
    [None, "wrong", TOKEN + "x", TOKEN[:-1]],
    ids=["no-token", "wrong-token", "token-plus-one", "token-prefix"],
)
def test_a_push_without_the_right_token_is_401_and_writes_nothing(writer_v2: WriterUnderTest, token: str | None) -> None:
    before = writer_v2.tree.snapshot()
    r = writer_v2.put(push_body(), token=token)
    _assert_refused(writer_v2, r, 401, before)
    assert r.headers["www-authenticate"] == "Bearer"
    assert writer_v2.metric("drcio_pushes_total", {"result": "unauthorized"}) == 1


@pytest.mark.parametrize(
    "header",
    [f"Basic {TOKEN}", "Bearer", TOKEN, f"Token {TOKEN}"],
    ids=["basic-scheme", "bearer-without-token", "bare-token", "other-scheme"],
)
def test_a_malformed_authorization_header_is_401(writer_v2: WriterUnderTest, header: str) -> None:
    before = writer_v2.tree.snapshot()
    r = httpx.put(f"{writer_v2.url}/v1/targets", json=push_body(), headers={"Authorization": header})
    _assert_refused(writer_v2, r, 401, before)


def test_the_token_is_checked_before_the_body_is_parsed(writer_v2: WriterUnderTest) -> None:
    before = writer_v2.tree.snapshot()
    r = writer_v2.put(b"{not json", token="wrong")
    _assert_refused(writer_v2, r, 401, before)


def _group(**over: Any) -> dict[str, Any]:
    return push_body(**over)


BAD_BODIES = [
    pytest.param(b"{not json", 400, "", id="malformed-json"),
    pytest.param(b"", 400, "", id="empty-body"),
    pytest.param(b"[]", 422, "", id="not-an-object"),
    pytest.param({**push_body(), "extra": 1}, 422, "extra", id="unknown-top-level-field"),
    pytest.param(_group(surprise=True), 422, "surprise", id="unknown-group-field"),
    pytest.param(_group(io_max={"rbps": 0}), 422, "rbps", id="zero-bandwidth"),
    pytest.param(_group(io_max={"rbps": -5}), 422, "rbps", id="negative-bandwidth"),
    pytest.param(_group(io_max={"rbps": 2**70}), 422, "rbps", id="huge-bandwidth"),
    pytest.param(_group(io_max={"rbps": "10M"}), 422, "rbps", id="string-bandwidth"),
    pytest.param(_group(io_weight=0), 422, "io_weight", id="weight-too-low"),
    pytest.param(_group(io_weight=10_001), 422, "io_weight", id="weight-too-high"),
    pytest.param(_group(level=1.5), 422, "level", id="level-out-of-range"),
    pytest.param(push_body(ttl=0), 422, "lease_ttl_seconds", id="zero-ttl"),
    pytest.param({**push_body(), "generation": -1}, 422, "generation", id="negative-generation"),
    pytest.param(_group(selector={"group-id": "../../etc"}), 422, "selector", id="dotdot-selector-value"),
    pytest.param(_group(selector={"../x": "lp"}), 422, "selector", id="dotdot-selector-key"),
    pytest.param(_group(selector={"a/b/c": "lp"}), 422, "selector", id="slashy-selector-key"),
    pytest.param(_group(selector={}), 422, "selector", id="empty-selector"),
    pytest.param(_group(selector={"group-id": "lp\n"}), 422, "selector", id="selector-value-with-a-trailing-newline"),
    pytest.param(_group(selector={"group-id\n": "lp"}), 422, "selector", id="selector-key-with-a-trailing-newline"),
    pytest.param(_group(devices=["254:0\n"]), 422, "devices", id="device-with-a-trailing-newline"),
    pytest.param(_group(devices=["../254:0"]), 422, "devices", id="path-like-device"),
    pytest.param(_group(devices=["254:0/../../x"]), 422, "devices", id="device-with-path-suffix"),
    pytest.param(_group(devices=["sda"]), 422, "devices", id="device-name-not-number"),
    pytest.param(_group(devices=[{"mount": "relative/path"}]), 422, "devices", id="relative-mount"),
    pytest.param(_group(devices=[{"mount": "/mnt/../etc"}]), 422, "devices", id="dotdot-mount"),
    pytest.param(_group(name="../lp"), 422, "name", id="path-like-group-name"),
    pytest.param({**push_body(), "groups": [push_body()["groups"][0]] * 2}, 422, "unique", id="duplicate-groups"),
]


@pytest.mark.parametrize(("body", "status", "mentions"), BAD_BODIES)
def test_a_bad_body_is_refused_and_writes_nothing(writer_v2: WriterUnderTest, body: Any, status: int, mentions: str) -> None:
    before = writer_v2.tree.snapshot()
    answer = _assert_refused(writer_v2, writer_v2.put(body), status, before)
    assert mentions in " ".join(answer["detail"])
    assert writer_v2.metric("drcio_pushes_total", {"result": "invalid"}) == 1


def test_validation_lists_every_error_with_its_location(writer_v2: WriterUnderTest) -> None:
    body = push_body(io_max={"rbps": 0, "wbps": -1}, io_weight=0)
    answer = writer_v2.put(body).json()
    assert sorted(answer["detail"]) == sorted(
        [
            "groups.0.io_max.rbps: Input should be greater than or equal to 1",
            "groups.0.io_max.wbps: Input should be greater than or equal to 1",
            "groups.0.io_weight: Input should be greater than or equal to 1",
        ]
    )


def test_a_body_declared_too_large_is_413_and_writes_nothing(writer_v2: WriterUnderTest) -> None:
    before = writer_v2.tree.snapshot()
    padded = push_body(controller="x" * 100)
    blob = b" " * (MAX_BODY_BYTES + 1)
    r = writer_v2.put(blob + httpx.Request("PUT", "http://x", json=padded).content)
    _assert_refused(writer_v2, r, 413, before)
    assert writer_v2.metric("drcio_pushes_total", {"result": "too_large"}) == 1


def test_a_chunked_body_growing_too_large_is_413_and_writes_nothing(writer_v2: WriterUnderTest) -> None:
    before = writer_v2.tree.snapshot()

    def chunks() -> Any:
        yield b'{"generation": 1, "lease_ttl_seconds": 5, "groups": [], "controller": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    r = httpx.put(f"{writer_v2.url}/v1/targets", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    _assert_refused(writer_v2, r, 413, before)


def test_a_stale_generation_is_409_and_writes_nothing(writer_v2: WriterUnderTest) -> None:
    assert writer_v2.put(push_body(5)).status_code == 200
    before = writer_v2.tree.snapshot()
    r = writer_v2.put(push_body(4, io_max={"rbps": 1}))
    _assert_refused(writer_v2, r, 409, before)
    assert writer_v2.metric("drcio_pushes_total", {"result": "stale"}) == 1
    assert writer_v2.get("/status").json()["lease"]["generation"] == 5


def test_without_a_token_configured_the_api_is_open_only_by_explicit_choice(fake_v2: Any) -> None:
    fake_v2.group("drcio-demo/lp")
    w = make_writer(fake_v2, token=None)
    with serving(build_app(w.state)) as url:
        w.url = url
        assert w.put(push_body(), token=None).status_code == 200


# ---------------------------------------------------------------- fuzzing the OpenAPI schema


def test_the_writer_serves_no_api_docs_or_schema(writer_v2: WriterUnderTest) -> None:
    """Without the token only /health and /metrics answer; FastAPI's docs pages and schema are off."""
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert writer_v2.get(path, token=None).status_code == 404, path
    assert writer_v2.get("/health", token=None).status_code == 200


def test_fuzzing_the_openapi_schema_finds_no_server_error(writer_v2: WriterUnderTest) -> None:
    # The app's own schema (it does not serve it), against the live server.
    schema = schemathesis.openapi.from_dict(build_app(writer_v2.state).openapi())
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"schema operation does not load: {result.err()}"
        operations.append(result.ok())
    assert {op.path for op in operations} >= {"/v1/targets", "/status", "/metrics", "/health"}
    server_errors: list[str] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            for token in (TOKEN, "wrong"):
                response = case.call(base_url=writer_v2.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
                if response.status_code >= 500:
                    server_errors.append(f"{case.method} {case.path}: {response.status_code} {response.text[:300]}")

        call()
    assert server_errors == []
    # The fuzzer did reach both the auth check and the body validation.
    assert (writer_v2.metric("drcio_pushes_total", {"result": "unauthorized"}) or 0) > 0
    assert (writer_v2.metric("drcio_pushes_total", {"result": "invalid"}) or 0) > 0
