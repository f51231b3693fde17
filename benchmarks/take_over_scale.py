"""How long a take-over's read of the writers (``GET /status`` on every writer) takes at N writers.

Usage::

    python benchmarks/take_over_scale.py [--writers 1000,10000] [--deadline 5] \
        [--output benchmarks/results/take_over_scale.json]

For each N it starts ``benchmarks/scale.py``'s fleet (real writer apps over real
Reconcilers on fake cgroup v2 trees, in 4 processes sharing the machine's cores
with this one), pushes a level to every writer twice (the second push is the
warm figure: connections open), then reads what they hold twice, as
:meth:`controller.loop.Controller.take_over` does: once without a deadline
(how long the whole round takes) and once within ``--deadline`` seconds (the
default interval, 5 s, what the controller allows). It prints and writes, per
read: wall seconds, the controller's CPU seconds, how many writers answered,
and the level found (it must be the pushed one).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from controller.loop import levels_in_force
from controller.push import HttpPusher, raise_open_files_limit
from writer.api import GroupTarget, IoMax, TargetsPush

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the scale benchmark's fleet)

LEVEL = 0.5


def _body(generation: int) -> TargetsPush:
    return TargetsPush(generation=generation, lease_ttl_seconds=600, groups=[GroupTarget(
        name="lp", selector={"group-id": "lp"}, devices=["254:0"], io_max=IoMax(rbps=50 * 2**20, wbps=25 * 2**20),
        level=LEVEL)])


def measure(n: int, deadline: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="drcio-take-over-scale-"))
    fleet = scale.start_fleet(n, root)
    try:
        urls = fleet.all_urls["app"][:n]
        row: dict[str, Any] = {"writers": n, "fleet_started_s": round(fleet.started_s, 1), "load1_before": scale.load()}
        with HttpPusher(token=None, timeout_seconds=2.0) as pusher:
            for key in ("push_first_s", "push_warm_s"):
                t0 = time.perf_counter()
                pushed = pusher.push(urls, _body(int(time.time() * 1000)))
                row[key] = round(time.perf_counter() - t0, 2)
            row["pushes_ok"] = sum(p.outcome == "ok" for p in pushed)
            for key, limit in (("read_all", 3600.0), ("read_within_deadline", deadline)):
                cpu0, t0 = time.process_time(), time.perf_counter()
                read = pusher.read_in_force(urls, limit)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                held, answered = levels_in_force(read, 0.2)
                row[key] = {"deadline_s": limit, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "answered": answered,
                            "level_found": held.get("lp")}
        row["load1_after"] = scale.load()
        return row
    finally:
        fleet.stop()
        shutil.rmtree(root, ignore_errors=True)


@click.command()
@click.option("--writers", default="1000,10000", show_default=True, help="Comma-separated fleet sizes.")
@click.option("--deadline", type=float, default=5.0, show_default=True, help="The take-over's bound, seconds (the interval).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("benchmarks/results/take_over_scale.json"), show_default=True)
def main(writers: str, deadline: float, output: Path) -> None:
    """How long a take-over's read of N writers takes (see the module docstring)."""
    raise_open_files_limit(65536)
    rows = []
    for n in (int(x) for x in writers.split(",")):
        row = measure(n, deadline)
        rows.append(row)
        a, d = row["read_all"], row["read_within_deadline"]
        click.echo(f"{n:>6} writers: push {row['push_first_s']} s (warm {row['push_warm_s']} s); read all "
                   f"{a['wall_s']} s ({a['cpu_s']} s CPU), {a['answered']} answered; within {deadline:g} s: "
                   f"{d['answered']} answered in {d['wall_s']} s; level found {a['level_found']} / {d['level_found']}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "pushed_level": LEVEL, "rows": rows}, indent=1))
    click.echo(f"-> {output}")


if __name__ == "__main__":
    main()
