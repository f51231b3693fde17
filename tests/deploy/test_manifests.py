"""deploy/: every overlay renders with kubectl 1.20's kustomize, every object passes
``kubernetes-validate --strict``, the CRD objects match their published schemas,
and the properties the issue asks of each workload hold in what is rendered."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["base", "monitoring", "demo", "overlays/cert-manager"]
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate", "Issuer"}
KUBECTL_CANDIDATES = [
    os.environ.get("DRCIO_KUBECTL", ""),
    "/var/cache/drcio/kubernetes-client/usr/bin/kubectl",
    str(Path.home() / ".cache/drcio/kubernetes-client/usr/bin/kubectl"),
]


def _kubectl() -> str:
    for candidate in KUBECTL_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("kubectl 1.20 (Debian kubernetes-client) is missing: scripts/setup.sh unpacks it into "
                "/var/cache/drcio/kubernetes-client; or set DRCIO_KUBECTL")


def render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run([_kubectl(), "kustomize", str(ROOT / "deploy" / overlay)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize deploy/{overlay}: {proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {o: render(o) for o in OVERLAYS}


def test_the_renderer_is_kubectl_1_20() -> None:
    out = subprocess.run([_kubectl(), "version", "--client", "--short"], capture_output=True, text=True).stdout
    assert "v1.20." in out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_core_object_passes_kubernetes_validate_strict(overlay: str, rendered: dict[str, Any],
                                                             tmp_path: Path) -> None:
    core = [d for d in rendered[overlay] if d["kind"] not in CRD_KINDS]
    assert core or overlay == "monitoring"
    if not core:
        return
    path = tmp_path / f"{overlay.replace('/', '-')}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _crd_model(kind: str) -> Any:
    from cloudcoil.models.cert_manager import v1 as cert_manager
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    return {"ServiceMonitor": monitoring.ServiceMonitor, "PodMonitor": monitoring.PodMonitor,
            "PrometheusRule": monitoring.PrometheusRule, "Certificate": cert_manager.Certificate,
            "Issuer": cert_manager.Issuer}[kind]


def _unknown_keys(given: Any, known: Any, where: str = "") -> Iterator[str]:
    """Keys of ``given`` the model dropped (the models ignore unknown fields; this makes the check strict)."""
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(known, dict) or key not in known:
                yield f"{where}.{key}"
            else:
                yield from _unknown_keys(value, known[key], f"{where}.{key}")
    elif isinstance(given, list) and isinstance(known, list):
        for i, (g, k) in enumerate(zip(given, known)):
            yield from _unknown_keys(g, k, f"{where}[{i}]")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crd_objects_match_the_published_crd_schemas_strictly(overlay: str, rendered: dict[str, Any]) -> None:
    for doc in (d for d in rendered[overlay] if d["kind"] in CRD_KINDS):
        model = _crd_model(doc["kind"])
        parsed = model.model_validate(doc)  # raises with the field on a schema violation
        back = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        unknown = list(_unknown_keys(doc, back))
        assert not unknown, f"{doc['kind']}/{doc['metadata']['name']}: fields not in the CRD schema: {unknown}"


def test_the_crd_check_rejects_an_unknown_field_and_a_bad_value() -> None:
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
            "spec": {"selector": {}, "endpoints": [{"port": "m", "interval": "5s"}]}}
    model = _crd_model("ServiceMonitor")
    bogus = {**good, "spec": {"selector": {}, "endpoints": [{"port": "m", "intervall": "5s"}]}}
    back = model.model_validate(bogus).model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert list(_unknown_keys(bogus, back)) == [".spec.endpoints[0].intervall"]
    with pytest.raises(ValueError):
        model.model_validate({**good, "spec": {"selector": {}, "endpoints": [{"port": "m", "interval": "soon"}]}})


def _by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _mounts_by_path(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "Job"):
            pod = d["spec"]["template"]["spec"]
            for c in pod["containers"]:
                yield f"{d['kind']}/{d['metadata']['name']}", pod, c


def test_the_controller_runs_two_unprivileged_replicas_with_limits_and_probes(rendered: dict[str, Any]) -> None:
    dep = _by(rendered["base"], "Deployment", "drcio-controller")
    assert dep["metadata"]["namespace"] == "drcio-system"
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert set(c["resources"]) == {"requests", "limits"}
    assert "livenessProbe" in c and "readinessProbe" in c
    assert "--leader-elect" in c["args"]
    # the token Secret's files belong to root and group fsGroup: the non-root controller reads them as that group
    token = next(v for v in pod["volumes"] if v["name"] == "token")
    assert token["secret"]["defaultMode"] & 0o040 and pod["securityContext"]["fsGroup"] == \
        pod["securityContext"]["runAsGroup"]


def test_controller_rbac_is_endpointslices_read_and_its_lease(rendered: dict[str, Any]) -> None:
    role = _by(rendered["base"], "Role", "drcio-controller")
    grants = {(g, r, v, tuple(rule.get("resourceNames", ())))
              for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert grants == {
        ("discovery.k8s.io", "endpointslices", "get", ()), ("discovery.k8s.io", "endpointslices", "list", ()),
        ("discovery.k8s.io", "endpointslices", "watch", ()), ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", ("drcio-controller",)),
        ("coordination.k8s.io", "leases", "update", ("drcio-controller",)),
    }
    assert not [d for d in rendered["base"] if d["kind"] == "ClusterRoleBinding"
                and d["subjects"][0]["name"] == "drcio-controller"]


def test_the_writer_runs_on_every_node_with_node_name_host_cgroups_and_no_privilege(rendered: dict[str, Any]) -> None:
    ds = _by(rendered["base"], "DaemonSet", "drcio-writer")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {"operator": "Exists"} in pod["tolerations"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert sorted(host_paths.values()) == ["/proc", "/sys/fs/cgroup", "/var/lib/drcio-writer"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    [proc_volume] = [name for name, path in host_paths.items() if path == "/proc"]
    assert mounts[proc_volume]["readOnly"] is True  # only its mount table is read
    [config_volume] = [v for v in pod["volumes"] if v["name"] == _mounts_by_path(c)["/etc/drcio"]]
    config_map = _by(rendered["base"], "ConfigMap", config_volume["configMap"]["name"])
    writer_config = yaml.safe_load(config_map["data"]["writer.yaml"])
    assert writer_config["proc_root"] == mounts[proc_volume]["mountPath"]
    # The LP cgroups kept across restarts sit in the node's directory for the writer, not the pod's tmp.
    [state_volume] = [name for name, path in host_paths.items() if path == "/var/lib/drcio-writer"]
    assert Path(writer_config["state_file"]).parent == Path(mounts[state_volume]["mountPath"])
    assert not mounts[state_volume].get("readOnly")
    from writer.config import WriterConfig

    WriterConfig.model_validate(writer_config)  # the file the DaemonSet mounts is one the writer accepts
    assert c["securityContext"]["privileged"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not pod.get("hostPID") and not pod.get("hostNetwork")
    assert "livenessProbe" in c and "readinessProbe" in c
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}  # it tolerates every taint: not Windows nodes
    svc = _by(rendered["base"], "Service", "drcio-writer")
    assert svc["spec"]["clusterIP"] == "None"
    role = _by(rendered["base"], "ClusterRole", "drcio-writer")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_the_namespace_admits_the_writers_host_mounts_and_its_critical_priority(rendered: dict[str, Any]) -> None:
    ns = _by(rendered["base"], "Namespace", "drcio-system")
    # hostPath volumes are refused by Pod Security Admission's baseline and restricted levels.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # Where the API server admits a critical priority class only against a quota (GKE outside kube-system).
    priority = _by(rendered["base"], "DaemonSet", "drcio-writer")["spec"]["template"]["spec"]["priorityClassName"]
    quota = _by(rendered["base"], "ResourceQuota", "drcio-critical-pods")
    assert quota["metadata"]["namespace"] == "drcio-system"
    assert quota["spec"]["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": [priority]}]
    controller = _by(rendered["base"], "Deployment", "drcio-controller")["spec"]["template"]["spec"]
    assert controller["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_no_container_anywhere_is_privileged_and_every_one_has_limits(rendered: dict[str, Any]) -> None:
    for where, pod, c in _containers(rendered["demo"]):
        assert c.get("securityContext", {}).get("privileged") in (None, False), where
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert "limits" in c["resources"] and "requests" in c["resources"], where


def test_only_the_controller_and_prometheus_reach_the_writer_and_only_prometheus_the_controller(
    rendered: dict[str, Any],
) -> None:
    writer = _by(rendered["base"], "NetworkPolicy", "drcio-writer-ingress")
    sources = [frm for rule in writer["spec"]["ingress"] for frm in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "drcio-controller"}}} in sources
    assert all("podSelector" in s for s in sources)
    assert len(sources) == 2
    ctrl = _by(rendered["base"], "NetworkPolicy", "drcio-controller-ingress")
    (rule,) = ctrl["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert rule["ports"] == [{"port": 9095, "protocol": "TCP"}]


def test_demo_has_hp_service_and_lp_job_with_their_group_labels(rendered: dict[str, Any]) -> None:
    docs = rendered["demo"]
    hp = _by(docs, "Deployment", "hp-gnn")
    assert hp["spec"]["template"]["metadata"]["labels"]["group-id"] == "hp"
    assert _by(docs, "Service", "hp-gnn")["metadata"]["namespace"] == "drcio-demo"
    lp = _by(docs, "Job", "lp-batch")
    assert lp["spec"]["template"]["metadata"]["labels"]["group-id"] == "lp"
    claims = {v["persistentVolumeClaim"]["claimName"] for d in (hp, lp) for v in d["spec"]["template"]["spec"]["volumes"]}
    assert claims == {"drcio-demo-data"}
    assert _by(docs, "PersistentVolumeClaim", "drcio-demo-data")


def test_dashboard_configmaps_carry_the_grafana_sidecar_label(rendered: dict[str, Any]) -> None:
    maps = [d for d in rendered["monitoring"] if d["kind"] == "ConfigMap"]
    assert {m["metadata"]["name"] for m in maps} == {"grafana-dashboard-drcio-overview", "grafana-dashboard-drcio-node"}
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("overlay", ["monitoring", "overlays/cert-manager"])
def test_instance_names_the_writers_node_and_the_controllers_pod(overlay: str, rendered: dict[str, Any]) -> None:
    """Not the pod's IP:port: the node dashboard's picker and the writer alerts' summaries name the node."""
    source = {"drcio-writer": "__meta_kubernetes_pod_node_name", "drcio-controller": "__meta_kubernetes_pod_name"}
    for name, label in source.items():
        for endpoint in _by(rendered[overlay], "ServiceMonitor", name)["spec"]["endpoints"]:
            assert {"sourceLabels": [label], "targetLabel": "instance"} in endpoint.get("relabelings", []), (name, endpoint)


