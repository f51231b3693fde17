"""``drcio-writer``: the config file, its units and errors, the token rule, and a real start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.writer.conftest import FakeTree, push_body
from writer.api import TargetsPush
from writer.cgroups import read_io_max
from writer.cli import build_state, main
from writer.config import ConfigError, WriterConfig, load_config, parse_duration, parse_size

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "writer.yaml"
MiB = 1024 * 1024


def test_the_example_file_loads_as_written() -> None:
    c = load_config(EXAMPLE)
    assert c.listen == "127.0.0.1:9100" and c.token_file == Path("/var/run/drcio/token") and c.cgroup_root == "auto"
    assert c.discovery.local is not None
    assert [(e.name, e.path, dict(e.labels)) for e in c.discovery.local] == [
        ("lp-batch", "drcio-demo/lp", {"group-id": "lp"}),
        ("hp-gnn", "drcio-demo/hp", {"group-id": "hp"}),
    ]
    assert (c.failsafe.mode, c.failsafe.ttl, c.failsafe.rbps, c.failsafe.wbps) == ("static", 30.0, 200 * MiB, 50 * MiB)


def test_the_defaults_are_pinned() -> None:
    c = WriterConfig.model_validate({"discovery": {"local": []}})
    assert (c.listen, c.token_file, c.cgroup_root, c.reconcile_interval, c.driver, c.include_dm) == (
        "127.0.0.1:9100", None, "auto", 10.0, "auto", False
    )
    f = c.failsafe
    assert (f.mode, f.ttl, f.rbps, f.wbps, f.riops, f.wiops, f.devices) == ("static", 30.0, 200 * MiB, 50 * MiB, None, None, "auto")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [pytest.param("500ms", 0.5, id="ms"), pytest.param("30s", 30.0, id="s"), pytest.param("2m", 120.0, id="m"),
     pytest.param("1.5s", 1.5, id="fraction")],
)
def test_durations_take_ms_s_m(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [pytest.param("200M", 200 * MiB, id="M"), pytest.param("10K", 10240, id="K"), pytest.param("1G", 1024**3, id="G"),
     pytest.param("max", None, id="max"), pytest.param(4096, 4096, id="bare-bytes")],
)
def test_sizes_take_k_m_g_in_powers_of_1024_or_max(value: object, size: int | None) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("bad", ["30", "30h", "-1s", "", "soon"], ids=["no-unit", "hours", "negative", "empty", "word"])
def test_a_bad_duration_says_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValueError, match="ms, s or m"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["200MB", "1T", "0", "-5M", True], ids=["MB", "tera", "zero", "negative", "bool"])
def test_a_bad_size_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "writer.yaml"
    p.write_text(text)
    return p


def test_every_config_error_is_reported_at_once_with_file_and_field(tmp_path: Path) -> None:
    p = _write(tmp_path, """
listen: "nowhere"
discovery:
  local:
    - {name: lp, path: ../escape, labels: {group-id: lp}}
failsafe: {mode: panic, ttl: 30, rbps: 200MB}
surprise: 1
""")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    errors = info.value.errors
    for field in ("listen", "discovery.local[0].path", "failsafe.mode", "failsafe.ttl", "failsafe.rbps", "surprise"):
        assert any(e.startswith(f"{p}: {field}:") for e in errors), (field, errors)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param("discovery: {}", "discovery", id="no-discovery-kind"),
        pytest.param("{listen: ':0', discovery: {local: []}}", "listen", id="port-zero"),
        pytest.param("discovery: {local: [], kubernetes: {}}", "discovery", id="both-discovery-kinds"),
        pytest.param("reconcile_interval: 0s\ndiscovery: {local: []}", "reconcile_interval", id="zero-interval"),
        pytest.param("discovery: {local: [{name: x, path: /abs}]}", "discovery.local[0].path", id="absolute-path"),
    ],
)
def test_bad_config_exits_2_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    p = _write(tmp_path, text)
    result = CliRunner().invoke(main, ["--config", str(p), "--insecure-no-auth"])
    assert result.exit_code == 2
    assert f"{p}: {field}" in result.output


def test_not_yaml_exits_2_with_the_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "listen: [unclosed\n")
    result = CliRunner().invoke(main, ["--config", str(p)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def _config(tmp_path: Path, tree: FakeTree, *, token: str | None = "tok-123", listen: str = "127.0.0.1:9100") -> Path:
    token_line = ""
    if token is not None:
        (tmp_path / "token").write_text(f"  {token}\n")
        token_line = f"token_file: {tmp_path / 'token'}\n"
    return _write(tmp_path, f"""
