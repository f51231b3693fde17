"""Workload discovery: local cgroup lists, and this node's pods from a (fake, recorded) API server.

The Kubernetes API cannot run here, so it is faked at its boundary only: the
list calls answer with recorded ``PodList`` JSON deserialised into real
``kubernetes.client`` models, and the watch replays recorded events shaped
like ``kubernetes.watch.Watch`` yields them. When its scripts run out the fake
watch blocks until ``stop()`` - like a real idle watch - and signals that the
discovery thread has consumed everything, so tests wait on that, not on time.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from tests.writer.fake_trees import make_dirs
from writer.cgroup_paths import Driver
from writer.discovery import (
    KubernetesDiscovery,
    LocalDiscovery,
    LocalEntry,
    Workload,
    _backoff_delay,
    matches,
    role_of,
    server_label_selector,
)

RECORDED = Path(__file__).parent / "recorded"
NODE = "worker-1"
#: Upper bound on waiting for the discovery thread; a guard against a hang, never a pacing device.
GUARD_SECONDS = 10.0


def _recorded(name: str) -> Any:
    return json.loads((RECORDED / name).read_text())


def _model(data: Any, kind: str) -> Any:
    return ApiClient().deserialize(json.dumps(data), kind, "application/json")


def _event(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An event as ``kubernetes.watch.Watch.stream`` yields it: ERROR and BOOKMARK objects stay dicts."""
    obj = raw["object"] if raw["type"] in ("ERROR", "BOOKMARK") else _model(raw["object"], "V1Pod")
    return {"type": raw["type"], "object": obj, "raw_object": raw["object"]}


class FakeCoreV1Api:
    """Answers pod list calls with recorded PodLists, one per call (the last one repeats); records the calls."""

    def __init__(self, *answers: str | Exception) -> None:
        self._answers = list(answers)
        self.calls: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._answer("list_pod_for_all_namespaces", (), kwargs)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        return self._answer("list_namespaced_pod", (namespace,), kwargs)

    def _answer(self, name: str, args: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, args, kwargs))
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, Exception):
            raise answer
        return _model(_recorded(answer), "V1PodList")


class FakeWatch:
    """One ``Watch``: replays the factory's next script, or blocks like an idle watch until stopped."""

    def __init__(self, factory: FakeWatchFactory) -> None:
        self._factory = factory
        self._stopped = threading.Event()

    def stream(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
        self._factory.calls.append((func.__name__, args, kwargs))
        if self._factory.scripts:
            for item in self._factory.scripts.pop(0):
                if isinstance(item, BaseException):
                    raise item
                yield item
            return
        self._factory.idle.set()
        self._stopped.wait(GUARD_SECONDS)

    def stop(self) -> None:
        self._factory.stops += 1
        self._stopped.set()


class FakeWatchFactory:
    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.idle = threading.Event()
        self.stops = 0

    def __call__(self) -> FakeWatch:
        return FakeWatch(self)


@pytest.fixture
def systemd_root(tmp_path: Path) -> Path:
    make_dirs(tmp_path, "kubepods.slice")
    return tmp_path


def _discovery(
    root: Path, api: FakeCoreV1Api, watch: FakeWatchFactory | None = None, **kwargs: Any
) -> KubernetesDiscovery:
    return KubernetesDiscovery(
        NODE,
        api=api,
        hierarchy_root=root,
        watch_factory=watch or FakeWatchFactory(),
        backoff_initial_seconds=0.0,
        **kwargs,
    )


def _names(workloads: list[Workload]) -> list[str]:
    return sorted(w.name for w in workloads)


def _run_until_idle(discovery: KubernetesDiscovery, watch: FakeWatchFactory, on_change: Callable[[], None]) -> None:
    discovery.start(on_change)
    try:
        assert watch.idle.wait(GUARD_SECONDS), "the discovery thread never reached an idle watch"
    finally:
        discovery.stop()


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("labels", "selector", "expected"),
    [
        pytest.param({"group-id": "lp", "app": "x"}, {"group-id": "lp"}, True, id="subset"),
        pytest.param({"group-id": "hp"}, {"group-id": "lp"}, False, id="other-value"),
        pytest.param({}, {"group-id": "lp"}, False, id="missing-key"),
        pytest.param({"group-id": "lp", "tier": "b"}, {"group-id": "lp", "tier": "a"}, False, id="all-pairs-must-match"),
        pytest.param({"group-id": ""}, {"group-id": ""}, True, id="empty-value-is-a-value"),
    ],
)
def test_matches_is_an_equality_selector(labels: dict[str, str], selector: dict[str, str], expected: bool) -> None:
    assert matches(labels, selector) is expected


