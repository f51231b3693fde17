"""Shared fixtures of the writer tests: fake cgroup trees in tmp dirs.

A fake tree stands in only for layouts this machine's kernel lacks (cgroup v2
``io.*``) and for exact-format checks; the real kernel is exercised in
``test_kernel.py``. Files start the way the kernel shows a fresh cgroup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from writer.cgroups import Hierarchy

V2_FILES = {
    "io.max": "",
    "io.weight": "default 100\n",
    "io.stat": "",
    "cgroup.procs": "",
}
V1_FILES = {
    "blkio.throttle.read_bps_device": "",
    "blkio.throttle.write_bps_device": "",
    "blkio.throttle.read_iops_device": "",
    "blkio.throttle.write_iops_device": "",
    "blkio.throttle.io_service_bytes": "Total 0\n",
    "blkio.throttle.io_service_bytes_recursive": "Total 0\n",
    "blkio.bfq.weight": "100\n",
    "cgroup.procs": "",
}


@dataclass
class FakeTree:
    """A fake cgroup hierarchy: ``group(rel)`` makes a cgroup dir with the kernel's files."""

    hierarchy: Hierarchy

    @property
    def root(self) -> Path:
        return self.hierarchy.root

    def group(self, relative: str, **overrides: str) -> Path:
        d = self.root / relative
        d.mkdir(parents=True, exist_ok=True)
        files = V2_FILES if self.hierarchy.version == 2 else V1_FILES
        for name, text in {**files, **overrides}.items():
            (d / name).write_text(text)
        return d

    def read(self, relative: str, name: str) -> str:
        return (self.root / relative / name).read_text()

    def snapshot(self) -> dict[str, str]:
        """Every file's content, to assert that nothing was written."""
        return {str(p.relative_to(self.root)): p.read_text() for p in sorted(self.root.rglob("*")) if p.is_file()}


def _v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "io.cost.qos").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


def _v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "blkio"
    root.mkdir()
    for name, text in V1_FILES.items():
        if name != "blkio.bfq.weight":
            (root / name).write_text(text)
    return root


def make_tree(tmp_path: Path, version: int) -> FakeTree:
    """A fresh fake hierarchy of the given cgroup version under ``tmp_path``."""
    make: Callable[[Path], Path] = _v2_root if version == 2 else _v1_root
    return FakeTree(Hierarchy(2 if version == 2 else 1, make(tmp_path)))


@pytest.fixture
def fake_v2(tmp_path: Path) -> FakeTree:
    return FakeTree(Hierarchy(2, _v2_root(tmp_path)))


@pytest.fixture
def fake_v1(tmp_path: Path) -> FakeTree:
    return FakeTree(Hierarchy(1, _v1_root(tmp_path)))


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def fake_tree(request: pytest.FixtureRequest, tmp_path: Path) -> FakeTree:
    return make_tree(tmp_path, request.param)
