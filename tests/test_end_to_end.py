"""The whole loop with every part real: an HP-like exporter scraped by the real
Prometheus, ``drcio-controller --once`` as a user runs it, the real
``drcio-writer`` over HTTP with the token from its file, and the kernel's
cgroup file the limit lands in."""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.config import PrometheusConfig, SloConfig
from controller.push import HttpPusher
from controller.sensor import PrometheusSensor
from experiments.prometheus_server import PrometheusServer, ScrapeTarget, free_port
from tests.controller.conftest import (  # noqa: F401 (fixtures shared with the controller tests)
    BUCKET_WIDTH,
    SCRAPE_INTERVAL,
    LatencyExporter,
    exponential_inverse_cdf,
    latency_exporter,
    prometheus_for,
)
from writer.cgroups import Hierarchy, WriterError, detect_hierarchy
from writer.devices import DeviceError, resolve_devices
from writer.api import GroupTarget, IoMax, TargetsPush
from writer.groups import create_group, move_pid, remove_group

pytestmark = [pytest.mark.prometheus, pytest.mark.kernel]

M = 1024**2


def _disk_of_tmp() -> str:
    """The whole disk behind the temp dir, from its ``st_dev`` (never a fixed ``254:0``)."""
    st = os.stat(tempfile.gettempdir())
    try:
        [disk] = resolve_devices([f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"])
    except (DeviceError, ValueError) as e:
        return f"none ({e})"
    return disk


DISK = _disk_of_tmp()


def _hierarchy_or_skip() -> Hierarchy:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    try:
        h = detect_hierarchy("auto")
    except WriterError as e:
        pytest.skip(f"no cgroup I/O controller: {e}")
    if not Path(f"/sys/dev/block/{DISK}").exists():
        pytest.skip(f"the temp dir is on no real block device: {DISK}")
    return h


@pytest.fixture
def lp_cgroup() -> Iterator[tuple[Hierarchy, str, Path]]:
    h = _hierarchy_or_skip()
    top = f"drcio-e2e-{secrets.token_hex(4)}"
    rel = f"{top}/lp"
    path = create_group(h, rel)
    try:
        yield h, rel, path
    finally:
        remove_group(h, rel)
        remove_group(h, top)
        assert not (h.root / top).exists()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text(secrets.token_hex(16) + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def writer_url(tmp_path: Path, lp_cgroup: tuple[Hierarchy, str, Path], token_file: Path) -> Iterator[str]:
    _, rel, _ = lp_cgroup
    port = free_port()
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "token_file": str(token_file),
        "cgroup_root": "auto",
        "discovery": {"local": [{"name": "lp-batch", "path": rel, "labels": {"group-id": "lp"}}]},
        "failsafe": {"mode": "hold", "ttl": "30s"},
    }
    path = tmp_path / "writer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "writer.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from writer.cli import main; main()", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "writer.log").read_text()
            assert time.monotonic() < deadline, "writer not healthy within 20 s:\n" + (tmp_path / "writer.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_a_measured_violation_becomes_a_limit_in_the_lp_cgroup(
    tmp_path: Path,
    latency_exporter: LatencyExporter,
    prometheus_for: Any,
    writer_url: str,
    token_file: Path,
    lp_cgroup: tuple[Hierarchy, str, Path],
) -> None:
    h, _, cgroup = lp_cgroup
    mean = 0.060
    true_p95 = -mean * math.log(0.05)  # 180 ms: a violation of the 100 ms target
    latency_exporter.drive(exponential_inverse_cdf(mean))
    prom = prometheus_for(latency_exporter)
    slo = {
        "interval": "5s",
        "prometheus": {"url": prom.url, "timeout": "2s"},
        "writers": {"static": [writer_url], "token_file": str(token_file)},
        "slos": [
            {
                "name": "gnn-p95",
                "metric": "gnn_request_latency_seconds",
                "labels": {"job": "hp-gnn"},
                "window": "4s",
                "target": "100ms",
                "policy": {"kind": "pid", "kp": 0.5, "ki": 0.1, "kd": 0.0},
                "throttle": {"selector": {"group-id": "lp"}, "devices": [DISK], "rbps": {"min": "10M", "max": "max"}},
            }
        ],
    }
    slo_path = tmp_path / "slo.yaml"
    slo_path.write_text(yaml.safe_dump(slo))
    prom.wait_for_samples("rate(gnn_request_latency_seconds_count[4s]) > 0")
    time.sleep(4.5)  # a full window of steady traffic

    proc = subprocess.run(
        [sys.executable, "-c", "from controller.cli import main; main()", "--config", str(slo_path), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["status"] == "ok", rec
    assert abs(rec["latency_seconds"] - true_p95) <= BUCKET_WIDTH
    assert rec["level"] < 0.2  # a violation cuts below the starting (fail-safe) level
    (push,) = rec["push"]
    assert push["outcome"] == "ok", push
    assert [c["outcome"] for c in push["cgroups"]] == ["applied"]

    rbps = rec["targets"]["lp"]["io_max"]["rbps"]
    assert 10 * M <= rbps < 2560 * M
    lines = cgroup_file_lines(h, cgroup, "read")
    assert f"{DISK} {rbps}" in lines, lines

    # The writer's status reads the limit back from the kernel (not the push it echoes in last_push).
    status = httpx.get(f"{writer_url}/status", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"}).json()
    [lp] = status["lp_workloads"]
    assert lp["io_max_in_force"][DISK]["rbps"] == rbps, lp


def cgroup_file_lines(h: Hierarchy, cgroup: Path, direction: str) -> list[str]:
    name = f"blkio.throttle.{direction}_bps_device" if h.version == 1 else "io.max"
    return (cgroup / name).read_text().splitlines()


#: An LP process: waits for a line on stdin, then reads ``path`` with O_DIRECT in 1 MiB blocks, over and over,
#: for at most ``seconds`` (bounded even if the test dies).
_DIRECT_READER = """
import sys, time
from pathlib import Path
from experiments.workloads.direct_io import aligned_buffer, open_direct, pread_exact
path, seconds = Path(sys.argv[1]), float(sys.argv[2])
size, buf = path.stat().st_size, aligned_buffer(1 << 20)
fd = open_direct(path)
sys.stdin.readline()
end, offset = time.monotonic() + seconds, 0
while time.monotonic() < end:
    pread_exact(fd, buf, offset)
    offset = (offset + len(buf)) % size
"""


def _gated_slo(*, gate: bool) -> SloConfig:
    policy: dict[str, Any] = {"kind": "pid", **({"gate_utilisation": 0.9} if gate else {})}
    return SloConfig.model_validate({
        "name": "gnn-p95", "metric": "gnn_request_latency_seconds", "labels": {"job": "hp-gnn"}, "window": "3s",
        "target": "100ms", "policy": policy,
        "throttle": {"selector": {"group-id": "lp"}, "devices": [DISK], "rbps": {"min": "10M", "max": "max"}},
    })


def test_the_sensor_reads_how_much_of_its_limit_lp_uses_from_the_writers_metrics(
    tmp_path: Path,
    latency_exporter: LatencyExporter,
    writer_url: str,
    token_file: Path,
    lp_cgroup: tuple[Hierarchy, str, Path],
) -> None:
    """The PID's gate input, all real: the writer's cgroup counters and limit, scraped, divided by PromQL."""
    h, rel, _ = lp_cgroup
    latency_exporter.drive(exponential_inverse_cdf(0.010))  # HP well under its target: OK readings
    prom = PrometheusServer(
        targets=[ScrapeTarget("hp-gnn", latency_exporter.address),
                 ScrapeTarget("drcio-writer", writer_url.removeprefix("http://"))],
        scrape_interval_seconds=SCRAPE_INTERVAL, port=free_port(),
    )
    data = tmp_path / "lp.data"
    data.write_bytes(os.urandom(16 * M))
    os.sync()
    reader = subprocess.Popen([sys.executable, "-c", _DIRECT_READER, str(data), "40"], stdin=subprocess.PIPE, text=True)
    prom.start()
    try:
        limit = 16 * M
        with HttpPusher(token=token_file.read_text().strip(), timeout_seconds=5) as pusher:
            body = TargetsPush(generation=int(time.time() * 1000), lease_ttl_seconds=600, groups=[
                GroupTarget(name="lp", selector={"group-id": "lp"}, devices=[DISK], io_max=IoMax(rbps=limit))])
            [pushed] = pusher.push([writer_url], body)
        assert pushed.outcome == "ok", pushed
        move_pid(h, rel, reader.pid)
        assert reader.stdin is not None
        reader.stdin.write("go\n")
        reader.stdin.flush()
        sensor = PrometheusSensor(PrometheusConfig.model_validate({"url": prom.url, "timeout": "2s"}))
        gated, plain = _gated_slo(gate=True), _gated_slo(gate=False)
        prom.wait_for_samples('rate(drcio_io_read_bytes_total{group="lp"}[3s]) > 0')
        time.sleep(3.5)  # a full 3 s window of LP reading as fast as its limit lets it

        bound = sensor.read(gated, time.time())
        assert bound.status.value == "ok", bound
        assert bound.lp_utilisation is not None and 0.8 <= bound.lp_utilisation <= 1.2, bound
        assert sensor.read(plain, time.time()).lp_utilisation is None  # only asked for a gated policy

        reader.kill()
        reader.wait(timeout=10)
        time.sleep(3.5)  # the window holds only idle LP now
        idle = sensor.read(gated, time.time())
        assert idle.status.value == "ok" and idle.lp_utilisation is not None and idle.lp_utilisation < 0.05, idle
    finally:
        reader.kill()
        reader.wait(timeout=10)
        prom.stop()