@pytest.mark.parametrize(
    ("labels", "role"),
    [
        pytest.param({"group-id": "hp"}, "hp", id="hp"),
        pytest.param({"group-id": "lp", "tier": "batch"}, "lp", id="lp"),
        pytest.param({"group-id": "lp", "protected": "yes"}, "hp", id="hp-wins-when-both-match"),
        pytest.param({"app": "web"}, "other", id="other"),
    ],
)
def test_role_prefers_hp_so_a_protected_service_is_never_throttled(labels: dict[str, str], role: str) -> None:
    assert role_of(labels, {"protected": "yes"} if "protected" in labels else {"group-id": "hp"}, {"group-id": "lp"}) == role


@pytest.mark.parametrize(
    ("hp", "lp", "expected"),
    [
        pytest.param({"group-id": "hp"}, {"group-id": "lp"}, "group-id in (hp,lp)", id="defaults"),
        pytest.param({"team": "ml", "tier": "gold"}, {"team": "ml", "tier": "bronze"}, "team=ml,tier in (bronze,gold)", id="shared-and-differing"),
        pytest.param({"app": "gnn"}, {"group-id": "lp"}, "", id="no-shared-key-lists-the-node"),
    ],
)
def test_one_server_side_label_selector_covers_both_groups(hp: dict[str, str], lp: dict[str, str], expected: str) -> None:
    assert server_label_selector(hp, lp) == expected


@pytest.mark.parametrize(
    "selector",
    [
        pytest.param({}, id="empty-matches-everything"),
        pytest.param({"group id": "lp"}, id="space-in-key"),
        pytest.param({"group-id": "lp,app!=x"}, id="selector-syntax-in-value"),
    ],
)
def test_bad_selectors_are_refused_at_construction(tmp_path: Path, selector: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="LP selector"):
        _discovery(tmp_path, FakeCoreV1Api("pods-worker-1.json"), lp_selector=selector)
    with pytest.raises(ValueError, match="LP selector"):
        LocalDiscovery([], hierarchy_root=tmp_path, lp_selector=selector)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [pytest.param(0, 1.0, id="first"), pytest.param(3, 8.0, id="doubles"), pytest.param(10, 60.0, id="capped")],
)
def test_back_off_doubles_up_to_its_cap(attempt: int, expected: float) -> None:
    assert _backoff_delay(attempt, initial_seconds=1.0, max_seconds=60.0) == expected