listen: "{listen}"
{token_line}cgroup_root: {tree.root}
discovery:
  local:
    - {{name: lp-batch, path: drcio-demo/lp, labels: {{group-id: lp}}}}
failsafe: {{mode: static, ttl: 30s, rbps: 200M, wbps: 50M}}
""")


@pytest.mark.parametrize(
    ("token", "reason"),
    [pytest.param(None, "token_file is not set", id="no-token-file"), pytest.param("", "is empty", id="empty-token")],
)
def test_without_a_token_the_writer_refuses_to_start(tmp_path: Path, fake_v2: FakeTree, token: str | None, reason: str) -> None:
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path, fake_v2, token=token))])
    assert result.exit_code == 2 and reason in result.output and "--insecure-no-auth" in result.output


def test_a_missing_token_file_exits_2(tmp_path: Path, fake_v2: FakeTree) -> None:
    p = _config(tmp_path, fake_v2)
    (tmp_path / "token").unlink()
    result = CliRunner().invoke(main, ["--config", str(p)])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_a_bad_listen_override_exits_2(tmp_path: Path, fake_v2: FakeTree) -> None:
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path, fake_v2)), "--listen", "localhost"])
    assert result.exit_code == 2 and "--listen" in result.output


def test_kubernetes_discovery_without_a_node_name_exits_2(tmp_path: Path, fake_v2: FakeTree, monkeypatch: Any) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    p = _write(tmp_path, f"cgroup_root: {fake_v2.root}\ndiscovery: {{kubernetes: {{node_name_env: DRCIO_TEST_NODE}}}}\n")
    result = CliRunner().invoke(main, ["--config", str(p), "--insecure-no-auth"])
    assert result.exit_code == 2 and "DRCIO_TEST_NODE" in result.output


def test_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in ("--config", "--listen", "--insecure-no-auth", "--node-name", "NODE_NAME", "--log-level"):
        assert option in result.output


def test_state_file_in_the_config_carries_the_lp_cgroups_to_the_next_writer(tmp_path: Path, fake_v2: FakeTree) -> None:
    d = fake_v2.group("drcio-demo/lp")
    state = tmp_path / "lp-cgroups.json"

    def writer(role: str) -> Any:
        text = _config(tmp_path, fake_v2).read_text().replace("group-id: lp", f"group-id: {role}")
        config = load_config(_write(tmp_path, f"{text}state_file: {state}\n"))
        return build_state(config, token="tok-123", node_name="node-x").reconciler

    first = writer("lp")
    first.push(TargetsPush.model_validate(push_body()))
    assert fake_v2.read("drcio-demo/lp", "io.max") == "254:0 rbps=10485760 wbps=max riops=max wiops=max\n"
    # Stopped, relabelled HP in the file, started again: its first round lifts the limit it finds in force.
    assert [(r.group, r.outcome) for r in writer("hp").reconcile()] == [("released", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {} and str(d) not in state.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_console_script_serves_and_writes_with_the_token_from_the_file(tmp_path: Path, fake_v2: FakeTree) -> None:
    fake_v2.group("drcio-demo/lp")
    port = _free_port()
    p = _config(tmp_path, fake_v2, listen=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from writer.cli import main; main()", "--config", str(p), "--node-name", "node-x"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1])},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20  # readiness, bounded
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "writer did not come up"
            time.sleep(0.05)
        r = httpx.put(f"{url}/v1/targets", json=push_body(), headers={"Authorization": "Bearer tok-123"})
        assert r.status_code == 200 and r.json()["node"] == "node-x"
        assert fake_v2.read("drcio-demo/lp", "io.max") == "254:0 rbps=10485760 wbps=max riops=max wiops=max\n"
        assert httpx.put(f"{url}/v1/targets", json=push_body(2), headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so a supervisor sees the signal.
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
