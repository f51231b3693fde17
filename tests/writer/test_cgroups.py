"""The cgroup file layer: exact kernel formats, read-back, unchanged-skip, lifting, errors.

Runs on fake trees (tmp dirs); the real kernel is in ``test_kernel.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.writer.conftest import FakeTree, make_tree
from writer.cgroups import (
    UNLIMITED,
    CgroupVanished,
    Hierarchy,
    KernelError,
    Limits,
    SetupError,
    WriterError,
    apply_io_max,
    apply_weight,
    detect_hierarchy,
    read_io_bytes,
    read_io_max,
    read_weight,
    to_v1_weight,
    weight_effective,
)
from writer.groups import create_group, remove_empty_groups, remove_group

MB10 = 10 * 1024 * 1024


# ---------------------------------------------------------------- detection

MOUNTINFO_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw
"""


def test_detect_prefers_v2_when_its_controllers_list_io(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu io memory\n")
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO_V1.format(unified=unified))
    assert detect_hierarchy(mountinfo=mi) == Hierarchy(2, unified)


def test_detect_falls_back_to_v1_blkio_when_v2_lacks_io(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO_V1.format(unified=unified))
    assert detect_hierarchy(mountinfo=mi) == Hierarchy(1, Path("/sys/fs/cgroup/blkio"))


