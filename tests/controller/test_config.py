"""The SLO file: the design's example loads as written, defaults are pinned, errors say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import ControllerConfig, load_config, parse_config
from controller.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "slo.yaml"


def minimal(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "writers": {"static": ["http://127.0.0.1:9100"]},
        "slos": [
            {
                "name": "gnn-p95",
                "metric": "gnn_request_latency_seconds",
                "target": "100ms",
                "policy": {"kind": "aimd", "increase": 0.05, "decrease": 0.5},
                "throttle": {"selector": {"group-id": "lp"}, "rbps": {"min": "10M", "max": "max"}},
            }
        ],
    }
    raw.update(overrides)
    return raw


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="slo.yaml")
    return e.value.problems


def test_the_design_example_loads_as_written() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.interval_seconds == 5.0
    assert cfg.mode == "active"
    assert cfg.prometheus.url == "http://127.0.0.1:9090" and cfg.prometheus.timeout_seconds == 2.0
    assert cfg.writers.static == ["http://127.0.0.1:9100"]
    assert cfg.effective_token_file == Path("/var/run/drcio/token")
    assert (cfg.failsafe.after, cfg.failsafe.level) == (3, 0.2)
    (slo,) = cfg.slos
    assert (slo.name, slo.metric, slo.labels, slo.quantile) == ("gnn-p95", "gnn_request_latency_seconds", {"job": "hp-gnn"}, 0.95)
    assert (slo.window_seconds, slo.target_seconds) == (30.0, 0.1)
    assert slo.policy.kind == "pid" and slo.policy.params == {"kp": 0.5, "ki": 0.1, "kd": 0.0}
    t = slo.throttle
    assert t.selector == {"group-id": "lp"} and t.devices == "auto" and t.group_name == "lp"
    assert t.rbps is not None and (t.rbps.min, t.rbps.max) == (10 * 1024**2, None)
    assert t.wbps is not None and t.wbps.min == 5 * 1024**2
    assert t.weight is not None and (t.weight.min, t.weight.max) == (10, 100)


def test_defaults_are_pinned() -> None:
    cfg = parse_config(minimal())
    assert cfg.interval_seconds == 5.0
    assert cfg.mode == "active"
    assert cfg.prometheus.timeout_seconds == 2.0 and cfg.prometheus.retries == 1
    assert cfg.writers.timeout_seconds == 2.0
    assert (cfg.failsafe.after, cfg.failsafe.level) == (3, 0.2)
    assert cfg.lease_ttl == 30.0  # 6 intervals
    slo = cfg.slos[0]
    assert (slo.quantile, slo.window_seconds, slo.min_rate, slo.labels) == (0.95, 30.0, 0.5, {})
    assert slo.throttle.devices == "auto"
    assert slo.throttle.rbps is not None and slo.throttle.rbps.finite_top == 256 * 10 * 1024**2


@pytest.mark.parametrize(
    "devices, expected",
    [
        ("auto", "auto"),
        (["254:0", "8:16"], ["254:0", "8:16"]),
        ({"mount": "/mnt/features"}, [{"mount": "/mnt/features"}]),
    ],
    ids=["auto", "explicit", "mount-shorthand"],
)
def test_devices_take_the_three_forms(devices: Any, expected: Any) -> None:
    raw = minimal()
    raw["slos"][0]["throttle"]["devices"] = devices
    got = parse_config(raw).slos[0].throttle.devices
    dumped = got if isinstance(got, str) else [d if isinstance(d, str) else d.model_dump() for d in got]
    assert dumped == expected


def test_a_raw_query_replaces_metric_labels_quantile_and_window() -> None:
    raw = minimal()
    del raw["slos"][0]["metric"]
    raw["slos"][0]["query"] = "max(my_p95_seconds)"
    assert parse_config(raw).slos[0].query == "max(my_p95_seconds)"


@pytest.mark.parametrize(
    "mutate, where, what",
    [
        (lambda r: r["slos"][0].update(target="100"), "slos[0] (gnn-p95) -> target", "duration such as"),
        (lambda r: r["slos"][0].update(quantile=1.5), "slos[0] (gnn-p95) -> quantile", "less than 1"),
        (lambda r: r["slos"][0]["policy"].update(kq=1), "slos[0] (gnn-p95) -> policy", "unknown policy parameter 'kq'"),
        (lambda r: r["slos"][0].update(policy={"kind": "magic"}), "slos[0] (gnn-p95) -> policy", "unknown policy kind"),
        (lambda r: r["slos"][0]["throttle"].update(selector={"../x": "lp"}), "throttle -> selector", "label key"),
        (lambda r: r["slos"][0]["throttle"].update(devices=["sda1"]), "throttle -> devices", ""),
        (lambda r: r["slos"][0]["throttle"].update(rbps={"min": "10M", "max": "5M"}), "throttle -> rbps", "must be >= min"),
        (lambda r: r["slos"][0].update(metric="gnn_request_latency_seconds_bucket"), "metric", "without '_bucket'"),
        (lambda r: r["slos"][0].update(query="x"), "slos[0] (gnn-p95)", "exactly one of 'metric'"),
        (lambda r: r.update(interval="500ms"), "interval", "at least 1s"),
        (lambda r: r.update(mode="sometimes"), "mode", "'active' or 'dry-run'"),
        (lambda r: r.update(surprise=1), "surprise", "Extra inputs are not permitted"),
        (lambda r: r.update(writers={}), "writers", "exactly one of 'static'"),
        (lambda r: r["slos"].append(dict(r["slos"][0])), "(top level)", "unique"),
        (lambda r: r["slos"][0].update(policy={"kind": "pid", "gate_utilisation": 0.9},
                                       throttle={"selector": {"group-id": "lp"}, "riops": {"min": 100, "max": "max"}}),
         "slos[0] (gnn-p95)", "give throttle.rbps or throttle.wbps"),
    ],
    ids=[
        "duration-without-unit", "quantile-range", "unknown-policy-param", "unknown-policy-kind", "path-like-selector",
        "partition-name-as-device", "range-inverted", "bucket-suffix", "metric-and-query", "interval-too-short",
        "bad-mode", "unknown-top-level-field", "no-writers", "duplicate-slo-names", "gate-without-bandwidth",
    ],
)
def test_errors_name_the_file_the_slo_and_the_field(mutate: Any, where: str, what: str) -> None:
    raw = minimal()
    mutate(raw)
    problems = problems_of(raw)
    assert any(p.startswith("slo.yaml: ") and where in p and what in p for p in problems), problems


@pytest.mark.parametrize("value", [1.5, -0.1, "warm", "0.4", True, float("nan")])
def test_a_start_level_is_in_force_failsafe_or_a_level(value: Any) -> None:
    assert problems_of(minimal(start_level=value)) == [
        f"slo.yaml: start_level: must be 'in-force', 'failsafe' or a level in [0, 1], got {value!r}"]
    assert parse_config(minimal(start_level=0.35)).fixed_start_level == 0.35
    assert parse_config(minimal(start_level="failsafe")).fixed_start_level == parse_config(minimal()).failsafe.level
    assert parse_config(minimal()).fixed_start_level is None  # in-force: read from the writers


@pytest.mark.parametrize(("lease_ttl", "ok"), [("2s", False), ("9s", False), ("10s", True)])
def test_a_lease_shorter_than_two_intervals_is_refused(lease_ttl: str, ok: bool) -> None:
    raw = minimal(interval="5s", lease_ttl=lease_ttl)
    if ok:
        assert parse_config(raw).lease_ttl == 10.0
    else:
        (problem,) = problems_of(raw)
        assert f"lease_ttl ({lease_ttl}) must be at least twice the interval (5s)" in problem


def test_every_error_is_reported_at_once() -> None:
    raw = minimal(interval="0.1s", mode="x")
    raw["slos"][0]["quantile"] = 2
    assert len(problems_of(raw)) == 3


def test_malformed_yaml_says_file_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "slo.yaml"
    p.write_text("interval: 5s\nslos: [\n  - name: x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.problems[0].startswith(f"{p}:")
    assert "not valid YAML" in e.value.problems[0]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_the_top_level_must_be_a_mapping() -> None:
    assert "expected a mapping" in problems_of(["a"])[0]


def test_the_example_file_round_trips_through_yaml() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(parse_config(raw), ControllerConfig)
