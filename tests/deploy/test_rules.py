"""The rules ``drcio-controller export-rules`` builds: valid for promtool, and the
burn-rate alerts fire and clear on synthetic series (``promtool test rules``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import load_config
from controller.rules import bucket_le, missing_target_buckets, prometheus_rule, rules_file
from experiments.workloads.hp_gnn import LATENCY_BUCKETS_SECONDS

ROOT = Path(__file__).resolve().parents[2]
SLO = ROOT / "deploy" / "base" / "slo.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: scripts/setup.sh installs it with the 'prometheus' package")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _export(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'drcio-controller'; from controller.cli import main; main()",
         "export-rules", "--config", str(SLO), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_export_rules_writes_a_rules_file_promtool_accepts(tmp_path: Path) -> None:
    proc = _export(tmp_path, "--format", "rules", "--output", str(tmp_path / "rules.yaml"))
    assert proc.returncode == 0, proc.stderr
    check = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_the_checked_in_prometheusrule_matches_the_slo_file() -> None:
    checked_in = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheusrule.yaml").read_text())
    assert checked_in == prometheus_rule(load_config(SLO)), "run scripts/generate-deploy.py"


def test_the_deployed_slo_targets_are_bucket_edges_of_the_hp_histogram() -> None:
    edges = {"gnn_request_latency_seconds": [bucket_le(e) for e in LATENCY_BUCKETS_SECONDS]}
    assert missing_target_buckets(load_config(SLO).slos, edges) == []


def test_a_target_between_bucket_edges_is_reported_with_the_nearest_edges() -> None:
    config = load_config(SLO)
    slo = config.slos[0].model_copy(update={"target_seconds": 0.105})
    problems = missing_target_buckets([slo], {"gnn_request_latency_seconds": ["0.1", "0.117877", "+Inf"]})
    assert len(problems) == 1
    assert "0.105s is not a bucket edge" in problems[0] and "0.1, 0.117877" in problems[0]


def test_bad_slo_file_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "slo.yaml"
    bad.write_text(SLO.read_text().replace("target: 100ms", "target: fast"))
    out = tmp_path / "out.yaml"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'drcio-controller'; from controller.cli import main; main()",
         "export-rules", "--config", str(bad), "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "target" in proc.stderr and not out.exists()


def _promtool_test(tmp_path: Path, rules: dict[str, Any], series: dict[str, str],
                   checks: list[dict[str, Any]]) -> None:
    """Run ``promtool test rules`` on ``rules`` with one-minute input ``series`` and alert ``checks``."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()],
                   "alert_rule_test": checks}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    proc = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _alert(rules: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == name)


def _burn_alert(rules: dict[str, Any], severity: str) -> dict[str, Any]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "DrcioSloErrorBudgetBurn" and rule["labels"]["severity"] == severity:
                return rule
    raise AssertionError(f"no {severity} burn alert")


def test_burn_rate_alerts_fire_during_a_burn_and_clear_after_it(tmp_path: Path) -> None:
    """600 requests/min; from minute 30 to 60 every request is slower than the target (100 ms),
    then all are fast again. Budget 5 % (P95 objective)."""
    rules = rules_file(load_config(SLO))
    page, ticket = _burn_alert(rules, "page"), _burn_alert(rules, "ticket")

    def firing(*alerts: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"exp_labels": a["labels"], "exp_annotations": a["annotations"]} for a in alerts]

    minutes = 480
    total = f"0+600x{minutes}"
    _promtool_test(tmp_path, rules, {
        # le=0.1 bucket: stops growing during the burn
        'gnn_request_latency_seconds_bucket{job="hp-gnn",le="0.1"}': f"0+600x30 18000+0x30 18000+600x{minutes - 60}",
        'gnn_request_latency_seconds_bucket{job="hp-gnn",le="+Inf"}': total,
        'gnn_request_latency_seconds_count{job="hp-gnn"}': total,
    }, [
        # all well before the burn
        {"eval_time": "25m", "alertname": "DrcioSloErrorBudgetBurn", "exp_alerts": []},
        # 25 of 55 minutes bad: 6h/30m > 6x budget (page); 1d/2h > 3x (ticket)
        {"eval_time": "55m", "alertname": "DrcioSloErrorBudgetBurn", "exp_alerts": firing(page, ticket)},
        # 35 minutes after the burn the 30m (and 5m) windows are clean: the page clears,
        # while the slow ticket windows still see it
        {"eval_time": "95m", "alertname": "DrcioSloErrorBudgetBurn", "exp_alerts": firing(ticket)},
        # more than 6h after: the ticket's short window (6h) is clean too
        {"eval_time": "7h", "alertname": "DrcioSloErrorBudgetBurn", "exp_alerts": []},
        {"eval_time": "55m", "alertname": "DrcioSloTargetBucketMissing", "exp_alerts": []},
    ])


def test_a_missing_target_bucket_raises_its_alert(tmp_path: Path) -> None:
    rules = rules_file(load_config(SLO))
    missing = _alert(rules, "DrcioSloTargetBucketMissing")
    _promtool_test(tmp_path, rules, {
        # edges around the target but none at 0.1
        'gnn_request_latency_seconds_bucket{job="hp-gnn",le="0.0848"}': "0+500x30",
        'gnn_request_latency_seconds_bucket{job="hp-gnn",le="0.117877"}': "0+600x30",
        'gnn_request_latency_seconds_count{job="hp-gnn"}': "0+600x30",
    }, [
        {"eval_time": "10m", "alertname": "DrcioSloTargetBucketMissing", "exp_alerts": []},
        # absent() carries the equality matchers of the missing series as labels
        {"eval_time": "20m", "alertname": "DrcioSloTargetBucketMissing",
         "exp_alerts": [{"exp_labels": {**missing["labels"], "job": "hp-gnn", "le": "0.1"},
                         "exp_annotations": missing["annotations"]}]},
    ])


def test_a_group_selecting_none_of_the_running_lp_pods_alerts_and_no_lp_pod_at_all_does_not(tmp_path: Path) -> None:
    """Two writers; group "lp" matches nothing on either. Minutes 0-29 no LP pod runs anywhere (between
    batch runs): quiet. From minute 30 one node runs an LP pod the group does not select: a selector typo."""
    rules = rules_file(load_config(SLO))
    alert = _alert(rules, "DrcioGroupSelectsNoWorkload")
    _promtool_test(tmp_path, rules, {
        'up{job="drcio-writer",instance="node-a"}': "1x90",
        'up{job="drcio-writer",instance="node-b"}': "1x90",
        'drcio_push_group_unmatched{job="drcio-writer",instance="node-a",group="lp"}': "1x90",
        'drcio_push_group_unmatched{job="drcio-writer",instance="node-b",group="lp"}': "1x90",
        'drc_io_low_priority_pods{job="drcio-writer",instance="node-a"}': "0x90",
        'drc_io_low_priority_pods{job="drcio-writer",instance="node-b"}': "0x29 1x60",
    }, [
        {"eval_time": "28m", "alertname": "DrcioGroupSelectsNoWorkload", "exp_alerts": []},
        {"eval_time": "40m", "alertname": "DrcioGroupSelectsNoWorkload", "exp_alerts": []},  # pending (for: 15m)
        {"eval_time": "50m", "alertname": "DrcioGroupSelectsNoWorkload",
         "exp_alerts": [{"exp_labels": {**alert["labels"], "group": "lp"}, "exp_annotations": {
             "summary": "LP group lp selects none of the LP pods running",
             "description": alert["annotations"]["description"]}}]},
    ])