# --------------------------------------------------------------------------- local mode


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"name": "lp", "path": "/sys/fs/cgroup/lp"}, "must be relative", id="absolute"),
        pytest.param({"name": "lp", "path": "demo/../../etc"}, "without '..'", id="dot-dot"),
        pytest.param({"name": "lp", "path": "demo/lp\x00"}, "NUL", id="nul"),
        pytest.param({"name": "lp", "path": ""}, "must be relative", id="empty"),
        pytest.param({"name": "lp", "path": "./"}, "hierarchy root itself", id="the-root"),
        pytest.param({"name": "", "path": "demo/lp"}, "at least 1 character", id="nameless"),
        pytest.param({"name": "lp", "path": "demo/lp", "label": {}}, "Extra inputs", id="unknown-field"),
        pytest.param({"name": "lp", "path": "demo/lp", "labels": {"group id": "lp"}}, "not a valid Kubernetes label key", id="bad-label"),
    ],
)
def test_local_entries_are_validated(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LocalEntry.model_validate(raw)


def test_local_discovery_lists_existing_cgroups_with_their_roles(tmp_path: Path) -> None:
    root = tmp_path / "blkio"
    make_dirs(root, "drcio-demo/lp", "drcio-demo/hp", "drcio-demo/side")
    entries = [
        LocalEntry(name="lp-batch", path="drcio-demo/lp", labels={"group-id": "lp"}),
        LocalEntry(name="hp-gnn", path="drcio-demo/hp", labels={"group-id": "hp"}),
        LocalEntry(name="sidecar", path="drcio-demo/side"),
        LocalEntry(name="gone", path="drcio-demo/not-started-yet", labels={"group-id": "lp"}),
    ]
    discovery = LocalDiscovery(entries, hierarchy_root=root)
    discovery.start(lambda: None)
    assert discovery.snapshot() == [
        Workload("lp-batch", None, None, {"group-id": "lp"}, root / "drcio-demo/lp", "lp"),
        Workload("hp-gnn", None, None, {"group-id": "hp"}, root / "drcio-demo/hp", "hp"),
        Workload("sidecar", None, None, {}, root / "drcio-demo/side", "other"),
    ]
    discovery.stop()


def test_local_discovery_skips_a_cgroup_that_vanished_and_finds_one_that_appeared(tmp_path: Path) -> None:
    (lp,) = make_dirs(tmp_path, "demo/lp")
    discovery = LocalDiscovery(
        [LocalEntry(name="lp", path="demo/lp"), LocalEntry(name="late", path="demo/late")], hierarchy_root=tmp_path
    )
    assert _names(discovery.snapshot()) == ["lp"]
    lp.rmdir()
    make_dirs(tmp_path, "demo/late")
    assert _names(discovery.snapshot()) == ["late"]


def test_local_discovery_never_follows_a_symlink_out_of_the_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cgroup"
    make_dirs(tmp_path, "cgroup", "elsewhere/lp")
    (root / "demo").symlink_to(tmp_path / "elsewhere")
    discovery = LocalDiscovery([LocalEntry(name="lp", path="demo/lp")], hierarchy_root=root)
    with caplog.at_level(logging.ERROR, logger="writer.discovery"):
        assert discovery.snapshot() == []
    assert "leaves the cgroup root" in caplog.text


def test_local_entry_names_must_be_unique(tmp_path: Path) -> None:
    entry = LocalEntry(name="lp", path="demo/lp")
    with pytest.raises(ValueError, match="repeated: lp"):
        LocalDiscovery([entry, entry], hierarchy_root=tmp_path)


# --------------------------------------------------------------------------- Kubernetes mode: list


@pytest.mark.parametrize(
    ("namespace", "expected_call"),
    [
        pytest.param(None, ("list_pod_for_all_namespaces", ()), id="all-namespaces"),
        pytest.param("drcio-demo", ("list_namespaced_pod", ("drcio-demo",)), id="one-namespace"),
    ],
)
def test_listing_asks_only_for_this_nodes_hp_and_lp_pods(
    systemd_root: Path, namespace: str | None, expected_call: tuple[str, tuple[str, ...]]
) -> None:
    api = FakeCoreV1Api("pods-worker-1.json")
    _discovery(systemd_root, api, namespace=namespace).relist()
    assert api.calls == [
        (*expected_call, {"field_selector": "spec.nodeName=worker-1", "label_selector": "group-id in (hp,lp)"})
    ]


_UID_ABCDE = "3b5c1f7e_2a4d_4e8f_9b1a_6c7d8e9f0a1b"
_UID_SCAN = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4"
_UID_GNN = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
_STATIC_HASH = "6a2b7e1f0c9d8e7f6a5b4c3d2e1f0a9b"


@pytest.mark.parametrize(
    ("driver", "tree", "expected"),
    [
        pytest.param(
            None,
            "kubepods.slice",
            {
                "lp-batch-7d9f8-abcde": ("lp", f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{_UID_ABCDE}.slice"),
                "lp-scan-0": ("lp", f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{_UID_SCAN.replace('-', '_')}.slice"),
                "hp-gnn-5c6b7-xyz12": ("hp", f"kubepods.slice/kubepods-pod{_UID_GNN.replace('-', '_')}.slice"),
                "lp-static-worker-1": ("lp", f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{_STATIC_HASH}.slice"),
            },
            id="systemd-detected",
        ),
        pytest.param(
            None,
            "kubepods",
            {
                "lp-batch-7d9f8-abcde": ("lp", f"kubepods/burstable/pod{_UID_ABCDE.replace('_', '-')}"),
                "lp-scan-0": ("lp", f"kubepods/besteffort/pod{_UID_SCAN}"),
                "hp-gnn-5c6b7-xyz12": ("hp", f"kubepods/pod{_UID_GNN}"),
                "lp-static-worker-1": ("lp", f"kubepods/burstable/pod{_STATIC_HASH}"),
            },
            id="cgroupfs-detected",
        ),
        pytest.param(
            "cgroupfs",
            "empty-tree",
            {
                "lp-batch-7d9f8-abcde": ("lp", f"kubepods/burstable/pod{_UID_ABCDE.replace('_', '-')}"),
                "lp-scan-0": ("lp", f"kubepods/besteffort/pod{_UID_SCAN}"),
                "hp-gnn-5c6b7-xyz12": ("hp", f"kubepods/pod{_UID_GNN}"),
                "lp-static-worker-1": ("lp", f"kubepods/burstable/pod{_STATIC_HASH}"),
            },
            id="cgroupfs-given",
        ),
    ],
)
def test_running_hp_and_lp_pods_become_workloads_with_their_qos_cgroup(
    tmp_path: Path, driver: Driver | None, tree: str, expected: dict[str, tuple[str, str]]
) -> None:
    """Pending, terminating, unlabelled and other-node pods in the recorded list are all left out."""
    make_dirs(tmp_path, tree)
    discovery = _discovery(tmp_path, FakeCoreV1Api("pods-worker-1.json"), driver=driver)
    assert discovery.relist() is True
    found = {w.name: (w.role, str(w.cgroup_dir.relative_to(tmp_path))) for w in discovery.snapshot()}
    assert found == expected


def test_a_workload_carries_the_pods_identity_and_labels(systemd_root: Path) -> None:
    discovery = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"))
    discovery.relist()
    (lp_batch,) = [w for w in discovery.snapshot() if w.name == "lp-batch-7d9f8-abcde"]
    assert (lp_batch.namespace, lp_batch.uid) == ("drcio-demo", _UID_ABCDE.replace("_", "-"))
    assert dict(lp_batch.labels) == {"app": "lp-batch", "group-id": "lp", "pod-template-hash": "7d9f8"}


def test_relisting_the_same_pods_is_no_change(systemd_root: Path) -> None:
    discovery = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"))
    assert discovery.has_synced is False
    assert discovery.relist() is True
    assert discovery.has_synced is True
    assert discovery.relist() is False


def test_without_a_detectable_driver_the_snapshot_is_empty_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    discovery = _discovery(tmp_path, FakeCoreV1Api("pods-worker-1.json"))
    discovery.relist()
    with caplog.at_level(logging.ERROR, logger="writer.discovery"):
        assert discovery.snapshot() == []
    assert "no kubepods.slice" in caplog.text
    make_dirs(tmp_path, "kubepods")  # the kubelet came up: detection is retried
    assert len(discovery.snapshot()) == 4


def test_bad_node_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node name"):
        KubernetesDiscovery("worker-1,spec.nodeName=worker-2", api=FakeCoreV1Api("pods-worker-1.json"), hierarchy_root=tmp_path)


def test_without_a_watch_factory_it_watches_with_the_kubernetes_client(tmp_path: Path) -> None:
    import kubernetes.watch

    discovery = KubernetesDiscovery(NODE, api=FakeCoreV1Api("pods-worker-1.json"), hierarchy_root=tmp_path)
    assert isinstance(discovery._watch_factory(), kubernetes.watch.Watch)


def test_a_writer_that_discovers_locally_does_not_import_the_kubernetes_client() -> None:
    """The client is imported where Kubernetes discovery is built: it costs every local writer's start ~0.4 s."""
    probe = "import sys, writer.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- Kubernetes mode: watch


def test_watch_churn_keeps_the_cache_current_and_calls_on_change_with_the_new_state(systemd_root: Path) -> None:
    """List, then churn (a pod starts, one is relabelled away, one deleted, a bookmark), then 410 Gone and relist."""
    api = FakeCoreV1Api("pods-worker-1.json", "pods-worker-1-after-expiry.json")
    churn = [_event(e) for e in _recorded("watch-churn.json")]
    watch = FakeWatchFactory(churn, [_event(_recorded("watch-error-410.json"))])
    discovery = _discovery(systemd_root, api, watch)
    seen: list[list[str]] = []

    _run_until_idle(discovery, watch, lambda: seen.append(_names(discovery.snapshot())))

    initial = ["hp-gnn-5c6b7-xyz12", "lp-batch-7d9f8-abcde", "lp-scan-0", "lp-static-worker-1"]
    assert seen == [
        initial,  # the first list
        sorted([*initial, "lp-batch-7d9f8-fghij"]),  # the new LP pod is Running: apply targets to it now
        ["hp-gnn-5c6b7-xyz12", "lp-batch-7d9f8-abcde", "lp-batch-7d9f8-fghij", "lp-static-worker-1"],  # relabelled away
        ["lp-batch-7d9f8-abcde", "lp-batch-7d9f8-fghij", "lp-static-worker-1"],  # deleted
        ["lp-batch-7d9f8-fghij", "lp-static-worker-1"],  # relist after 410: what changed meanwhile
    ]
    assert _names(discovery.snapshot()) == ["lp-batch-7d9f8-fghij", "lp-static-worker-1"]
    assert len(api.calls) == 2
    selectors = {"field_selector": "spec.nodeName=worker-1", "label_selector": "group-id in (hp,lp)"}
    assert [(name, {k: kw[k] for k in selectors}) for name, _, kw in watch.calls] == [
        ("list_pod_for_all_namespaces", selectors)
    ] * 3
    # Resumes from the list's version, then from the bookmark, then from the relist's.
    assert [kw["resource_version"] for _, _, kw in watch.calls] == ["1000", "1200", "1300"]
    assert all(kw["timeout_seconds"] > 0 for _, _, kw in watch.calls)


def test_a_namespaced_discovery_watches_its_namespace(systemd_root: Path) -> None:
    watch = FakeWatchFactory()
    _run_until_idle(
        _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"), watch, namespace="drcio-demo"), watch, lambda: None
    )
    assert [(name, args) for name, args, _ in watch.calls] == [("list_namespaced_pod", ("drcio-demo",))]


@pytest.mark.parametrize(
    ("api_answers", "scripts", "relists", "warning"),
    [
        pytest.param(["pods-worker-1.json"], [[ApiException(status=410, reason="Gone")]], 2, None, id="410-raised-relists-at-once"),
        pytest.param(
            [ApiException(status=503, reason="Service Unavailable"), "pods-worker-1.json"],
            [],
            2,
            "API error 503 Service Unavailable",
            id="list-error-backs-off",
        ),
        pytest.param(
            ["pods-worker-1.json"], [[ApiException(status=500, reason="Internal")]], 2, "API error 500", id="watch-api-error"
        ),
        pytest.param(
            ["pods-worker-1.json"],
            [[ConnectionResetError("peer reset")]],
            2,
            "ConnectionResetError: peer reset",
            id="connection-lost",
        ),
        pytest.param(
            ["pods-worker-1.json"],
            [[{"type": "ERROR", "object": {"code": 500, "reason": "InternalError"}, "raw_object": {"code": 500}}]],
            2,
            "watch error event",
            id="error-event",
        ),
    ],
)
def test_watch_failures_relist_and_only_real_errors_back_off_with_a_warning(
    systemd_root: Path,
    caplog: pytest.LogCaptureFixture,
    api_answers: list[Any],
    scripts: list[list[Any]],
    relists: int,
    warning: str | None,
) -> None:
    api = FakeCoreV1Api(*api_answers)
    watch = FakeWatchFactory(*scripts)
    discovery = _discovery(systemd_root, api, watch)
    with caplog.at_level(logging.INFO, logger="writer.discovery"):
        _run_until_idle(discovery, watch, lambda: None)
    assert len(api.calls) == relists
    assert len(discovery.snapshot()) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warning is None:
        assert warnings == []
        assert "expired (410), relisting" in caplog.text
    else:
        assert len(warnings) == 1 and warning in warnings[0] and "relisting in" in warnings[0]


def test_a_failing_on_change_callback_does_not_stop_the_watch(
    systemd_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watch = FakeWatchFactory([_event(e) for e in _recorded("watch-churn.json")])
    discovery = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"), watch)
    calls = []

    def explode() -> None:
        calls.append(1)
        raise RuntimeError("writer busy")

    with caplog.at_level(logging.ERROR, logger="writer.discovery"):
        _run_until_idle(discovery, watch, explode)
    assert len(calls) == 4  # list, started, relabelled, deleted: every change still delivered
    assert "lp-batch-7d9f8-fghij" in _names(discovery.snapshot())
    assert "on_change callback failed" in caplog.text


def test_stop_ends_the_watch_thread(systemd_root: Path) -> None:
    watch = FakeWatchFactory()
    discovery = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"), watch)
    _run_until_idle(discovery, watch, lambda: None)
    assert watch.stops == 1
    assert not [t for t in threading.enumerate() if t.name == f"drcio-pod-watch-{NODE}"]
    discovery.stop()  # idempotent


def test_start_twice_is_a_programming_error(systemd_root: Path) -> None:
    watch = FakeWatchFactory()
    discovery = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"), watch)
    discovery.start(lambda: None)
    try:
        with pytest.raises(RuntimeError, match="called twice"):
            discovery.start(lambda: None)
    finally:
        discovery.stop()


# --------------------------------------------------------------------------- roles restricted to namespaces (issue 9)


class _EditedPods:
    """The recorded pod list with one pod's labels edited (a pod that labels itself HP to escape throttling)."""

    def __init__(self, name: str, labels: dict[str, str]) -> None:
        data = _recorded("pods-worker-1.json")
        for item in data["items"]:
            if item["metadata"]["name"] == name:
                item["metadata"]["labels"] = labels
        self._data = data

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        return _model(self._data, "V1PodList")

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        return _model(self._data, "V1PodList")


def test_a_pod_outside_hp_namespaces_that_labels_itself_hp_is_not_protected_and_is_throttled(systemd_root: Path) -> None:
    from tests.writer.conftest import FakeTree, make_writer, push_body
    from writer.api import TargetsPush
    from writer.cgroups import Hierarchy, Limits, read_io_max

    claims = {"app": "lp-batch", "group-id": "lp", "protected": "yes"}  # batch pod claiming the HP label
    api = _EditedPods("lp-batch-7d9f8-abcde", claims)
    hp, lp = {"protected": "yes"}, {"group-id": "lp"}
    open_door = _discovery(systemd_root, api, hp_selector=hp, lp_selector=lp)  # type: ignore[arg-type]
    guarded = _discovery(systemd_root, api, hp_selector=hp, lp_selector=lp, hp_namespaces=["prod"])  # type: ignore[arg-type]
    for d in (open_door, guarded):
        d.relist()
    by_name = {w.name: w for w in guarded.snapshot()}
    assert {w.name: w.role for w in open_door.snapshot()}["lp-batch-7d9f8-abcde"] == "hp"  # escapes without the rule
    claimant = by_name["lp-batch-7d9f8-abcde"]
    assert claimant.role == "lp" and claimant.note is not None and "hp_namespaces" in claimant.note

    # Through the reconciler: the claimant's cgroup gets the group's limit, and /status says why.
    tree = FakeTree(Hierarchy(2, systemd_root))
    (systemd_root / "cgroup.controllers").write_text("io\n")
    tree.group(str(claimant.cgroup_dir.relative_to(systemd_root)))
    w = make_writer(tree, discovery=guarded)
    w.reconciler.push(TargetsPush.model_validate(push_body(1)))
    assert read_io_max(tree.hierarchy, claimant.cgroup_dir) == {"254:0": Limits(rbps=10 * 1024 * 1024)}
    [entry] = [x for x in w.reconciler.status()["lp_workloads"] if x["name"] == claimant.name]  # type: ignore[attr-defined]
    assert "not protected" in entry["note"]


def test_lp_namespaces_limit_who_is_low_priority(systemd_root: Path) -> None:
    d = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"), lp_namespaces=["drcio-demo"])
    d.relist()
    roles = {w.name: (w.role, w.note) for w in d.snapshot()}
    role, note = roles["lp-static-worker-1"]  # kube-system
    assert role == "other" and note is not None and "lp_namespaces" in note
    assert roles["lp-scan-0"] == ("lp", None)


def test_a_pod_outside_lp_namespaces_is_not_throttled_by_a_group_that_selects_it(systemd_root: Path) -> None:
    from tests.writer.conftest import FakeTree, make_writer, push_body
    from writer.api import TargetsPush
    from writer.cgroups import Hierarchy, Limits, read_io_max

    d = _discovery(systemd_root, FakeCoreV1Api("pods-worker-1.json"), lp_namespaces=["drcio-demo"])
    d.relist()
    by_name = {w.name: w for w in d.snapshot()}
    refused, lp = by_name["lp-static-worker-1"], by_name["lp-scan-0"]  # both labelled group-id=lp
    tree = FakeTree(Hierarchy(2, systemd_root))
    (systemd_root / "cgroup.controllers").write_text("io\n")
    for w in (refused, lp):
        tree.group(str(w.cgroup_dir.relative_to(systemd_root)))
    writer = make_writer(tree, discovery=d)
    answer = writer.reconciler.push(TargetsPush.model_validate(push_body(1)))
    assert read_io_max(tree.hierarchy, lp.cgroup_dir) == {"254:0": Limits(rbps=10 * 1024 * 1024)}
    assert read_io_max(tree.hierarchy, refused.cgroup_dir) == {}
    [result] = [r for r in answer.results if r.cgroup == str(refused.cgroup_dir)]
    assert result.outcome == "error" and "not low-priority" in result.detail and "lp_namespaces" in result.detail