def test_generated_monitoring_files_are_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate-deploy.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_command_the_manifests_run_is_a_console_script(rendered: dict[str, Any]) -> None:
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    commands = {c["command"][0] for overlay in OVERLAYS for _, _, c in _containers(rendered[overlay])}
    assert commands >= {"drcio-controller", "drcio-writer", "drcio-hp-gnn", "drcio-lp-batch", "drcio-loadgen"}
    assert commands <= scripts, commands - scripts
    for cmd in commands:
        assert shutil.which(cmd, path=str(Path(sys.executable).parent)), f"{cmd} is not installed beside python"


def test_the_image_build_file_installs_the_project_with_its_scripts() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"pip install .* \.$", text, re.MULTILINE)
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert f"COPY {package.rstrip('*')} " in text


def test_the_config_files_in_the_configmaps_load_with_the_programs_own_loaders(rendered: dict[str, Any],
                                                                               tmp_path: Path) -> None:
    from controller.config import parse_config
    from writer.config import load_config as load_writer_config

    maps = {d["metadata"]["name"].rsplit("-", 1)[0]: d for d in rendered["base"] if d["kind"] == "ConfigMap"}
    parse_config(yaml.safe_load(maps["drcio-slo"]["data"]["slo.yaml"]), source="drcio-slo")
    (tmp_path / "writer.yaml").write_text(maps["drcio-writer-config"]["data"]["writer.yaml"])
    config = load_writer_config(tmp_path / "writer.yaml")
    assert config.discovery.kubernetes is not None and config.cgroup_root == "/host/sys/fs/cgroup"
    # the mounts the files name exist in the pods
    ctrl = _by(rendered["base"], "Deployment", "drcio-controller")["spec"]["template"]["spec"]["containers"][0]
    assert {m["mountPath"] for m in ctrl["volumeMounts"]} >= {"/etc/drcio", "/var/run/drcio"}
    writer = _by(rendered["base"], "DaemonSet", "drcio-writer")["spec"]["template"]["spec"]["containers"][0]
    assert {m["mountPath"] for m in writer["volumeMounts"]} >= {"/etc/drcio", "/var/run/drcio", "/host/sys/fs/cgroup"}


