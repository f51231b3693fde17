"""Every dashboard panel query and every rule expression against a live stack.

The real parts, on this machine: the HP GNN service under open-loop load, the
LP batch job in its own cgroup, ``drcio-writer`` (local discovery of two
cgroups ``drcio-t8-<id>/{hp,lp}``), ``drcio-controller`` pushing to it, and a
real Prometheus scraping all four every second and evaluating the rules
``drcio-controller export-rules`` builds from the test's SLO file (their groups
evaluated every second here instead of every 30 s, so they have data within
the test).

Every panel target must parse and return data, except those listed in
:data:`EXPECTED_EMPTY` with the reason they are empty in this healthy
scenario. Every recording rule must return data; every alert expression must
parse and, the scenario being healthy, not fire (each metric an alert reads
must exist, except counters that only appear with their first event).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.config import parse_config
from controller.rules import rules_file
from experiments.backends.supervision import Supervisor, http_ok, json_event, nonempty, wait_until
from experiments.prometheus_server import PrometheusServer, ScrapeTarget, free_port
from writer.cgroups import Hierarchy, WriterError, detect_hierarchy
from writer.groups import create_group, move_pid, remove_group

pytestmark = [pytest.mark.prometheus, pytest.mark.kernel]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RATE_INTERVAL = "10s"  # what $__rate_interval becomes (Grafana: max(4 x scrape interval, step))

#: (dashboard uid, panel title, refId) -> why it is empty in this scenario.
EXPECTED_EMPTY: dict[tuple[str, str, str], str] = {
    ("drcio-overview", "Sensor errors", "A"):
        "every reading succeeds; drcio_controller_sensor_errors_total has a series only after a first error",
    ("drcio-overview", "Discovery and reconcile problems", "A"):
        'no reconcile round fails; drcio_reconciles_total{result="failed"} appears with the first failure',
    ("drcio-node", "io.max IOPS per workload and device", "A"):
        "the SLO sets no riops/wiops, so no IOPS limit is in force",
}

#: Metrics alerts read that exist only after their first event (a healthy run has none):
#: sensor errors, and a push group that selects no workload on the node.
FIRST_EVENT_COUNTERS = {"drcio_controller_sensor_errors_total", "drcio_push_group_unmatched"}


def _distinct_ports(*names: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


def _hierarchy_or_skip() -> Hierarchy:
    if os.geteuid() != 0:
        pytest.skip("needs root to create the LP/HP cgroups the writer limits")
    try:
        return detect_hierarchy("auto")
    except WriterError as e:
        pytest.skip(f"no cgroup I/O controller: {e}")


@dataclass
class Stack:
    prometheus: PrometheusServer
    rules: dict[str, Any]
    slo: dict[str, Any]
    #: One client for the module's hundred-odd queries: ``httpx.get`` builds a client (and its TLS
    #: context) per call, ~50 ms of CPU each here.
    client: httpx.Client


def _slo(prom_url: str, writer_url: str, token: Path) -> dict[str, Any]:
    return {
        "interval": "1s",
        "prometheus": {"url": prom_url, "timeout": "500ms", "retries": 0},
        "writers": {"static": [writer_url], "token_file": str(token)},
        "slos": [{
            "name": "gnn-p95", "metric": "gnn_request_latency_seconds", "labels": {"job": "hp-gnn"},
            "window": "5s", "target": "100ms",
            # The gate on, so the controller measures LP's use of its limit (the overview's gate panel).
            "policy": {"kind": "pid", "kp": 0.5, "ki": 0.1, "kd": 0.0, "gate_utilisation": 0.9},
            "throttle": {"selector": {"group-id": "lp"}, "group": "lp", "devices": "auto",
                         "rbps": {"min": "10M", "max": "2G"}, "wbps": {"min": "5M", "max": "1G"},
                         "weight": {"min": 10, "max": 100}},
        }],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    h = _hierarchy_or_skip()
    tmp = tmp_path_factory.mktemp("live")
    work = Path(os.environ.get("DRCIO_T8_WORKDIR", "/var/tmp")) / f"drcio-t8-{secrets.token_hex(4)}"  # O_DIRECT: a real disk
    top = f"drcio-t8-{secrets.token_hex(4)}"
    sup = Supervisor(stop_timeout_seconds=5)
    prom: PrometheusServer | None = None
    py = sys.executable
    ports = _distinct_ports("hp", "lp", "writer", "controller", "prometheus")
    token = tmp / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    try:
        for role in ("hp", "lp"):
            create_group(h, f"{top}/{role}")
        work.mkdir()
        prom = PrometheusServer(
            targets=[ScrapeTarget("hp-gnn", f"127.0.0.1:{ports['hp']}"),
                     ScrapeTarget("lp-batch", f"127.0.0.1:{ports['lp']}"),
                     ScrapeTarget("drcio-writer", f"127.0.0.1:{ports['writer']}"),
                     ScrapeTarget("drcio-controller", f"127.0.0.1:{ports['controller']}")],
            scrape_interval_seconds=1.0, workdir=tmp / "prom", rule_files=[tmp / "rules.yaml"])
        (tmp / "prom").mkdir()
        prom.port = ports["prometheus"]
        slo = _slo(prom.url, f"http://127.0.0.1:{ports['writer']}", token)
        rules = rules_file(parse_config(slo))
        for group in rules["groups"]:
            group["interval"] = "1s"
        (tmp / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (tmp / "slo.yaml").write_text(yaml.safe_dump(slo))
        (tmp / "writer.yaml").write_text(yaml.safe_dump({
            "listen": f"127.0.0.1:{ports['writer']}", "token_file": str(token), "cgroup_root": "auto",
            "discovery": {"local": [{"name": "lp-batch", "path": f"{top}/lp", "labels": {"group-id": "lp"}},
                                    {"name": "hp-gnn", "path": f"{top}/hp", "labels": {"group-id": "hp"}}]},
            "failsafe": {"mode": "hold", "ttl": "30s"},
            "reconcile_interval": "2s",
        }))
        prom.start()
        hp = sup.start("hp-gnn", [py, "-m", "experiments.workloads.hp_gnn", "--data-dir", str(work / "hp"),
                                  "--nodes", "4096", "--threads", "4", "--port", str(ports["hp"])],
                       log_path=tmp / "hp.log")
        with http_ok(f"http://127.0.0.1:{ports['hp']}/health") as ready:
            wait_until("the HP service", ready, proc=hp, supervisor=sup, timeout=60)
        move_pid(h, f"{top}/hp", hp.pid)
        lp_out = tmp / "lp.out"
        lp = sup.start("lp-batch", [py, "-m", "experiments.workloads.lp_batch", "--data-dir", str(work / "lp"),
                                    "--port", str(ports["lp"]), "--mode", "mixed", "--workers", "2",
                                    "--file-size", "64M", "--block-size", "256K"],
                       log_path=tmp / "lp.log", stdout_path=lp_out)
        wait_until("the LP job", json_event(lp_out, "prepared"), proc=lp, supervisor=sup, timeout=60)
        move_pid(h, f"{top}/lp", lp.pid)
        writer = sup.start("drcio-writer", [py, "-c", "from writer.cli import main; main()", "--config",
                                            str(tmp / "writer.yaml")], log_path=tmp / "writer.log")
        with http_ok(f"http://127.0.0.1:{ports['writer']}/health") as ready:
            wait_until("the writer", ready, proc=writer, supervisor=sup, timeout=30)
        sup.start("loadgen", [py, "-m", "experiments.workloads.loadgen", "--url",
                              f"http://127.0.0.1:{ports['hp']}/score", "--rate", "60", "--duration", "120",
                              "--out", str(tmp / "client.csv")], log_path=tmp / "loadgen.log")
        os.kill(lp.pid, signal.SIGUSR1)
        # The controller starts on a stack that already serves traffic, as on a cluster; started
        # earlier, its first readings would be sensor errors (no HP series yet), by design.
        prom.wait_for_samples('rate(gnn_request_latency_seconds_count{job="hp-gnn"}[5s]) > 0', timeout_seconds=30)
        decisions = tmp / "decisions.jsonl"
        sup.start("drcio-controller", [py, "-c", "from controller.cli import main; main()", "--config",
                                       str(tmp / "slo.yaml"), "--metrics-listen", f"127.0.0.1:{ports['controller']}",
                                       "--decision-log", str(decisions)], log_path=tmp / "controller.log")
        wait_until("the controller's first decision", nonempty(decisions), proc=None, supervisor=sup, timeout=30)
        # A limit read back, an SLO ratio recorded, the controller's reading ok: everything has flowed once.
        for query in ("drcio_io_max_bytes_per_second", "drcio:slo_errors:ratio_rate5m",
                      "drcio_controller_observed_latency_seconds", "rate(batch_io_bytes_total[10s]) > 0"):
            prom.wait_for_samples(query, timeout_seconds=45)
        time.sleep(8)  # a few more scrapes so every 10 s rate window is full
        sup.check()
        with httpx.Client(base_url=prom.url, timeout=10) as client:
            yield Stack(prom, rules, slo, client)
    finally:
        sup.stop_all()
        if prom is not None:
            prom.stop()
        for rel in (f"{top}/hp", f"{top}/lp", top):
            try:
                remove_group(h, rel)
            except WriterError:
                pass
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        assert not (h.root / top).exists(), f"cgroup {top} left behind"


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    r = stack.client.get("/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace('=~"$slo"', '=~".*"')
            .replace('=~"$hp_job"', '=~"hp-gnn"').replace('=~"$instance"', '=~".*"'))


def _panel_targets() -> list[tuple[str, str, str, str]]:
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                out.append((dash["uid"], panel["title"], target["refId"], target["expr"]))
    return out


def test_every_dashboard_panel_query_returns_data_or_is_expected_empty(stack: Stack) -> None:
    targets = _panel_targets()
    assert len(targets) > 40
    wrong = []
    for uid, title, ref, expr in targets:
        query = _substitute(expr)
        assert "$" not in query, f"unsubstituted variable in {uid}/{title}/{ref}: {query}"
        result = _query(stack, query)
        expected_empty = (uid, title, ref) in EXPECTED_EMPTY
        if bool(result) == expected_empty:
            wrong.append(f"{uid} / {title} / {ref}: {'data' if result else 'empty'}, expected "
                         f"{'empty' if expected_empty else 'data'}: {query}")
    assert not wrong, "\n".join(wrong)


def test_every_dashboard_variable_query_finds_values(stack: Stack) -> None:
    for path in DASHBOARDS:
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"])
            assert m, var["query"]
            r = stack.client.get(f"/api/v1/label/{m.group(2)}/values", params={"match[]": m.group(1)})
            assert r.json()["data"], f"{path.name}: ${var['name']} would offer nothing"


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    for group in stack.rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                labels = ",".join(f'{k}="{v}"' for k, v in rule.get("labels", {}).items())
                assert _query(stack, f"{rule['record']}{{{labels}}}"), rule["record"]
                assert _query(stack, rule["expr"]), rule["expr"]


def test_every_alert_expression_parses_reads_live_series_and_stays_quiet_in_a_healthy_run(stack: Stack) -> None:
    names = set(stack.client.get("/api/v1/label/__name__/values").json()["data"])
    recorded = {r["record"] for g in stack.rules["groups"] for r in g["rules"] if "record" in r}
    for group in stack.rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert _query(stack, rule["expr"]) == [], f"{rule['alert']} fires in a healthy run"
            read = {m for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", rule["expr"])
                    if m not in {"rate", "increase", "sum", "max", "absent", "by"}}
            missing = read - names - recorded - FIRST_EVENT_COUNTERS
            assert not missing, f"{rule['alert']} reads series that do not exist: {missing}"
    # and the rules Prometheus loaded are the ones built here, all healthy
    loaded = stack.client.get("/api/v1/rules").json()["data"]["groups"]
    assert {g["name"] for g in loaded} == {g["name"] for g in stack.rules["groups"]}
    assert all(r["health"] == "ok" for g in loaded for r in g["rules"]), [
        (r["name"], r.get("lastError")) for g in loaded for r in g["rules"] if r["health"] != "ok"]


@pytest.mark.parametrize(("target", "code"), [("100ms", 0), ("105ms", 2)])
def test_export_rules_checks_the_target_bucket_against_the_live_histogram(
    stack: Stack, tmp_path: Path, target: str, code: int,
) -> None:
    import subprocess

    slo = {**stack.slo, "slos": [{**stack.slo["slos"][0], "target": target}]}
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump(slo))
    out = tmp_path / "rules.yaml"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'drcio-controller'; from controller.cli import main; main()",
         "export-rules", "--config", str(tmp_path / "slo.yaml"), "--prometheus", stack.prometheus.url,
         "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    if code:
        assert "0.105s is not a bucket edge of gnn_request_latency_seconds" in proc.stderr
        assert "0.1" in proc.stderr and not out.exists()
    else:
        assert out.exists()
