"""The sim reads its counters as the real Prometheus' ``rate()`` does: checked against the server itself.

Counter samples go into a real Prometheus (``promtool tsdb create-blocks-from
openmetrics``, then the server started on those blocks), and ``rate(c[5s])``
at many instants is compared with :func:`experiments.plant.prometheus_rate`
on the same samples. The series are the shapes the experiments produce: a
counter that begins when the load does (the start of every scenario: the
rate climbs over one window), one running long before, and one flat through
a quiet spell and then rising (HP's return), and a sparse one (windows with no
increase). Scrape times wander by up to 30 ms, as real scrapes do. Both branches
of the extrapolation are taken: to the window's edge (most instants), and by half
a sample gap where the window begins before the first sample and the counter's
zero does not cut it short (the first seconds of the long-running series).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from experiments.plant import prometheus_rate
from experiments.prometheus_server import PrometheusServer

pytestmark = pytest.mark.prometheus

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
WINDOW = 5.0


def _series(start: float, rng: np.random.Generator) -> dict[str, list[tuple[float, float]]]:
    """(time, value) per series, scraped about every second for 30 s; times on whole milliseconds."""
    times = start + np.round(np.arange(30) + 0.4 + rng.uniform(-0.03, 0.03, 30), 3)
    since = times - start  # the load begins at ``start``
    return {
        "begins_total": [(t, 200.0 * s) for t, s in zip(times, since)],
        "running_total": [(t, 1.0e6 + 200.0 * s) for t, s in zip(times, since)],
        "returns_total": [(t, 5000.0 + 300.0 * max(0.0, s - 12.0)) for t, s in zip(times, since)],
        "sparse_total": [(t, float(int(0.7 * s))) for t, s in zip(times, since)],
    }


def _openmetrics(series: dict[str, list[tuple[float, float]]]) -> str:
    lines = []
    for name, samples in series.items():
        lines.append(f"# TYPE {name.removesuffix('_total')} counter")
        lines.extend(f"{name} {float(v)!r} {t:.3f}" for t, v in samples)
    return "\n".join([*lines, "# EOF", ""])


def _expected(samples: list[tuple[float, float]], at: float) -> float | None:
    inside = [(t, v) for t, v in samples if at - WINDOW <= t <= at]  # Prometheus 2.x: both ends closed
    if len(inside) < 2:
        return None
    (t0, v0), (t1, v1) = inside[0], inside[-1]
    return float(prometheus_rate(t0, t1, len(inside), v0, v1, at, WINDOW))


def test_prometheus_rate_is_the_servers_rate(tmp_path: Path) -> None:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: scripts/setup.sh installs it with the 'prometheus' package")
    start = float(int(time.time()) - 3600)  # an hour ago: inside the server's retention
    series = _series(start, np.random.default_rng(7))
    source = tmp_path / "series.om"
    source.write_text(_openmetrics(series))
    (tmp_path / "data").mkdir()
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tmp_path / "data")],
                   check=True, capture_output=True, text=True, timeout=120)
    instants = start + np.arange(0.5, 31.0, 0.5) + 0.137  # whole ms (as the server keeps time), never on a sample
    compared = 0
    with PrometheusServer(targets=[], workdir=tmp_path) as prom, httpx.Client(timeout=5.0) as client:
        for name, samples in series.items():
            for at in instants:
                want = _expected(samples, float(at))
                r = client.get(f"{prom.url}/api/v1/query", params={"query": f"rate({name}[5s])", "time": f"{at:.3f}"})
                result = r.json()["data"]["result"]
                if want is None:
                    assert result == [], (name, at - start)
                    continue
                got = float(result[0]["value"][1])
                # rel 1e-6: times as float seconds near 1.8e9 carry ~2e-7 s; the server keeps whole ms.
                assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (name, round(at - start, 3), got, want)
                compared += 1
    assert compared > 200  # every series at most instants, the climb at the start among them
    begins = series["begins_total"]
    climb = [_expected(begins, start + s) or 0.0 for s in (2.0, 3.0, 4.0, 6.0)]
    assert 0 < climb[0] < 0.6 * 200.0  # the window is not full of the load yet
    assert climb == sorted(climb) and climb[-1] == pytest.approx(200.0, rel=0.02)
