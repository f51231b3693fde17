"""Fit the simulator's plant to a real sweep, and plot the real and the simulated frontier side by side.

    python benchmarks/sim_fit.py [--sweep DIR] [--extra CSV] [--output experiments/templates/sim-fit.json] [--plot FILE.png]

DIR is the output directory of a real ``run-experiment`` run on the local
backend with a baseline, a contention run and a sweep (default: the run
recorded in ``benchmarks/results/real-sweep-2026-11-24``, 12 levels, made
while other test suites loaded the host: noisy). ``--extra`` adds (LP MiB/s,
P95 ms) points from other real runs to the delay fit (default: the README's
three quiet runs, ``benchmarks/results/readme-quiet-runs-2026-11-23.csv``).
What is fitted, from what:

* HP base service time (lognormal): the baseline's server-side P50 and P95.
* LP's unthrottled demand: the contention run's LP bytes/s.
* Throttle efficiency: median of LP bytes/s / (2 x wbps limit) over the
  throttled sweep steps (the mixed job moves reads and writes at the same
  rate, paced by the write limit).
* Queueing delay ``wait_max * r**p / (1 + r**p)``, ``r = LP / knee``: least
  squares on log P95 over every sweep step and the contention run (grid
  search; P95 of base + exponential delay computed from fixed samples).
* Latency jitter: the sim's AR(1) sigma is chosen so that the simulated
  tick-to-tick spread of the windowed P95 (std of its log) matches the
  median of the real scenarios'.

It writes the fit (with the data it came from and the fit error) to
``--output`` and a plot with the real sweep, the fitted curve and the
simulator's own sweep at the same levels. The simulator reads the fit from
``experiments/templates/sim-fit.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.backends.sim import SimBackend, SimConfig, simulate, steady_schedule
from experiments.model import ScenarioSpec
from experiments.plant import PlantFit
from experiments.slo import load_base_slo, slo_document

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _p95_table(base_median: float, base_sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """P95 of base + Exp(m) for a grid of mean delays m (ms)."""
    base = base_median * np.exp(base_sigma * rng.standard_normal(40_000))
    unit = rng.exponential(1.0, 40_000)
    means = np.concatenate([[0.0], np.geomspace(0.01, 500.0, 400)])
    p95 = np.array([np.quantile(base + m * unit, 0.95) for m in means])
    return means, p95


def _log_spread(frame: pd.DataFrame, warmup: float) -> float:
    values = frame[frame["elapsed_seconds"] >= warmup]["hp_p95_ms"].dropna()
    values = values[values > 0]
    return float(np.log(values).std()) if len(values) > 3 else math.nan


def fit(sweep_dir: Path, extra: Path | None) -> tuple[PlantFit, dict[str, object]]:
    summary = pd.read_csv(sweep_dir / "summary.csv")
    rows = {r["scenario"]: r for _, r in summary.iterrows()}
    base, cont = rows["baseline"], rows["contention"]
    sweep = summary[summary["kind"] == "sweep"].sort_values("level")
    base_median = float(base["p50_ms"])
    base_sigma = math.log(float(base["p95_ms"]) / base_median) / 1.645
    demand = float(cont["lp_mbps"]) * MIB
    throttled = sweep[sweep["lp_mbps"] < 0.5 * float(cont["lp_mbps"])]
    efficiency = float(np.median(throttled["lp_mbps"] / (2 * throttled["wbps_limit_mbps"])))

    points = pd.concat([sweep[["scenario", "lp_mbps", "p95_ms"]], summary[summary["scenario"] == "contention"][
        ["scenario", "lp_mbps", "p95_ms"]]])
    if extra is not None:
        points = pd.concat([points, pd.read_csv(extra, comment="#")], ignore_index=True)
    x = points["lp_mbps"].to_numpy() * MIB
    y = np.log(points["p95_ms"].to_numpy())
    means, p95 = _p95_table(base_median, base_sigma, np.random.default_rng(0))
    best = (math.inf, 0.0, 0.0, 0.0)
    for p in np.arange(1.0, 4.01, 0.125):
        for knee in np.geomspace(30, 3000, 120) * MIB:
            rp = (x / knee) ** p
            shape = rp / (1 + rp)
            for wmax in np.geomspace(1.0, 200.0, 120):
                model = np.log(np.interp(wmax * shape, means, p95))
                err = float(np.mean((model - y) ** 2))
                if err < best[0]:
                    best = (err, float(p), float(knee), float(wmax))
    err, p, knee, wmax = best
    fitted = PlantFit(base_median_ms=round(base_median, 4), base_sigma=round(base_sigma, 4), wait_max_ms=round(wmax, 4),
                      knee_bps=round(knee), knee_exponent=p, demand_bps=round(demand), efficiency=round(efficiency, 4),
                      source=f"the real sweep in {sweep_dir.relative_to(ROOT) if sweep_dir.is_relative_to(ROOT) else sweep_dir}")

    # Jitter: match the median tick-to-tick spread of the real windowed P95.
    names = ["baseline", *sweep["scenario"]]
    real_spread = float(np.nanmedian([_log_spread(pd.read_csv(sweep_dir / f"{n}.csv"), 5.0) for n in names]))
    base_slo, _ = load_base_slo(None)
    wiring = SimBackend(SimConfig(base_slo=base_slo)).wiring()
    mid_level = float(sweep.iloc[len(sweep) // 2]["level"])
    spec = ScenarioSpec("probe", "sweep", 60.0, 5.0, lp=True, controlled=True, level=mid_level)
    doc = slo_document(spec, base_slo, target_ms=10.0, wiring=wiring)
    best_sigma, best_gap = 0.0, math.inf
    for sigma in np.arange(0.0, 0.41, 0.02):
        trial = replace(fitted, jitter_sigma=round(float(sigma), 3))
        spreads = []
        for lp, slo in ((False, None), (True, doc)):
            res = simulate(steady_schedule(60.0, 200.0, "mixed"), SimConfig(seed=7, fit=trial), slo=slo, lp=lp)
            spreads.append(_log_spread(res.series, 5.0))
        gap = abs(float(np.mean(spreads)) - real_spread)
        if gap < best_gap:
            best_sigma, best_gap = float(sigma), gap
    fitted = replace(fitted, jitter_sigma=round(best_sigma, 3))
    info: dict[str, object] = {
        "points": points.to_dict(orient="records"),
        "rms_log_error": math.sqrt(err),
        "real_p95_log_spread": real_spread,
        "baseline": {"p50_ms": base_median, "p95_ms": float(base["p95_ms"])},
        "host_load": "see run.json / summary.csv io_pressure_pct in the sweep dir",
    }
    return fitted, info


def plot(sweep_dir: Path, extra: Path | None, fitted: PlantFit, path: Path) -> pd.DataFrame:
    from matplotlib.figure import Figure

    summary = pd.read_csv(sweep_dir / "summary.csv")
    sweep = summary[summary["kind"] == "sweep"].sort_values("level")
    base_slo, _ = load_base_slo(None)
    backend = SimBackend(SimConfig(base_slo=base_slo, fit=fitted))
    sim_rows = []
    for _, r in sweep.iterrows():
        spec = ScenarioSpec(str(r["scenario"]), "sweep", 60.0, 5.0, lp=True, controlled=True, level=float(r["level"]))
        doc = slo_document(spec, base_slo, target_ms=10.0, wiring=backend.wiring())
        res = simulate(steady_schedule(60.0, 200.0, "mixed"), SimConfig(seed=1, fit=fitted), slo=doc)
        measured = res.requests[res.requests["sent"] >= res.start + 5.0]
        lp = res.series[res.series["elapsed_seconds"] >= 5.0]["lp_bytes_per_second"].mean() / MIB
        sim_rows.append({"level": float(r["level"]), "lp_mbps": lp,
                         "p95_ms": 1000.0 * float(measured["latency"].quantile(0.95))})
    sim = pd.DataFrame(sim_rows)
    xs = np.geomspace(5, 2500, 200)
    means, p95 = _p95_table(fitted.base_median_ms, fitted.base_sigma, np.random.default_rng(0))
    curve = np.interp(fitted.mean_wait_ms(xs * MIB, fitted.hp_ref_rps), means, p95)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    cont = summary[summary["scenario"] == "contention"]
    ax.plot(sweep["lp_mbps"], sweep["p95_ms"], "o", color="tab:blue", label="real sweep (local backend)")
    ax.plot(cont["lp_mbps"], cont["p95_ms"], "s", color="tab:blue", label="real contention (no limit)")
    if extra is not None:
        quiet = pd.read_csv(extra, comment="#")
        ax.plot(quiet["lp_mbps"], quiet["p95_ms"], "^", color="tab:green", label="real, README quiet runs")
    ax.plot(sim["lp_mbps"], sim["p95_ms"], "x", color="tab:red", markersize=9, label="sim sweep, same levels")
    ax.plot(xs, curve, "-", color="tab:gray", label="fitted P95 curve (no jitter)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("LP throughput (MiB/s)")
    ax.set_ylabel("HP P95 latency (ms)")
    ax.set_title("Frontier: real sweep vs. the simulator fitted to it")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=ROOT / "benchmarks/results/real-sweep-2026-11-24")
    parser.add_argument("--extra", type=Path, default=ROOT / "benchmarks/results/readme-quiet-runs-2026-11-23.csv")
    parser.add_argument("--output", type=Path, default=ROOT / "experiments/templates/sim-fit.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/sim-fit.png")
    args = parser.parse_args()
    fitted, info = fit(args.sweep.resolve(), args.extra)
    args.output.write_text(json.dumps({"fit": asdict(fitted), "data": info}, indent=2, default=float) + "\n")
    sim = plot(args.sweep.resolve(), args.extra, fitted, args.plot)
    real = pd.read_csv(args.sweep / "summary.csv")
    real = real[real["kind"] == "sweep"].sort_values("level")
    print(f"fit: {json.dumps(asdict(fitted))}")
    print(f"rms error of log P95: {info['rms_log_error']:.3f}; real P95 log spread {info['real_p95_log_spread']:.3f}")
    print(f"{'level':>6} {'real LP':>9} {'real P95':>9} {'sim LP':>9} {'sim P95':>9}")
    for (_, r), (_, s) in zip(real.iterrows(), sim.iterrows()):
        print(f"{r['level']:6.3f} {r['lp_mbps']:9.1f} {r['p95_ms']:9.2f} {s['lp_mbps']:9.1f} {s['p95_ms']:9.2f}")
    print(f"wrote {args.output} and {args.plot}")


if __name__ == "__main__":
    main()