def test_detect_says_what_is_missing_when_there_is_no_io_controller(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    with pytest.raises(SetupError, match="no cgroup I/O controller.*blkio"):
        detect_hierarchy(mountinfo=mi)


def test_detect_classifies_an_explicit_root(fake_v2: FakeTree, fake_v1: FakeTree) -> None:
    assert detect_hierarchy(fake_v2.root) == fake_v2.hierarchy
    assert detect_hierarchy(str(fake_v1.root)) == fake_v1.hierarchy


def _unified_offers_io() -> bool:
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    return controllers.exists() and "io" in controllers.read_text().split()


@pytest.mark.skipif(not Path("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device").exists(), reason="no v1 blkio mount here")
@pytest.mark.skipif(_unified_offers_io(), reason="the hybrid v2 mount offers io here, so detection may prefer it")
def test_detect_picks_v1_blkio_on_this_machine() -> None:
    assert detect_hierarchy() == Hierarchy(1, Path("/sys/fs/cgroup/blkio"))


# ---------------------------------------------------------------- group helpers


def test_create_group_enables_io_in_every_v2_parent(fake_v2: FakeTree) -> None:
    fake_v2.group("demo", **{"cgroup.subtree_control": ""})  # the kernel would make this file on mkdir
    path = create_group(fake_v2.hierarchy, "demo/lp")
    assert path == fake_v2.root / "demo" / "lp" and path.is_dir()
    assert fake_v2.read("", "cgroup.subtree_control") == "+io\n"
    assert fake_v2.read("demo", "cgroup.subtree_control") == "+io\n"


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../../b", ""], ids=["dotdot", "absolute", "nested-dotdot", "empty"])
def test_group_helpers_refuse_paths_outside_the_root(fake_v1: FakeTree, bad: str) -> None:
    with pytest.raises(WriterError):
        create_group(fake_v1.hierarchy, bad)
    assert not (fake_v1.root.parent / "escape").exists()


def test_remove_group_removes_deepest_first_and_ignores_missing(fake_v1: FakeTree) -> None:
    fake_v1.group("demo/lp/c1")
    fake_v1.group("demo/hp")
    remove_group(fake_v1.hierarchy, "demo")
    assert not (fake_v1.root / "demo").exists()
    remove_group(fake_v1.hierarchy, "demo")  # gone already: no error


# ---------------------------------------------------------------- io.max formats

READ_BACK_CASES = [
    pytest.param(2, "io.max", "254:0 rbps=10485760 wbps=max riops=max wiops=max\n", {"254:0": Limits(rbps=MB10)}, id="v2-rbps"),
    pytest.param(2, "io.max", "8:0 rbps=max wbps=1048576 riops=100 wiops=max\n254:0 rbps=1 wbps=2 riops=3 wiops=4\n",
                 {"8:0": Limits(wbps=1048576, riops=100), "254:0": Limits(1, 2, 3, 4)}, id="v2-two-devices"),
    pytest.param(2, "io.max", "254:0 rbps=5 wbps=max riops=max wiops=max\n254:0 rbps=max wbps=max riops=max wiops=max\n",
                 {}, id="v2-last-rule-lifts"),
    pytest.param(1, "blkio.throttle.read_bps_device", "254:0 10485760\n", {"254:0": Limits(rbps=MB10)}, id="v1-rbps"),
    pytest.param(1, "blkio.throttle.write_iops_device", "254:0 50\n8:16 7\n", {"254:0": Limits(wiops=50), "8:16": Limits(wiops=7)}, id="v1-wiops"),
    pytest.param(1, "blkio.throttle.read_bps_device", "254:0 10485760\n254:0 0\n", {}, id="v1-zero-lifts"),
]


@pytest.mark.parametrize(("version", "name", "text", "expected"), READ_BACK_CASES)
def test_read_io_max_parses_the_kernel_format(tmp_path: Path, version: int, name: str, text: str, expected: dict[str, Limits]) -> None:
    tree = make_tree(tmp_path, version)
    d = tree.group("lp", **{name: text})
    assert read_io_max(tree.hierarchy, d) == expected


def test_v2_apply_writes_all_four_keys(fake_v2: FakeTree) -> None:
    d = fake_v2.group("lp")
    assert apply_io_max(fake_v2.hierarchy, d, {"254:0": Limits(rbps=MB10)}) == "applied"
    assert fake_v2.read("lp", "io.max") == "254:0 rbps=10485760 wbps=max riops=max wiops=max\n"


def test_v1_apply_writes_one_file_per_key_and_zero_lifts(fake_v1: FakeTree) -> None:
    d = fake_v1.group("lp")
    apply_io_max(fake_v1.hierarchy, d, {"254:0": Limits(rbps=MB10, wiops=20)})
    assert fake_v1.read("lp", "blkio.throttle.read_bps_device") == "254:0 10485760\n"
    assert fake_v1.read("lp", "blkio.throttle.write_iops_device") == "254:0 20\n"
    assert fake_v1.read("lp", "blkio.throttle.write_bps_device") == ""
    apply_io_max(fake_v1.hierarchy, d, {"254:0": UNLIMITED})
    assert fake_v1.read("lp", "blkio.throttle.read_bps_device") == "254:0 10485760\n254:0 0\n"
    assert read_io_max(fake_v1.hierarchy, d) == {}


def test_apply_skips_an_unchanged_limit(fake_tree: FakeTree) -> None:
    d = fake_tree.group("lp")
    apply_io_max(fake_tree.hierarchy, d, {"254:0": Limits(rbps=MB10)})
    before = fake_tree.snapshot()
    assert apply_io_max(fake_tree.hierarchy, d, {"254:0": Limits(rbps=MB10)}) == "unchanged"
    assert fake_tree.snapshot() == before


def test_apply_resets_devices_dropped_from_the_target_to_unlimited(fake_tree: FakeTree) -> None:
    d = fake_tree.group("lp")
    apply_io_max(fake_tree.hierarchy, d, {"254:0": Limits(rbps=MB10), "8:0": Limits(wbps=MB10)})
    assert apply_io_max(fake_tree.hierarchy, d, {"8:0": Limits(wbps=MB10)}) == "applied"
    assert read_io_max(fake_tree.hierarchy, d) == {"8:0": Limits(wbps=MB10)}


def test_apply_heals_drift(fake_v2: FakeTree) -> None:
    d = fake_v2.group("lp")
    apply_io_max(fake_v2.hierarchy, d, {"254:0": Limits(rbps=MB10)})
    (d / "io.max").write_text("254:0 rbps=1 wbps=max riops=max wiops=max\n")  # a runtime rewrote it
    assert apply_io_max(fake_v2.hierarchy, d, {"254:0": Limits(rbps=MB10)}) == "applied"
    assert read_io_max(fake_v2.hierarchy, d) == {"254:0": Limits(rbps=MB10)}


def test_a_vanished_cgroup_is_reported_as_such(fake_tree: FakeTree) -> None:
    d = fake_tree.root / "gone"
    with pytest.raises(CgroupVanished):
        apply_io_max(fake_tree.hierarchy, d, {"254:0": Limits(rbps=1)})
    with pytest.raises(CgroupVanished):
        read_io_bytes(fake_tree.hierarchy, d)


def test_a_kernel_refusal_carries_the_errno_name(fake_v2: FakeTree) -> None:
    d = fake_v2.group("lp")
    (d / "io.max").unlink()
    with pytest.raises(KernelError) as info:
        apply_io_max(fake_v2.hierarchy, d, {"254:0": Limits(rbps=1)})
    assert info.value.errno_name == "ENOENT"


def test_paths_outside_the_root_are_refused(fake_v2: FakeTree, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "io.max").write_text("")
    with pytest.raises(WriterError, match="outside the cgroup root"):
        apply_io_max(fake_v2.hierarchy, fake_v2.root / ".." / "outside", {"254:0": Limits(rbps=1)})
    assert (outside / "io.max").read_text() == ""


# ---------------------------------------------------------------- weight


@pytest.mark.parametrize(
    ("weight", "lo", "default", "hi", "expected"),
    [
        pytest.param(1, 10, 500, 1000, 10, id="blkio-min"),
        pytest.param(100, 10, 500, 1000, 500, id="blkio-default"),
        pytest.param(10_000, 10, 500, 1000, 1000, id="blkio-max"),
        pytest.param(50, 1, 100, 1000, 50, id="bfq-below-default"),
        pytest.param(100, 1, 100, 1000, 100, id="bfq-default"),
        pytest.param(5050, 1, 100, 1000, 550, id="bfq-midway-up"),
    ],
)
def test_v2_weights_map_onto_v1_ranges_around_the_defaults(weight: int, lo: int, default: int, hi: int, expected: int) -> None:
    assert to_v1_weight(weight, lo, default, hi) == expected


def test_v2_weight_writes_default_line_and_skips_unchanged(fake_v2: FakeTree) -> None:
    d = fake_v2.group("lp")
    assert apply_weight(fake_v2.hierarchy, d, 50) == "applied"
    assert fake_v2.read("lp", "io.weight") == "default 100\ndefault 50\n"
    assert read_weight(fake_v2.hierarchy, d) == 50
    assert apply_weight(fake_v2.hierarchy, d, 50) == "unchanged"


def test_v1_weight_goes_to_bfq_weight_in_its_range(fake_v1: FakeTree) -> None:
    d = fake_v1.group("lp")
    assert apply_weight(fake_v1.hierarchy, d, 10_000) == "applied"
    assert read_weight(fake_v1.hierarchy, d) == 1000
    assert fake_v1.read("lp", "blkio.bfq.weight") == "100\n1000\n"


def test_weight_acts_only_with_bfq_or_io_cost(fake_v2: FakeTree) -> None:
    (fake_v2.root / "io.cost.qos").write_text("8:0 enable=1 ctrl=auto rpct=0.00\n254:0 enable=0 ctrl=auto\n")
    schedulers = {"8:0": "mq-deadline", "254:0": "mq-deadline", "259:0": "bfq"}
    got = weight_effective(fake_v2.hierarchy, ["8:0", "254:0", "259:0"], scheduler_of=schedulers.get)
    assert got == {"8:0": True, "254:0": False, "259:0": True}


@pytest.mark.parametrize(
    ("version", "scheduler", "effective"),
    [pytest.param(1, "bfq", True, id="v1-bfq"), pytest.param(1, "cfq", True, id="v1-legacy-cfq"),
     pytest.param(1, "mq-deadline", False, id="v1-mq-deadline"), pytest.param(2, "cfq", False, id="v2-cfq"),
     pytest.param(1, None, False, id="v1-unknown-device")],
)
def test_weight_acts_only_under_a_weight_honouring_scheduler(tmp_path: Path, version: int, scheduler: str | None, effective: bool) -> None:
    tree = make_tree(tmp_path, version)
    assert weight_effective(tree.hierarchy, ["254:0"], scheduler_of=lambda dev: scheduler) == {"254:0": effective}


# ---------------------------------------------------------------- io bytes


def test_v2_io_stat_bytes(fake_v2: FakeTree) -> None:
    d = fake_v2.group("lp", **{"io.stat": "254:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n"})
    assert read_io_bytes(fake_v2.hierarchy, d) == {"254:0": (1024, 2048)}


def test_v1_service_bytes_prefers_the_recursive_file(fake_v1: FakeTree) -> None:
    text = "254:0 Read 4096\n254:0 Write 512\n254:0 Sync 0\n254:0 Async 4608\n254:0 Discard 0\n254:0 Total 4608\nTotal 4608\n"
    d = fake_v1.group("lp", **{"blkio.throttle.io_service_bytes_recursive": text})
    assert read_io_bytes(fake_v1.hierarchy, d) == {"254:0": (4096, 512)}


def test_remove_empty_groups_clears_a_killed_runs_leftovers_but_not_a_running_one(fake_tree: FakeTree) -> None:
    fake_tree.group("drcio-exp-dead/baseline/hp")
    fake_tree.group("drcio-exp-dead/baseline/lp")
    fake_tree.group("drcio-exp-live/drcio/lp", **{"cgroup.procs": "4242\n"})
    fake_tree.group("other-app/lp")
    assert remove_empty_groups(fake_tree.hierarchy, "drcio-exp-") == ["drcio-exp-dead"]
    assert not (fake_tree.root / "drcio-exp-dead").exists()
    assert (fake_tree.root / "drcio-exp-live/drcio/lp").is_dir()
    assert (fake_tree.root / "other-app/lp").is_dir()


@pytest.mark.parametrize("prefix", ["", "../x", ".hidden", "a/b"], ids=["empty", "dotdot", "dot", "slash"])
def test_remove_empty_groups_refuses_a_path_like_prefix(fake_tree: FakeTree, prefix: str) -> None:
    with pytest.raises(ValueError):
        remove_empty_groups(fake_tree.hierarchy, prefix)
