"""Start and stop a private, real Prometheus server on loopback.

Used by the local experiment backend and by the integration tests: a
generated config in a temp dir, a free loopback port, a short scrape
interval, and a clean stop (the temp dir goes with it). Never touches a
system-wide Prometheus.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import yaml

__all__ = ["PrometheusServer", "ScrapeTarget", "find_prometheus", "free_port", "PrometheusUnavailable"]


class PrometheusUnavailable(RuntimeError):
    """The Prometheus binary is missing or the server did not become ready."""


def find_prometheus() -> str:
    """Path of the ``prometheus`` binary, or raise with how to install it."""
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path is None:
        raise PrometheusUnavailable(
            "the Prometheus server is not installed; run `scripts/setup.sh` (it runs `apt-get install prometheus`)"
        )
    return path


def free_port(host: str = "127.0.0.1", *, proc_root: Path = Path("/proc")) -> int:
    """A TCP port free on ``host`` right now, picked at random *below* the kernel's ephemeral range.

    Not ``bind(0)``: the kernel hands that out from the ephemeral range and,
    measured here, returned the same port three times in ten consecutive calls
    (callers asking for four ports got duplicates), and the client connections
    of a start-up (readiness polls, scrapes) take ephemeral ports too, so one
    may grab the port before its server binds it. Below the range only
    listeners compete; a random pick among ~12 000 ports makes two callers'
    picks collide rarely, and the bind test skips ports in use.
    """
    try:
        low = int((proc_root / "sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 13025)
    for _ in range(200):
        port = random.randrange(low - 12000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # everything below taken: let the OS pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    address: str  # host:port
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)
    #: This job's own scrape interval (None: the server's).
    scrape_interval_seconds: float | None = None


@dataclass
class PrometheusServer:
    """A real Prometheus on ``127.0.0.1:<port>`` scraping ``targets``.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    targets: list[ScrapeTarget]
    scrape_interval_seconds: float = 1.0
    port: int = 0
    workdir: Path | None = None
    ready_timeout_seconds: float = 30.0
    #: Rule files Prometheus loads (recording and alerting rules), e.g. from ``drcio-controller export-rules``.
    rule_files: list[Path] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        interval = f"{int(self.scrape_interval_seconds * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            **({"rule_files": [str(p) for p in self.rule_files]} if self.rule_files else {}),
            "scrape_configs": [
                {
                    "job_name": t.job,
                    "metrics_path": t.metrics_path,
                    **({"scrape_interval": f"{int(t.scrape_interval_seconds * 1000)}ms"}
                       if t.scrape_interval_seconds is not None else {}),
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": [t.address], "labels": dict(t.labels)}],
                }
                for t in self.targets
            ],
        }

    def start(self) -> PrometheusServer:
        binary = find_prometheus()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="drcio-prom-"))
            self._own_dir = True
        if self.port == 0:
            self.port = free_port()
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log = open(self.workdir / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_seconds
        # One client for the polls: httpx.get builds a client (and a TLS context) per call, ~50 ms of CPU.
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise PrometheusUnavailable(f"prometheus exited with {self._proc.returncode}: {self.log_tail()}")
                try:
                    if client.get(f"{self.url}/-/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise PrometheusUnavailable(f"prometheus not ready after {self.ready_timeout_seconds}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if self.workdir is None or not (self.workdir / "prometheus.log").exists():
            return ""
        return "\n".join((self.workdir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])

    def wait_for_samples(self, query: str, *, timeout_seconds: float = 30.0) -> None:
        """Block until ``query`` returns a non-empty vector (e.g. after the first scrapes)."""
        deadline = time.monotonic() + timeout_seconds
        with httpx.Client(timeout=2.0) as client:  # one for the polls, as in _wait_ready
            while time.monotonic() < deadline:
                try:
                    r = client.get(f"{self.url}/api/v1/query", params={"query": query})
                    if r.status_code == 200 and r.json()["data"]["result"]:
                        return
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.2)
        raise PrometheusUnavailable(f"no samples for {query!r} within {timeout_seconds}s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._own_dir = False

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
