"""Does changing LP's io.max every tick cost HP latency? A real-disk A/B test.

Why it exists: the PID moves the level on most ticks (the control-quality
table's ``changes_per_minute``: 20-50), the knee policy far less, and the
simulator assumes a limit change is free. On the kernel it may not be: a new
blk-throttle limit starts a new throttling slice, which could let queued LP
I/O through at once. This measures it on the real stack's parts:

* HP: the GNN service (``experiments.workloads.hp_gnn``) under the open-loop
  load generator at ``--rate`` requests/s;
* LP: the batch job (``experiments.workloads.lp_batch``, mixed reads and
  writes) in its own cgroup, limited by the writer's own ``apply_io_max`` at
  the template SLO's ``--level``;
* conditions, ``--seconds`` each, in a rotated order every round: ``fixed``
  (the limit written once) and ``churn-F`` for each factor F (the limit
  alternating between level x F and level / F every ``--period`` seconds:
  the same geometric mean, a change on every tick).

Per condition it reports the HP P95 / P99 over the segment, the mean and worst
5 s-window P95 (what the controller sees) and LP's throughput, prints a table
of the means over rounds and writes every segment to ``--output`` (JSON).
Needs root and a cgroup I/O controller (v1 blkio or v2 io); about
``rounds x conditions x seconds`` plus ~20 s of set-up.

    .venv/bin/python benchmarks/limit_churn.py [--rounds 8 --seconds 20 --factors 1.1,1.3]
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from controller.config import parse_config
from controller.targets import group_target
from experiments.backends.supervision import Supervisor, http_ok, json_event, wait_until
from experiments.prometheus_server import free_port
from experiments.slo import load_base_slo
from experiments.workloads.direct_io import backing_device
from writer.cgroups import Hierarchy, Limits, WriterError, apply_io_max, detect_hierarchy, read_io_bytes
from writer.groups import create_group, move_pid, remove_group

RESULTS = Path(__file__).resolve().parent / "results" / "limit_churn.json"
WINDOW_SECONDS = 5.0  # the template SLO's window: what the controller's P95 covers


def _limits(level: float, factor: float) -> Limits:
    doc, _ = load_base_slo(None)
    io = group_target(parse_config(doc).slos[0].throttle, level).io_max
    assert io.rbps is not None and io.wbps is not None
    return Limits(rbps=int(io.rbps * factor), wbps=int(io.wbps * factor))


def _lp_bytes(h: Hierarchy, group: Path, device: str) -> int:
    return sum(read_io_bytes(h, group).get(device, (0, 0)))


def _segment(h: Hierarchy, group: Path, device: str, factor: float, *, level: float, seconds: float,
             period: float, rate: float, hp_url: str, csv: Path, seed: int, sup: Supervisor, logs: Path) -> dict[str, Any]:
    """One condition: the load generator for ``seconds`` while the limit alternates by ``factor`` (1: fixed)."""
    high, low = _limits(level, factor), _limits(level, 1 / factor)
    apply_io_max(h, group, {device: _limits(level, 1.0)})
    before, t0 = _lp_bytes(h, group, device), time.monotonic()
    loadgen = sup.start("loadgen", [sys.executable, "-m", "experiments.workloads.loadgen", "--url", hp_url,
                                    "--rate", str(rate), "--duration", str(seconds), "--seed", str(seed),
                                    "--out", str(csv)], log_path=logs / "loadgen.log", expect_exit=True)
    changes, tick = 0, 0
    while time.monotonic() - t0 < seconds:
        time.sleep(period)
        tick += 1
        if factor != 1.0 and apply_io_max(h, group, {device: high if tick % 2 else low}) == "applied":
            changes += 1
    lp = (_lp_bytes(h, group, device) - before) / (time.monotonic() - t0)
    loadgen.wait(timeout=30)
    ok = pd.read_csv(csv).query("outcome == 'ok'")
    ms = ok["latency_s"].to_numpy() * 1e3
    windows = ok.groupby((ok["scheduled_s"] // WINDOW_SECONDS).astype(int))["latency_s"].quantile(0.95) * 1e3
    return {"requests_ok": len(ok), "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "window_p95_mean_ms": float(windows.mean()), "window_p95_worst_ms": float(windows.max()),
            "lp_mib_per_second": lp / 2**20, "limit_changes_per_minute": changes * 60 / seconds}


def _paired(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Each churn condition against the fixed limit of the same round (the host drifts over minutes)."""
    fixed = df[df["condition"] == "fixed"].set_index("round")
    out = {}
    for name, rows in df[df["condition"] != "fixed"].groupby("condition", sort=False):
        rows = rows.set_index("round")
        p95 = rows["p95_ms"] / fixed["p95_ms"]
        lp = rows["lp_mib_per_second"] / fixed["lp_mib_per_second"]
        out[str(name)] = {"p95_ratio_median": float(p95.median()), "p95_ratio_min": float(p95.min()),
                          "p95_ratio_max": float(p95.max()), "p95_ratio_above_1": int((p95 > 1).sum()),
                          "rounds": len(p95), "lp_ratio_median": float(lp.median())}
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--level", default=0.375, show_default=True, help="LP level (the template SLO's range) the limit centres on.")
@click.option("--factors", default="1.1,1.3", show_default=True,
              help="Comma-separated churn factors: the limit alternates between x F and / F.")
@click.option("--period", default=1.0, show_default=True, help="Seconds between limit changes (the template's interval).")
@click.option("--seconds", default=20.0, show_default=True, help="Seconds per condition and round.")
@click.option("--rounds", default=8, show_default=True,
              help="Rounds; each runs every condition once, order rotated (many short rounds: the host drifts).")
@click.option("--rate", default=200.0, show_default=True, help="HP requests per second.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("/var/tmp"), show_default=True,
              help="Where the HP store and LP file go (a real disk: the I/O is O_DIRECT).")
@click.option("--output", type=click.Path(path_type=Path), default=RESULTS, show_default=True)
def main(level: float, factors: str, period: float, seconds: float, rounds: int, rate: float, work_dir: Path,
         output: Path) -> None:
    """Measure HP latency and LP throughput with LP's limit fixed against changed every tick."""
    churn = [float(f) for f in factors.split(",") if f.strip()]
    if any(f <= 1.0 for f in churn):
        raise click.BadParameter("every factor must be > 1", param_hint="--factors")
    h = detect_hierarchy("auto")
    work = work_dir / f"drcio-churn-{secrets.token_hex(4)}"
    top = f"drcio-churn-{secrets.token_hex(4)}"
    sup = Supervisor(stop_timeout_seconds=5)
    py = sys.executable
    records: list[dict[str, Any]] = []
    try:
        work.mkdir(parents=True)
        logs = work / "logs"
        device = backing_device(work)
        if device is None:
            raise click.UsageError(f"{work} is on no block device (tmpfs?): use --work-dir on a disk")
        group = create_group(h, f"{top}/lp")
        hp_port, lp_port = free_port(), free_port()
        click.echo(f"building the HP store and the LP file in {work} (device {device}) ...", err=True)
        hp = sup.start("hp-gnn", [py, "-m", "experiments.workloads.hp_gnn", "--data-dir", str(work / "hp"),
                                  "--port", str(hp_port)], log_path=logs / "hp.log")
        with http_ok(f"http://127.0.0.1:{hp_port}/health") as ready:
            wait_until("the HP service", ready, proc=hp, supervisor=sup, timeout=300)
        lp_out = work / "lp.out"
        lp = sup.start("lp-batch", [py, "-m", "experiments.workloads.lp_batch", "--data-dir", str(work / "lp"),
                                    "--port", str(lp_port), "--mode", "mixed"], log_path=logs / "lp.log",
                       stdout_path=lp_out)
        wait_until("the LP job", json_event(lp_out, "prepared"), proc=lp, supervisor=sup, timeout=300)
        move_pid(h, f"{top}/lp", lp.pid)
        apply_io_max(h, group, {device: _limits(level, 1.0)})
        os.kill(lp.pid, signal.SIGUSR1)
        time.sleep(5)  # LP at its limit before the first segment
        conditions = [1.0, *churn]
        total = rounds * len(conditions)
        for r in range(rounds):
            order = conditions[r % len(conditions):] + conditions[:r % len(conditions)]
            for factor in order:
                name = "fixed" if factor == 1.0 else f"churn-{factor:g}"
                rec = {"round": r, "condition": name, "factor": factor, "level": level, "period_seconds": period,
                       "seconds": seconds, "rate": rate}
                rec |= _segment(h, group, device, factor, level=level, seconds=seconds, period=period, rate=rate,
                                hp_url=f"http://127.0.0.1:{hp_port}/score", csv=work / f"hp-{r}-{name}.csv",
                                seed=r, sup=sup, logs=logs)
                records.append(rec)
                click.echo(f"[{len(records)}/{total}] round {r} {name:10s} P95 {rec['p95_ms']:6.2f} ms  "
                           f"window P95 mean {rec['window_p95_mean_ms']:6.2f} worst {rec['window_p95_worst_ms']:6.2f}  "
                           f"LP {rec['lp_mib_per_second']:6.1f} MiB/s  changes/min {rec['limit_changes_per_minute']:.0f}",
                           err=True)
    finally:
        sup.stop_all()
        for rel in (f"{top}/lp", top):
            try:
                remove_group(h, rel)
            except WriterError as e:
                click.echo(f"could not remove cgroup {rel}: {e}", err=True)
        shutil.rmtree(work, ignore_errors=True)
    df = pd.DataFrame(records)
    table = df.groupby("condition", sort=False)[["p95_ms", "p99_ms", "window_p95_mean_ms", "window_p95_worst_ms",
                                                 "lp_mib_per_second", "limit_changes_per_minute"]].agg(["mean", "std"])
    click.echo(table.round(2).to_string())
    paired = _paired(df)
    for name, row in paired.items():
        click.echo(f"{name} / fixed, same round: P95 x{row['p95_ratio_median']:.3f} "
                   f"[{row['p95_ratio_min']:.3f}, {row['p95_ratio_max']:.3f}], LP x{row['lp_ratio_median']:.3f}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"host_device": device, "paired": paired, "records": records}, indent=1) + "\n")
    click.echo(f"wrote {output}", err=True)


if __name__ == "__main__":
    main()
