"""TLS between the controller and the writers, and secrets rotated on disk (issue 9).

Real parts: the writer app served by uvicorn over HTTPS on loopback, the
controller's real push client, certificates made by openssl at test time,
and files rewritten the way a rotated Secret is.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from controller.config import TlsClientConfig
from controller.push import HttpPusher, read_token
from controller.tls import ReloadingPusher, client_context, tls_files
from tests.controller.conftest import RecordedWriter, recorded_writer  # noqa: F401 (fixture)
from tests.tls_certs import Ca, Leaf, make_ca
from tests.writer.conftest import FakeTree, fake_v2, make_writer, push_body  # noqa: F401 (fixture)
from writer.api import TargetsPush
from writer.server import build_app
from writer.tls import CertReloader, TlsServerConfig, TokenFile, uvicorn_config

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Ca, Ca]:
    return make_ca(tmp_path / "pki", "ca-one"), make_ca(tmp_path / "pki", "ca-two")


@contextmanager
def https_writer(tree: FakeTree, tls: TlsServerConfig, token_file: Path | None = None) -> Iterator[tuple[str, CertReloader]]:
    tree.group("drcio-demo/lp")
    w = make_writer(tree)
    if token_file is not None:
        w.state.token_source = TokenFile(token_file, read_token(token_file) or "")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(build_app(w.state), host="127.0.0.1", port=port, log_level="warning", tls=tls)
    config.load()
    assert config.ssl is not None
    reloader = CertReloader(config.ssl, tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{port}", reloader
    finally:
        reloader.stop()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop within 10 s (a client left a connection open?)"


def _push(url: str, verify: object, token: str = TOKEN, generation: int = 1) -> str:
    pusher = HttpPusher(token=token, timeout_seconds=3.0, verify=verify)  # type: ignore[arg-type]
    [result] = pusher.push([url], TargetsPush.model_validate(push_body(generation)))
    return result.outcome


def test_the_writer_serves_https_and_the_controller_verifies_it_against_its_ca(fake_v2: FakeTree, pki: tuple[Ca, Ca]) -> None:
    one, two = pki
    leaf = one.issue("writer")
    with https_writer(fake_v2, TlsServerConfig(cert_file=leaf.cert, key_file=leaf.key)) as (url, _):
        assert _push(url, client_context(TlsClientConfig(ca_file=one.cert))) == "ok"
        assert _push(url, client_context(TlsClientConfig(ca_file=two.cert)), generation=2) == "unreachable"  # wrong CA
        assert _push(url, True, generation=3) == "unreachable"  # not in the system trust store
        assert _push(url.replace("https", "http"), True, generation=4) != "ok"  # no plain HTTP on the TLS port


def test_mtls_the_writer_requires_a_client_certificate_signed_by_its_client_ca(fake_v2: FakeTree, pki: tuple[Ca, Ca]) -> None:
    one, two = pki
    server, client, stranger = one.issue("writer"), two.issue("controller"), one.issue("stranger")
    tls = TlsServerConfig(cert_file=server.cert, key_file=server.key, client_ca_file=two.cert)
    with https_writer(fake_v2, tls) as (url, _):
        no_cert = client_context(TlsClientConfig(ca_file=one.cert))
        assert _push(url, no_cert) == "unreachable"
        wrong = client_context(TlsClientConfig(ca_file=one.cert, cert_file=stranger.cert, key_file=stranger.key))
        assert _push(url, wrong) == "unreachable"
        right = client_context(TlsClientConfig(ca_file=one.cert, cert_file=client.cert, key_file=client.key))
        assert _push(url, right) == "ok"


def _replace(src: Leaf, dst: Leaf) -> None:
    """Rotate like a Secret update: new files renamed over the old ones (atomic per file)."""
    for a, b in ((src.cert, dst.cert), (src.key, dst.key)):
        tmp = b.with_suffix(".tmp")
        shutil.copyfile(a, tmp)
        os.replace(tmp, b)


def test_a_rotated_writer_certificate_is_served_from_the_next_connection_without_a_restart(
    fake_v2: FakeTree, pki: tuple[Ca, Ca], tmp_path: Path
) -> None:
    one, two = pki
    old, new = one.issue("writer-old"), two.issue("writer-new")
    served = Leaf(tmp_path / "tls.crt", tmp_path / "tls.key")
    _replace(old, served)
    with https_writer(fake_v2, TlsServerConfig(cert_file=served.cert, key_file=served.key)) as (url, reloader):
        trusts_one = client_context(TlsClientConfig(ca_file=one.cert))
        trusts_two = client_context(TlsClientConfig(ca_file=two.cert))
        assert _push(url, trusts_one) == "ok"
        reloader.start(interval_seconds=0.1)
        _replace(new, served)
        rotated_at = time.monotonic()
        generation = 2
        while _push(url, trusts_two, generation=generation) != "ok":
            generation += 1
            assert time.monotonic() - rotated_at < 5, "the rotated certificate was never served"
        assert reloader.reloads == 1
        assert _push(url, trusts_one, generation=generation + 1) == "unreachable"  # the old chain is gone


def test_a_rotated_token_file_is_honoured_by_the_writer_and_the_controller(
    fake_v2: FakeTree, pki: tuple[Ca, Ca], tmp_path: Path, recorded_writer: RecordedWriter
) -> None:
    one, _ = pki
    leaf = one.issue("writer")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    verify = client_context(TlsClientConfig(ca_file=one.cert))
    with https_writer(fake_v2, TlsServerConfig(cert_file=leaf.cert, key_file=leaf.key), token_file) as (url, _):
        assert _push(url, verify, token=TOKEN) == "ok"
        tmp = tmp_path / "token.new"
        tmp.write_text("rotated-token\n")
        os.replace(tmp, token_file)
        assert _push(url, verify, token=TOKEN, generation=2) == "unauthorized"
        assert _push(url, verify, token="rotated-token", generation=3) == "ok"

    # The controller side: the pusher is rebuilt with the new token when the file changes. It pushes
    # (plain HTTP) to a real writer that follows the same file, so each token must be the one in force.
    recorded_writer.writer.state.token_source = TokenFile(token_file, read_token(token_file) or "")

    def build() -> HttpPusher:
        return HttpPusher(token=read_token(token_file), timeout_seconds=2.0)

    with closing(ReloadingPusher(build, [token_file])) as pusher:
        [first] = pusher.push([recorded_writer.url], TargetsPush.model_validate(push_body(1)))
        tmp.write_text("third-token\n")
        os.replace(tmp, token_file)
        [second] = pusher.push([recorded_writer.url], TargetsPush.model_validate(push_body(2)))
    assert [h["Authorization"] for h in recorded_writer.headers] == ["Bearer rotated-token", "Bearer third-token"]
    assert [first.outcome, second.outcome] == ["ok", "ok"]
    assert recorded_writer.pushes("accepted") == 2 and recorded_writer.pushes("unauthorized") == 0
    assert pusher.reloads == 1


def test_a_rotation_lists_both_tokens_so_no_writer_refuses_the_controller_meanwhile(
    tmp_path: Path, recorded_writer: RecordedWriter
) -> None:
    # The kubelet refreshes a Secret on each node in its own time. Rotating in three steps of the same file
    # (old+new, new+old, new), every writer accepts what the controller sends at every step.
    token_file = tmp_path / "token"
    recorded_writer.writer.state.token_source = None
    sent: list[str | None] = []
    generation = 0
    for content, writers_at in (("old\n", ["old\nnew\n", "old\n"]), ("old\nnew\n", ["new\nold\n", "old\n"]),
                                ("new\nold\n", ["old\nnew\n", "new\n"]), ("new\n", ["new\nold\n", "new\n"])):
        token_file.write_text(content)
        controller_token = read_token(token_file)
        sent.append(controller_token)
        for writer_file in writers_at:  # a writer one step behind the controller, or one step ahead
            recorded_writer.writer.state.token = writer_file
            generation += 1
            with closing(HttpPusher(token=controller_token, timeout_seconds=2.0)) as pusher:
                [result] = pusher.push([recorded_writer.url], TargetsPush.model_validate(push_body(generation)))
            assert result.outcome == "ok", (content, writer_file, result)
    assert sent == ["old", "old", "new", "new"]  # the first line
    recorded_writer.writer.state.token = "new\n"
    with closing(HttpPusher(token="old", timeout_seconds=2.0)) as stale:
        [refused] = stale.push([recorded_writer.url], TargetsPush.model_validate(push_body(generation + 1)))
    assert refused.outcome == "unauthorized"  # once the old line is gone, so is the old token


def test_the_controller_reloads_its_ca_when_the_file_changes(fake_v2: FakeTree, pki: tuple[Ca, Ca], tmp_path: Path) -> None:
    one, two = pki
    leaf = two.issue("writer")
    ca_file = tmp_path / "ca.crt"
    shutil.copyfile(one.cert, ca_file)
    tls = TlsClientConfig(ca_file=ca_file)
    pusher = ReloadingPusher(lambda: HttpPusher(token=TOKEN, timeout_seconds=3.0, verify=client_context(tls)), tls_files(tls))
    # Closed before the writer stops: its open keep-alive connection would hold uvicorn's graceful
    # shutdown until https_writer gave up on it (10 s).
    with https_writer(fake_v2, TlsServerConfig(cert_file=leaf.cert, key_file=leaf.key)) as (url, _), closing(pusher):
        [r] = pusher.push([url], TargetsPush.model_validate(push_body(1)))
        assert r.outcome == "unreachable"
        tmp = tmp_path / "ca.new"
        shutil.copyfile(two.cert, tmp)
        os.replace(tmp, ca_file)
        [r] = pusher.push([url], TargetsPush.model_validate(push_body(2)))
        assert r.outcome == "ok"


def test_health_and_metrics_answer_over_https_without_a_token_status_does_not(fake_v2: FakeTree, pki: tuple[Ca, Ca]) -> None:
    one, _ = pki
    leaf = one.issue("writer")
    with https_writer(fake_v2, TlsServerConfig(cert_file=leaf.cert, key_file=leaf.key)) as (url, _):
        verify = client_context(TlsClientConfig(ca_file=one.cert))
        with httpx.Client(verify=verify) as c:
            assert c.get(f"{url}/health").status_code == 200
            assert c.get(f"{url}/metrics").status_code == 200
            assert c.get(f"{url}/status").status_code == 401
