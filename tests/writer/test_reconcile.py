"""The reconciler: level-triggered writes, drift healing, churn, vanished cgroups, the background loop."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import pytest

from tests.writer.conftest import FakeTree, make_writer, push_body
from writer.api import TargetsPush
from writer.cgroups import Limits, read_io_max, read_weight
from writer.discovery import Workload
from writer.lp_memory import LpMemory

MiB = 1024 * 1024


def _push(w: Any, generation: int = 1, **group: Any) -> list[tuple[str, str]]:
    answer = w.reconciler.push(TargetsPush.model_validate(push_body(generation, **group)))
    return [(r.group, r.outcome) for r in answer.results]


class ScriptedDiscovery:
    """Discovery whose workloads the test sets; records the on_change callback it is given."""

    def __init__(self, workloads: list[Workload]) -> None:
        self.workloads = workloads
        self.on_change: Callable[[], None] | None = None
        self.fail = False
        self.stopped = False

    def snapshot(self) -> list[Workload]:
        if self.fail:
            raise RuntimeError("API server unreachable")
        return list(self.workloads)

    def start(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change

    def stop(self) -> None:
        self.stopped = True


def _lp(name: str, d: Path, **labels: str) -> Workload:
    return Workload(name, "batch", None, MappingProxyType({"group-id": "lp", **labels}), d, "lp")


def test_a_round_without_changes_writes_nothing(fake_tree: FakeTree) -> None:
    fake_tree.group("drcio-demo/lp")
    w = make_writer(fake_tree)
    _push(w)
    before = fake_tree.snapshot()
    assert [r.outcome for r in w.reconciler.reconcile()] == ["unchanged"]
    assert fake_tree.snapshot() == before


def test_drift_is_healed_by_the_next_round(fake_v2: FakeTree) -> None:
    d = fake_v2.group("drcio-demo/lp")
    w = make_writer(fake_v2)
    _push(w)
    (d / "io.max").write_text("254:0 rbps=1 wbps=max riops=max wiops=max\n")  # a runtime rewrote it
    assert [r.outcome for r in w.reconciler.reconcile()] == ["applied"]
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}


def test_a_device_dropped_from_the_target_is_reset_to_unlimited(fake_tree: FakeTree) -> None:
    d = fake_tree.group("drcio-demo/lp")
    w = make_writer(fake_tree)
    _push(w, 1, devices=["254:0", "8:0"])
    assert set(read_io_max(fake_tree.hierarchy, d)) == {"254:0", "8:0"}
    assert _push(w, 2, devices=["8:0"]) == [("lp", "applied")]
    assert read_io_max(fake_tree.hierarchy, d) == {"8:0": Limits(rbps=10 * MiB)}


def test_a_new_lp_workload_gets_the_current_target_when_discovery_sees_it(fake_tree: FakeTree) -> None:
    w = make_writer(fake_tree)
    _push(w)
    assert w.reconciler.reconcile() == []  # the LP cgroup does not exist yet
    d = fake_tree.group("drcio-demo/lp")
    assert [r.outcome for r in w.reconciler.reconcile()] == ["applied"]
    assert read_io_max(fake_tree.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}


def test_an_lp_workload_no_group_selects_is_lifted(fake_v2: FakeTree) -> None:
    d = fake_v2.group("drcio-demo/lp", **{"io.max": "254:0 rbps=5 wbps=max riops=max wiops=max\n"})
    w = make_writer(fake_v2)
    assert _push(w, selector={"group-id": "someone-else"}) == [("unassigned", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {}


def test_a_workload_relabelled_from_lp_to_hp_has_its_limits_and_weight_lifted_once(fake_v2: FakeTree) -> None:
    d = fake_v2.group("pods/batch")
    discovery = ScriptedDiscovery([_lp("batch", d)])
    w = make_writer(fake_v2, discovery=discovery)
    _push(w, io_weight=10)
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)} and read_weight(fake_v2.hierarchy, d) == 10
    # kubectl label pod batch group-id=hp --overwrite: the same pod, the same cgroup, now protected.
    discovery.workloads = [Workload("batch", "batch", None, MappingProxyType({"group-id": "hp"}), d, "hp")]
    assert [(r.group, r.outcome) for r in w.reconciler.reconcile()] == [("released", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {} and read_weight(fake_v2.hierarchy, d) == 100
    events = [str(e["event"]) for e in w.reconciler.status()["events"]]  # type: ignore[attr-defined]
    assert "batch/batch is no longer low-priority (now hp): lifting its limits and weight" in events
    before = fake_v2.snapshot()
    assert w.reconciler.reconcile() == [] and fake_v2.snapshot() == before  # once: an HP workload is not written again


def _errors(w: Any) -> list[dict[str, object]]:
    return cast(list[dict[str, object]], w.reconciler.status()["last_errors"])


def _hp(name: str, d: Path) -> Workload:
    return Workload(name, "batch", None, MappingProxyType({"group-id": "hp"}), d, "hp")


def test_a_pod_relabelled_while_its_writer_was_down_is_lifted_by_the_next_writer(fake_v2: FakeTree,
                                                                                  tmp_path: Path) -> None:
    state = tmp_path / "lp-cgroups.json"
    d, other = fake_v2.group("pods/batch"), fake_v2.group("pods/other")
    first = make_writer(fake_v2, discovery=ScriptedDiscovery([_lp("batch", d), _lp("other", other)]),
                        lp_memory=LpMemory(state))
    _push(first, io_weight=10)
    assert json.loads(state.read_text()) == {"lp_cgroups": sorted([str(d), str(other)])}
    # The writer stops; meanwhile kubectl label pod batch group-id=hp --overwrite. A writer without the file
    # starts knowing nothing, holds until the controller's first push, and leaves the HP pod throttled.
    relabelled = ScriptedDiscovery([_hp("batch", d), _lp("other", other)])
    forgetful = make_writer(fake_v2, discovery=relabelled)
    before = fake_v2.snapshot()
    assert [(r.cgroup, r.outcome) for r in forgetful.reconciler.reconcile()] == [(str(other), "unchanged")]
    assert fake_v2.snapshot() == before and read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}
    # One with the file lifts it on its first round, before any push; the LP pod beside it keeps its limits.
    second = make_writer(fake_v2, discovery=relabelled, lp_memory=LpMemory(state))
    events = [str(e["event"]) for e in second.reconciler.status()["events"]]  # type: ignore[attr-defined]
    assert f"2 LP cgroups remembered from {state}" in events
    assert [(r.cgroup, r.group, r.outcome) for r in second.reconciler.reconcile()] == [
        (str(other), "unassigned", "unchanged"), (str(d), "released", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {} and read_weight(fake_v2.hierarchy, d) == 100
    assert read_io_max(fake_v2.hierarchy, other) == {"254:0": Limits(rbps=10 * MiB)}
    assert json.loads(state.read_text()) == {"lp_cgroups": [str(other)]}  # the HP pod is not lifted again
    assert [r.cgroup for r in second.reconciler.reconcile()] == [str(other)]


def test_the_memory_outlasts_a_first_round_before_discovery_has_synced_and_forgets_cgroups_that_are_gone(
        fake_v2: FakeTree, tmp_path: Path) -> None:
    state = tmp_path / "lp-cgroups.json"
    d, gone = fake_v2.group("pods/batch"), fake_v2.group("pods/gone")
    first = make_writer(fake_v2, discovery=ScriptedDiscovery([_lp("batch", d), _lp("gone", gone)]),
                        lp_memory=LpMemory(state))
    _push(first)
    # The next writer's Kubernetes discovery lists nothing until its first list returns (the writer's first
    # round comes before it): nothing is written, and nothing remembered is forgotten.
    discovery = ScriptedDiscovery([])
    second = make_writer(fake_v2, discovery=discovery, lp_memory=LpMemory(state))
    assert second.reconciler.reconcile() == []
    assert json.loads(state.read_text()) == {"lp_cgroups": sorted([str(d), str(gone)])}
    # The list arrives: batch was relabelled HP meanwhile, and the pod "gone" was deleted with its cgroup.
    shutil.rmtree(gone)
    discovery.workloads = [_hp("batch", d)]
    assert [(r.group, r.outcome) for r in second.reconciler.reconcile()] == [("released", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {}
    assert json.loads(state.read_text()) == {"lp_cgroups": []}


def test_a_pod_that_left_discovery_and_comes_back_hp_is_lifted(fake_v2: FakeTree) -> None:
    d = fake_v2.group("pods/batch")
    discovery = ScriptedDiscovery([_lp("batch", d)])
    w = make_writer(fake_v2, discovery=discovery)
    _push(w)
    discovery.workloads = []  # its LP label removed: it keeps its limits, as a terminating pod does
    w.reconciler.reconcile()
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}
    discovery.workloads = [_hp("batch", d)]  # then labelled HP
    assert [(r.group, r.outcome) for r in w.reconciler.reconcile()] == [("released", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {}


@pytest.mark.parametrize("content", ["{not json", '{"lp_cgroups": "pods/batch"}', '{"lp": []}'])
def test_a_malformed_state_file_is_reported_writes_nothing_and_is_replaced(fake_v2: FakeTree, tmp_path: Path,
                                                                            content: str) -> None:
    state = tmp_path / "lp-cgroups.json"
    state.write_text(content)
    d = fake_v2.group("pods/batch", **{"io.max": "254:0 rbps=5 wbps=max riops=max wiops=max\n"})
    w = make_writer(fake_v2, discovery=ScriptedDiscovery([_hp("batch", d)]), lp_memory=LpMemory(state))
    (error,) = _errors(w)
    assert error["where"] == "state_file" and str(error["detail"]).startswith(f"{state}: not a list of LP cgroups (")
    assert str(error["detail"]).endswith("starting without the LP cgroups of the last run")
    before = fake_v2.snapshot()
    assert w.reconciler.reconcile() == [] and fake_v2.snapshot() == before  # an HP pod is not written
    assert json.loads(state.read_text()) == {"lp_cgroups": []}  # replaced by what this round found


def test_a_state_file_that_cannot_be_saved_is_reported_once_and_the_writer_goes_on(fake_v2: FakeTree,
                                                                                    tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    state = blocker / "lp-cgroups.json"  # its directory is a file: every save fails
    d = fake_v2.group("pods/batch")
    discovery = ScriptedDiscovery([_lp("batch", d)])
    w = make_writer(fake_v2, discovery=discovery, lp_memory=LpMemory(state))
    assert _push(w) == [("lp", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}
    w.reconciler.reconcile()
    assert [(e["where"], e["detail"]) for e in _errors(w)] == [
        ("state_file", f"{state}: cannot read: Not a directory; starting without the LP cgroups of the last run"),
        ("state_file", f"{state}: cannot save the LP cgroups: Not a directory")]
    discovery.workloads = [_hp("batch", d)]  # memory still works within this run
    assert [(r.group, r.outcome) for r in w.reconciler.reconcile()] == [("released", "applied")]


def test_a_lift_that_fails_is_tried_again_next_round(fake_v2: FakeTree) -> None:
    d = fake_v2.group("pods/batch")
    discovery = ScriptedDiscovery([_lp("batch", d)])
    w = make_writer(fake_v2, discovery=discovery)
    _push(w)
    discovery.workloads = [_hp("batch", d)]
    limited = (d / "io.max").read_text()
    (d / "io.max").unlink()
    (d / "io.max").mkdir()  # the file cannot be read or written this round (EISDIR)
    assert [(r.group, r.outcome) for r in w.reconciler.reconcile()] == [("released", "error")]
    (d / "io.max").rmdir()
    (d / "io.max").write_text(limited)
    assert [(r.group, r.outcome) for r in w.reconciler.reconcile()] == [("released", "applied")]
    assert read_io_max(fake_v2.hierarchy, d) == {}
    assert w.reconciler.reconcile() == []


def test_a_workload_that_leaves_discovery_keeps_its_limits_as_a_terminating_pod_must(fake_v2: FakeTree) -> None:
    # A pod whose LP label is removed drops out of the watch exactly as a pod that terminates does; the latter
    # still runs its I/O through its grace period, so neither is lifted.
    d = fake_v2.group("pods/batch")
    discovery = ScriptedDiscovery([_lp("batch", d)])
    w = make_writer(fake_v2, discovery=discovery)
    _push(w)
    discovery.workloads = []
    assert w.reconciler.reconcile() == []
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}


def test_a_vanished_cgroup_is_an_event_not_a_crash(fake_v2: FakeTree) -> None:
    alive = fake_v2.group("pods/alive")
    discovery = ScriptedDiscovery([_lp("gone", fake_v2.root / "pods/gone"), _lp("alive", alive)])
    w = make_writer(fake_v2, discovery=discovery)
    answer = w.reconciler.push(TargetsPush.model_validate(push_body()))
    by_cgroup = {Path(r.cgroup).name: r for r in answer.results}
    assert by_cgroup["gone"].outcome == "error" and by_cgroup["gone"].detail.startswith("ENOENT")
    assert by_cgroup["alive"].outcome == "applied"
    assert w.metric("drcio_cgroups_vanished_total") == 1
    assert w.metric("drc_io_controller_errors_total") == 0
    assert any("vanished" in str(e["event"]) for e in w.reconciler.status()["events"])  # type: ignore[attr-defined]


def test_a_kernel_refusal_is_reported_with_its_errno_and_counted(fake_v2: FakeTree) -> None:
    d = fake_v2.group("drcio-demo/lp")
    (d / "io.max").unlink()
    w = make_writer(fake_v2)
    [res] = w.reconciler.push(TargetsPush.model_validate(push_body())).results
    assert res.outcome == "error" and "ENOENT" in res.detail
    assert w.metric("drc_io_controller_errors_total") == 1
    assert w.reconciler.status()["last_errors"][0]["where"] == str(d)  # type: ignore[index]


def test_a_failing_discovery_skips_the_round_and_is_recorded(fake_v2: FakeTree) -> None:
    discovery = ScriptedDiscovery([])
    w = make_writer(fake_v2, discovery=discovery)
    discovery.fail = True
    assert w.reconciler.reconcile() == []
    status = w.reconciler.status()  # still answers while discovery is down
    assert "API server unreachable" in str(status["last_errors"])
    assert w.metric("drc_io_low_priority_pods") == 0


@pytest.mark.parametrize("second_first", [False, True], ids=["push-order", "reversed"])
def test_a_workload_selected_by_two_groups_gets_the_most_restrictive_value_of_each_key(
    fake_v2: FakeTree, second_first: bool
) -> None:
    # Before issue 9 the first group in the push won; the push order must not decide.
    d = fake_v2.group("drcio-demo/lp")
    w = make_writer(fake_v2)
    body = push_body(io_max={"rbps": 10 * MiB, "wbps": 1 * MiB}, io_weight=300)
    second = {**body["groups"][0], "name": "lp2", "io_max": {"rbps": 2 * MiB}, "io_weight": 50}
    body["groups"].append(second)
    if second_first:
        body["groups"].reverse()
    [res] = w.reconciler.push(TargetsPush.model_validate(body)).results
    assert res.outcome == "applied"
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=2 * MiB, wbps=1 * MiB)}
    assert read_weight(fake_v2.hierarchy, d) == 50
    assert "several groups" in str(w.reconciler.status()["last_errors"])


def test_start_reads_what_is_in_force_and_the_loop_runs_when_discovery_reports_a_change(fake_v2: FakeTree) -> None:
    discovery = ScriptedDiscovery([])
    w = make_writer(fake_v2, discovery=discovery)
    _push(w)
    w.reconciler.start(interval_seconds=3600)  # only a change can wake it within the test
    try:
        assert discovery.on_change is not None
        d = fake_v2.group("pods/new")
        discovery.workloads = [_lp("new", d)]
        discovery.on_change()
        deadline = time.monotonic() + 10  # bounded wait for the other thread, not a timing assertion
        while read_io_max(fake_v2.hierarchy, d) == {} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=10 * MiB)}
    finally:
        w.reconciler.stop()
    assert discovery.stopped
    assert not any(t.name == "drcio-reconcile" for t in threading.enumerate())
