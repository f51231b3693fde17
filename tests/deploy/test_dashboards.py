"""The dashboards' JSON model: what Grafana needs to import them and what the issue asks of them
(their queries are checked against a live Prometheus in test_live_stack.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards").glob("*.json"))}
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_there_is_an_overview_and_a_per_node_dashboard() -> None:
    assert set(DASHBOARDS) == {"drcio-overview", "drcio-node"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_queries_the_datasource_variable_and_fits_the_grid(name: str) -> None:
    dash = DASHBOARDS[name]
    assert dash["schemaVersion"] >= 36 and dash["uid"] == name
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip()


def test_the_overview_has_an_slo_variable_and_the_panels_the_issue_names() -> None:
    dash = DASHBOARDS["drcio-overview"]
    assert "slo" in {v["name"] for v in dash["templating"]["list"]}
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for needle in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
                   "drcio_controller_target_latency_seconds", "drcio:slo_errors:ratio_rate1h",
                   "drcio:slo_error_budget:ratio", "drcio_controller_level", "batch_io_bytes_total",
                   "drcio_io_max_bytes_per_second", "drcio_io_weight", "drcio_controller_loop_duration_seconds_bucket",
                   "drcio_controller_pushes_total", "drcio_controller_sensor_errors_total", "drcio_lease_expired",
                   "drcio_failsafe_active", "drcio_reconciles_total", "drcio_controller_leader",
                   "drcio_controller_lp_utilisation", 'term="gated"'):
        assert needle in exprs, needle


def test_the_node_dashboard_selects_one_writer() -> None:
    variables: dict[str, Any] = {v["name"]: v for v in DASHBOARDS["drcio-node"]["templating"]["list"]}
    assert variables["instance"]["multi"] is False


def test_the_attainment_panel_counts_the_leaders_measurements_with_two_replicas_running(tmp_path: Path) -> None:
    """deploy/base runs two controller replicas, and both export their target and their own measurements: a plain
    ``on (slo)`` match between them is many-to-many, which Prometheus refuses (the panel showed an error).
    Evaluated by promtool's PromQL engine on an hour of both replicas' series: the leader met the target
    throughout, the standby (a worse view, or a stale one) never did."""
    [panel] = [p for p in DASHBOARDS["drcio-overview"]["panels"] if p["title"] == "Control intervals meeting the target"]
    [target] = panel["targets"]
    expr = target["expr"].replace("$slo", "gnn-p95")
    series = {}
    for instance, leader, observed in (("10.0.0.1:9101", 1, 0.05), ("10.0.0.2:9101", 0, 0.2)):
        labels = f'job="drcio-controller",instance="{instance}"'
        series[f"drcio_controller_leader{{{labels}}}"] = f"{leader}+0x60"
        series[f'drcio_controller_target_latency_seconds{{{labels},slo="gnn-p95"}}'] = "0.1+0x60"
        series[f'drcio_controller_observed_latency_seconds{{{labels},slo="gnn-p95"}}'] = f"{observed}+0x60"
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()],
                   "promql_expr_test": [{"expr": expr, "eval_time": "60m",
                                         "exp_samples": [{"labels": '{slo="gnn-p95"}', "value": 1}]}]}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: scripts/setup.sh installs it with the 'prometheus' package")
    proc = subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