def test_the_cert_manager_overlay_switches_push_and_scrape_to_https_and_changes_nothing_else() -> None:
    from controller.config import load_config
    from controller.rules import rule_groups
    from writer.config import load_config as load_writer_config

    overlay, base = ROOT / "deploy" / "overlays" / "cert-manager", ROOT / "deploy" / "base"
    tls_slo, base_slo = load_config(overlay / "slo.yaml"), load_config(base / "slo.yaml")
    assert tls_slo.writers.kubernetes is not None and tls_slo.writers.kubernetes.scheme == "https"
    assert tls_slo.writers.tls is not None and tls_slo.writers.tls.ca_file is not None
    same = {"writers"}
    assert tls_slo.model_dump(exclude=same) == base_slo.model_dump(exclude=same)
    assert rule_groups(tls_slo) == rule_groups(base_slo)  # the PrometheusRule fits both
    tls_writer, base_writer = load_writer_config(overlay / "writer-config.yaml"), load_writer_config(base / "writer-config.yaml")
    assert tls_writer.tls is not None
    assert tls_writer.model_dump(exclude={"tls"}) == base_writer.model_dump(exclude={"tls"})
    docs = render("overlays/cert-manager")
    pod = _by(docs, "DaemonSet", "drcio-writer")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    secret_of = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
    assert secret_of[mounts[str(tls_writer.tls.cert_file.parent)]] == "drcio-writer-tls"
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    ctrl = _by(docs, "Deployment", "drcio-controller")["spec"]["template"]["spec"]
    cmounts = {m["mountPath"]: m["name"] for m in ctrl["containers"][0]["volumeMounts"]}
    assert str(tls_slo.writers.tls.ca_file.parent) in cmounts
    monitor = _by(docs, "ServiceMonitor", "drcio-writer")
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https"
