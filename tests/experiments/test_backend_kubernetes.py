"""``run-experiment --backend kubernetes`` at its boundary: the DynamicClient (a fake
with the real client's call shape, see fake_dynamic_client.py), a fake clock, and
the rendered demo the backend applies."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import parse_config
from experiments.backends.kubernetes import ApiCluster, DryRunCluster, KubernetesBackend, KubernetesConfig
from experiments.cli import run_experiment
from experiments.model import ScenarioRun, ScenarioSpec
from experiments.slo import load_base_slo
from tests.experiments.fake_dynamic_client import FakeDynamicClient

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "rendered" / "demo.yaml"


class Clock:
    def __init__(self) -> None:
        self.t = 1.8e9

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def cluster() -> tuple[FakeDynamicClient, Clock, KubernetesBackend]:
    fake, clock = FakeDynamicClient(), Clock()
    base, _ = load_base_slo(None)
    backend = KubernetesBackend(KubernetesConfig(manifests=DEMO, base_slo=base),
                                ApiCluster(fake, clock=clock, sleep=clock.sleep))
    return fake, clock, backend


def _spec(kind: str, *, lp: bool, controlled: bool, level: float | None = None) -> ScenarioSpec:
    return ScenarioSpec(kind, kind, 30.0, 5.0, lp=lp, controlled=controlled, level=level)  # type: ignore[arg-type]


def test_entering_applies_every_demo_object_namespaces_first_and_waits_for_readiness(
    cluster: tuple[FakeDynamicClient, Clock, KubernetesBackend],
) -> None:
    fake, _, backend = cluster
    with backend:
        applied = [c for c in fake.calls if c[0] == "apply"]
        docs = [d for d in yaml.safe_load_all(DEMO.read_text()) if d]
        assert len(applied) == len(docs)
        kinds = [c[1] for c in applied]
        assert kinds[:2] == ["Namespace", "Namespace"] and "Namespace" not in kinds[2:]
        assert fake.objects[("Job", "drcio-demo", "lp-batch")]["spec"]["parallelism"] == 0
    assert fake.objects[("Job", "drcio-demo", "lp-batch")]["spec"]["parallelism"] == 0


def _slo_in_configmap(fake: FakeDynamicClient) -> dict[str, Any]:
    maps = [v for (k, ns, n), v in fake.objects.items() if k == "ConfigMap" and n.startswith("drcio-slo-")]
    (cm,) = maps
    doc: dict[str, Any] = yaml.safe_load(cm["data"]["slo.yaml"])
    return doc


def test_contention_runs_lp_without_control_and_scales_it_back(
    cluster: tuple[FakeDynamicClient, Clock, KubernetesBackend], tmp_path: Path,
) -> None:
    fake, clock, backend = cluster
    with backend:
        fake.calls.clear()
        start = clock.t
        run = backend.run_scenario(_spec("contention", lp=True, controlled=False), target_ms=5.0, raw_dir=tmp_path,
                                   tick=lambda *_: None)
        slo = _slo_in_configmap(fake)
        assert slo["slos"][0]["policy"] == {"kind": "static", "level": 1.0}
        config = parse_config(slo)
        assert config.slos[0].throttle.rbps is not None and config.slos[0].throttle.rbps.max is None  # no limit
        assert config.writers.kubernetes is not None  # writers from the EndpointSlices, not a static URL
        steps = [(c[0], c[1], c[4]) for c in fake.calls]
        assert steps[0][:2] == ("patch", "ConfigMap")
        assert steps[1][:2] == ("patch", "Deployment") and "restartedAt" in str(steps[1][2])
        assert steps[2] == ("patch", "Job", {"spec": {"parallelism": 1}})
        assert steps[-1] == ("patch", "Job", {"spec": {"parallelism": 0}})
        assert run.end - run.start == pytest.approx(30.0, abs=1.0)
        # LP started only after the controller's rollout finished (no old replica left to lead)
        assert run.start - start >= 2.0
        assert (tmp_path / "slo.yaml").read_text() == fake.objects[next(
            k for k in fake.objects if k[0] == "ConfigMap" and k[2].startswith("drcio-slo-"))]["data"]["slo.yaml"]


def test_drcio_runs_the_pid_policy_at_the_target_and_baseline_keeps_lp_off(
    cluster: tuple[FakeDynamicClient, Clock, KubernetesBackend], tmp_path: Path,
) -> None:
    fake, _, backend = cluster
    with backend:
        backend.run_scenario(_spec("drcio", lp=True, controlled=True), target_ms=7.2, raw_dir=tmp_path,
                             tick=lambda *_: None)
        slo = _slo_in_configmap(fake)["slos"][0]
        assert slo["policy"]["kind"] == "pid" and slo["target"] == "7.2ms"
        assert slo["labels"] == {"job": "hp-gnn"}
        fake.calls.clear()
        backend.run_scenario(_spec("baseline", lp=False, controlled=False), target_ms=7.2, raw_dir=tmp_path,
                             tick=lambda *_: None)
        assert ("patch", "Job", "drcio-demo", "lp-batch", {"spec": {"parallelism": 1}}) not in fake.calls


def test_a_workload_that_never_becomes_ready_fails_with_what_it_waited_for(tmp_path: Path) -> None:
    fake, clock = FakeDynamicClient(ready_after=10**9), Clock()
    backend = KubernetesBackend(KubernetesConfig(manifests=DEMO, ready_timeout_seconds=30),
                                ApiCluster(fake, clock=clock, sleep=clock.sleep))
    with pytest.raises(TimeoutError, match="Deployment drcio-system/drcio-controller not ready within 30 s"):
        backend.__enter__()


def test_the_dry_run_prints_apply_scale_and_query_in_order(tmp_path: Path) -> None:
    out = io.StringIO()
    base, _ = load_base_slo(None)
    backend = KubernetesBackend(KubernetesConfig(manifests=DEMO, base_slo=base), DryRunCluster(out))
    with backend:
        run = backend.run_scenario(_spec("drcio", lp=True, controlled=True), target_ms=7.2, raw_dir=tmp_path,
                                   tick=lambda *_: None)
        backend.export(run)
    text = out.getvalue()
    # the LP job is scaled to 0 on entry and on exit too; the scenario's own scale-down follows its wait
    last_scale_down = text.index("spec.parallelism = 0\n", text.index("wait 30 s (running)"))
    order = [text.index(s) for s in ("apply (server-side", "wait until DaemonSet drcio-system/drcio-writer",
                                     "patch ConfigMap", "restart Deployment drcio-system/drcio-controller",
                                     "spec.parallelism = 1", "wait 30 s (running)")]
    order += [last_scale_down] + [text.index(s) for s in ("query http://127.0.0.1:9090",
                                                          "hp_p95_ms: 1000 * histogram_quantile(0.95")]
    assert order == sorted(order)


def _dry_run(*, duration: float, target: str, **options: Any) -> int:
    return run_experiment(**{
        "scenario": "drcio", "duration": duration, "load_level": "medium", "slo_path": None, "target": target,
        "target_multiple": 2.0, "output": None, "backend": "kubernetes", "warmup": 5.0, "pause": 5.0,
        "sweep_levels": 8, "sweep_duration": None, "lp_mode": None, "lp_workers": None, "lp_file_size": "1G",
        "hp_nodes": None, "work_dir": Path("/var/tmp"), "cgroup_root": "auto", "report_only": False, "dry_run": True,
        "manifests": DEMO, "prometheus_url": "http://127.0.0.1:9090", **options})


def test_run_experiment_dry_run_on_kubernetes_exits_0_and_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert _dry_run(duration=30.0, target="7.2ms") == 0
    out = capsys.readouterr().out
    assert "--- scenario drcio" in out and "policy {'kind': 'pid'" in out and "target 7.2ms" in out


@pytest.mark.parametrize("after", [None, False])
def test_a_dynamic_run_on_a_real_backend_plays_drcio_again_after_the_oracle_unless_told_not_to(
    capsys: pytest.CaptureFixture[str], after: bool | None
) -> None:
    assert _dry_run(duration=30.0, target="7.2ms", scenario="dynamic", schedule="lp-step", drcio_after=after) == 0
    scenarios = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--- scenario")]
    assert scenarios == ["--- scenario dynamic-lp-step", "--- scenario oracle",
                         *(["--- scenario dynamic-lp-step-after"] if after is None else [])]


def test_the_readme_shows_the_current_dry_run_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert _dry_run(duration=60.0, target="10ms") == 0
    out = capsys.readouterr().out.rstrip()
    assert out in (ROOT / "README.md").read_text(), "update the dry-run block in README 'Deploy on Kubernetes'"


def _play(cluster: tuple[FakeDynamicClient, Clock, KubernetesBackend], spec: ScenarioSpec, tmp_path: Path,
          ) -> tuple[float, ScenarioRun, list[tuple[str, int]]]:
    """Run ``spec`` on the fake cluster: (clock at its start, the run, ("lp", parallelism) / ("hp", rate) events)."""
    fake, clock, backend = cluster
    with backend:
        fake.calls.clear()
        start = clock.t
        run = backend.run_scenario(spec, target_ms=7.2, raw_dir=tmp_path, tick=lambda *_: None)
    events: list[tuple[str, int]] = []
    for _verb, _kind, _ns, name, body in fake.calls:
        if name == "lp-batch":
            events.append(("lp", body["spec"]["parallelism"]))
        elif name == "hp-load":
            if body["spec"]["replicas"] == 0:
                events.append(("hp", 0))
            else:
                (container,) = body["spec"]["template"]["spec"]["containers"]
                events.append(("hp", int(container["env"][0]["value"])))
    return start, run, events


def test_a_dynamic_schedule_switches_lp_and_sets_the_hp_rate_per_phase(
    cluster: tuple[FakeDynamicClient, Clock, KubernetesBackend], tmp_path: Path,
) -> None:
    from experiments.schedules import parse_schedule

    schedule = parse_schedule({"name": "t", "phases": [
        {"duration": "20s", "hp_rate": 200, "lp": "mixed"},
        {"duration": "10s", "hp_rate": 0, "lp": "idle"},
        {"duration": "30s", "hp_rate": 100, "lp": "bursts", "burst_on": "5s", "burst_off": "10s"},
    ]}, source="test")
    spec = ScenarioSpec("dynamic", "dynamic", schedule.duration_seconds, 5.0, lp=True, controlled=True,
                        schedule=schedule)
    start, run, events = _play(cluster, spec, tmp_path)
    assert run.end - run.start == pytest.approx(60.0, abs=2.5)  # the last wait polls in 1 s steps
    # phase 1: LP on, HP 200; phase 2: LP off, no HP; phase 3: bursts 5 s on / 10 s off at HP 100; then restored
    assert events[:6] == [("lp", 1), ("hp", 200), ("lp", 0), ("hp", 0), ("lp", 1), ("hp", 100)]
    assert events[6:9] == [("lp", 0), ("lp", 1), ("lp", 0)]
    # restored to the demo's rate, LP off at the scenario's end, and again on leaving the backend
    assert events[-3:] == [("hp", 200), ("lp", 0), ("lp", 0)]
    fake = cluster[0]
    pod = fake.objects[("Deployment", "drcio-demo", "hp-load")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HP_RATE", "value": "200"} in pod["env"] and "--rate=$(HP_RATE)" in pod["args"]
    assert run.notes["schedule"] == "t" and start <= run.start


def test_a_baseline_on_a_schedule_follows_its_hp_rates_and_never_starts_lp(
    cluster: tuple[FakeDynamicClient, Clock, KubernetesBackend], tmp_path: Path,
) -> None:
    from experiments.schedules import parse_schedule

    schedule = parse_schedule({"name": "t", "phases": [
        {"duration": "20s", "hp_rate": 300, "lp": "mixed"},
        {"duration": "20s", "hp_rate": 100, "lp": "bursts", "burst_on": "5s", "burst_off": "5s"},
    ]}, source="test")
    spec = ScenarioSpec("baseline", "baseline", schedule.duration_seconds, 5.0, lp=False, controlled=False,
                        schedule=schedule)
    _start, _run, events = _play(cluster, spec, tmp_path)
    assert {n for what, n in events if what == "lp"} == {0}  # told "off" only, never "on"
    assert [n for what, n in events if what == "hp"][:2] == [300, 100]
