"""Making, filling and removing cgroups: for experiments and tests, never for the node agent.

On a node kubelet and the container runtime create the pod and container
cgroups; the writer only writes limits into them (:mod:`writer.cgroups`). The
local experiment (:mod:`experiments.backends.local`) and the kernel tests
build kubelet-shaped groups themselves with these helpers. They live in
``writer/`` because only ``writer/`` touches cgroup files, and apart from the
agent's modules because the agent must not be able to create, move or remove
anything (``tests/test_architecture.py`` checks that it never imports this).
"""

from __future__ import annotations

import errno as _errno
import os
from pathlib import Path

from writer.cgroups import Hierarchy, KernelError, _group_path, _mkdir, _read_words, _write

__all__ = ["create_group", "move_pid", "remove_group", "remove_empty_groups"]


def create_group(h: Hierarchy, relative: str) -> Path:
    """``mkdir -p`` a group under the root; on v2 also enable ``+io`` in every parent."""
    path = _group_path(h, relative)
    if h.version == 2:
        # The io files only appear in a child when every ancestor delegates io.
        parent = h.root.resolve()
        for part in path.relative_to(parent).parts:
            control = parent / "cgroup.subtree_control"
            if "io" not in _read_words(control):
                _write(control, "+io")
            parent = parent / part
            _mkdir(parent)
    else:
        _mkdir(path, parents=True)
    return path


def move_pid(h: Hierarchy, relative: str, pid: int) -> None:
    """Move process ``pid`` into the group (write ``cgroup.procs``)."""
    _write(_group_path(h, relative) / "cgroup.procs", str(int(pid)))


def remove_group(h: Hierarchy, relative: str) -> None:
    """Remove the group and its descendants: move leftover pids to the root, rmdir deepest first."""
    path = _group_path(h, relative)
    if not path.is_dir():
        return
    dirs = [Path(d) for d, _, _ in os.walk(path)]
    root_procs = h.root.resolve() / "cgroup.procs"
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        for pid in _read_words(d / "cgroup.procs"):
            try:
                _write(root_procs, pid)
            except KernelError as err:
                if err.errno_name != "ESRCH":  # the process exited meanwhile
                    raise
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError as err:
            # The kernel removes a cgroup with its virtual files; only a plain
            # directory (a fake tree) says ENOTEMPTY once its children are gone.
            if err.errno != _errno.ENOTEMPTY or any(f.is_dir() for f in d.iterdir()):
                raise KernelError(d, err) from err
            for f in d.iterdir():
                f.unlink()
            d.rmdir()


def remove_empty_groups(h: Hierarchy, prefix: str) -> list[str]:
    """Remove top-level groups named ``prefix*`` whose whole subtree holds no process.

    For leftovers of runs that were killed before they could clean up. A
    group with any process in it (a run still going) is left alone, so this
    is safe beside a concurrent run. Returns the names removed.
    """
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain name start, got {prefix!r}")
    removed = []
    for entry in sorted(h.root.iterdir()):
        if not (entry.is_dir() and entry.name.startswith(prefix)):
            continue
        busy = any(_read_words(Path(d) / "cgroup.procs") for d, _, _ in os.walk(entry))
        if not busy:
            remove_group(h, entry.name)
            removed.append(entry.name)
    return removed
