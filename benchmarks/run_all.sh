#!/usr/bin/env bash
# The long real-disk run behind the figures the README quotes (not part of any
# test run; needs root, cgroup I/O control and ~DURATION x 13 x levels of time).
#
# For each load level: `run-experiment --scenario all` (baseline, contention,
# static-max, the 8-level sweep, drcio) and then `static-weight` (BFQ) judged by
# the same SLO target, each into its own output dir under $OUT, plus one
# figures.csv gathering every summary row with its level.
#
#   benchmarks/run_all.sh                       # medium, 120 s per scenario
#   LEVELS="low medium high" DURATION=90 benchmarks/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-120}
LEVELS=${LEVELS:-medium}
OUT=${OUT:-results/benchmark-$(date -u +%Y%m%d-%H%M%S)}
EXTRA=${EXTRA:-}   # more run-experiment options, e.g. "--slo my-slo.yaml"

scripts/setup.sh
mkdir -p "$OUT"
for level in $LEVELS; do
  echo "== $level: all scenarios, $DURATION s each -> $OUT/$level-all" >&2
  # shellcheck disable=SC2086
  .venv/bin/run-experiment --scenario all --duration "$DURATION" --load-level "$level" \
    --output "$OUT/$level-all" $EXTRA
  target=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["target_ms"])' \
    "$OUT/$level-all/run.json")
  echo "== $level: static-weight at the same target (${target} ms) -> $OUT/$level-static-weight" >&2
  # shellcheck disable=SC2086
  .venv/bin/run-experiment --scenario static-weight --duration "$DURATION" --load-level "$level" \
    --target "${target}ms" --output "$OUT/$level-static-weight" $EXTRA
done

.venv/bin/python - "$OUT" $LEVELS <<'PY'
import sys
from pathlib import Path

import pandas as pd

out, levels = Path(sys.argv[1]), sys.argv[2:]
frames = []
for level in levels:
    for run in (f"{level}-all", f"{level}-static-weight"):
        summary = out / run / "summary.csv"
        if summary.exists():
            frames.append(pd.read_csv(summary).assign(load_level=level, run=run))
if frames:
    pd.concat(frames, ignore_index=True).to_csv(out / "figures.csv", index=False)
    print(f"figures: {out / 'figures.csv'}", file=sys.stderr)
PY
