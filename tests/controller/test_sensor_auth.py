"""The sensor against a real Prometheus behind TLS and basic auth (its own --web.config.file),
and the bearer-token hook; verification is never switched off (issue 9)."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import yaml

from controller.config import PrometheusConfig
from controller.sensor import PrometheusSensor
from controller.tls import FileTokenAuth
from experiments.prometheus_server import find_prometheus, free_port
from policies import SensorStatus
from tests.controller.conftest import LatencyExporter, exponential_inverse_cdf
from tests.controller.test_sensor_prometheus import slo
from tests.tls_certs import make_ca

pytestmark = pytest.mark.prometheus


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # Debian's libcrypt does bcrypt; only the test needs a hash for Prometheus' web config

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@pytest.fixture
def secured_prometheus(tmp_path: Path, latency_exporter: LatencyExporter) -> Iterator[dict[str, Any]]:
    latency_exporter.drive(exponential_inverse_cdf(0.01))
    ca = make_ca(tmp_path / "pki", "prom-ca")
    leaf = ca.issue("prometheus")
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(leaf.cert), "key_file": str(leaf.key)},
        "basic_auth_users": {"drcio": _bcrypt("hunter2")},
    }))
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "500ms"},
        "scrape_configs": [{"job_name": "hp-gnn", "static_configs": [{"targets": [latency_exporter.address]}]}],
    }))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [find_prometheus(), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={web}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                q = httpx.get(f"{url}/api/v1/query", params={"query": "rate(gnn_request_latency_seconds_count[3s]) > 0"},
                              verify=ssl.create_default_context(cafile=str(ca.cert)), auth=("drcio", "hunter2"), timeout=1)
                if q.status_code == 200 and q.json()["data"]["result"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "secured Prometheus never answered with samples"
            time.sleep(0.2)
        password = tmp_path / "password"
        password.write_text("hunter2\n")
        yield {"url": url, "ca": ca.cert, "password_file": password}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _read(**cfg: Any) -> Any:
    sensor = PrometheusSensor(PrometheusConfig.model_validate({"timeout": "2s", "retries": 0, **cfg}))
    return sensor.read(slo(window="3s"), time.time())


def test_the_sensor_reads_a_prometheus_behind_tls_and_basic_auth(
    secured_prometheus: dict[str, Any], latency_exporter: LatencyExporter
) -> None:
    p = secured_prometheus
    auth = {"username": "drcio", "password_file": str(p["password_file"])}
    ok = _read(url=p["url"], tls={"ca_file": str(p["ca"])}, basic_auth=auth)
    assert ok.status in (SensorStatus.OK, SensorStatus.NO_DATA), ok
    assert ok.status is not SensorStatus.SENSOR_ERROR

    unverified = _read(url=p["url"], basic_auth=auth)  # not signed by a CA the system trusts: refused, not ignored
    assert unverified.status is SensorStatus.SENSOR_ERROR and unverified.reason == "tls", unverified
    assert "certificate verify failed" in (unverified.error or "")
    anonymous = _read(url=p["url"], tls={"ca_file": str(p["ca"])})
    assert anonymous.status is SensorStatus.SENSOR_ERROR and "401" in (anonymous.error or ""), anonymous



def test_one_sensor_follows_its_rotated_password_file(secured_prometheus: dict[str, Any]) -> None:
    # FileBasicAuth reads the password through _FileSecret on every request, and re-reads the
    # file when its stamp (device, inode, size, mtime; symlinks followed) differs from the last
    # one seen. Both rotations keep the length of "hunter2", so the size never tells: the first
    # is an atomic replace (a new inode, like a Secret's ..data swap), the second an in-place
    # rewrite (same inode and size) with the mtime bumped explicitly, since two writes inside
    # one filesystem timestamp tick would otherwise look unchanged.
    p = secured_prometheus
    password: Path = p["password_file"]
    sensor = PrometheusSensor(PrometheusConfig.model_validate({
        "url": p["url"], "timeout": "2s", "retries": 0, "tls": {"ca_file": str(p["ca"])},
        "basic_auth": {"username": "drcio", "password_file": str(password)},
    }))

    def read() -> Any:
        return sensor.read(slo(window="3s"), time.time())

    before = read()
    assert before.status in (SensorStatus.OK, SensorStatus.NO_DATA), before

    tmp = password.with_name("password.new")
    tmp.write_text("hunter3\n")
    os.replace(tmp, password)
    wrong = read()
    assert wrong.status is SensorStatus.SENSOR_ERROR and wrong.reason == "http_error", wrong
    assert "401" in (wrong.error or ""), wrong

    st = os.stat(password)
    password.write_text("hunter2\n")
    os.utime(password, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert os.stat(password).st_ino == st.st_ino and os.stat(password).st_size == st.st_size
    after = read()
    assert after.status in (SensorStatus.OK, SensorStatus.NO_DATA), after


def test_the_bearer_token_comes_from_its_file_and_follows_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    auth = FileTokenAuth(token)
    req = requests.Request("GET", "https://prometheus.example/api/v1/query").prepare()
    assert auth(req).headers["Authorization"] == "Bearer first"
    tmp = tmp_path / "token.new"
    tmp.write_text("second\n")
    os.replace(tmp, token)
    assert auth(req).headers["Authorization"] == "Bearer second"


def test_prometheus_auth_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="at most one"):
        PrometheusConfig.model_validate(
            {"bearer_token_file": "/t", "basic_auth": {"username": "u", "password_file": "/p"}}
        )
