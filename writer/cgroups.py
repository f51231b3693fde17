"""Reading and writing the kernel's cgroup I/O files (v2 ``io.*`` and v1 ``blkio.*``).

This is the only module of drcio that opens files under the cgroup hierarchy.
The reconciler (:mod:`writer.reconcile`) and the metrics collector call the
file-level API (:func:`read_io_max`, :func:`apply_io_max`, :func:`apply_weight`,
:func:`read_io_bytes`, ...); the local experiment calls the group helpers
(:func:`detect_hierarchy`, :func:`create_group`, :func:`move_pid`,
:func:`remove_group`).

Every path is checked to lie inside the hierarchy root before it is touched,
and every ``OSError`` is translated here into the small exception tree below,
classified by what the caller should do with it.

Why rules are written with ``O_APPEND`` and read back "last line per device
wins": the kernel's cgroup files take one rule per ``write()`` and merge it
into the device's state, ignoring the file offset. Appending is what ``echo >>``
does and behaves identically on the kernel; on a fake tree (a plain tmp dir,
used for the layouts this machine lacks) it keeps every rule, and reading back
the last rule per device yields exactly the state the kernel would show.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from writer.cgroup_paths import CgroupPathError, safe_join
from writer.mountinfo import entries as mountinfo_entries

__all__ = [
    "WriterError",
    "SetupError",
    "CgroupVanished",
    "KernelError",
    "Hierarchy",
    "Limits",
    "UNLIMITED",
    "Outcome",
    "detect_hierarchy",
    "create_group",
    "move_pid",
    "remove_group",
    "remove_empty_groups",
    "read_io_max",
    "apply_io_max",
    "weight_file",
    "read_weight",
    "apply_weight",
    "to_v1_weight",
    "read_io_bytes",
    "weight_effective",
]

# ---------------------------------------------------------------- errors


class WriterError(Exception):
    """Base of the writer's own errors."""


class SetupError(WriterError):
    """The writer cannot run here (no I/O controller, bad root): stop with this message."""


class CgroupVanished(WriterError):
    """The cgroup directory is gone (pod deleted): an event; skip it this round."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"cgroup {path} no longer exists")
        self.path = path


class KernelError(WriterError):
    """The kernel refused a read or write: report it for this cgroup and carry on."""

    def __init__(self, path: Path, err: OSError | str) -> None:
        if isinstance(err, OSError):
            self.errno_name = _errno.errorcode.get(err.errno or 0, "EIO")
            reason = f"{self.errno_name} ({err.strerror})"
        else:
            self.errno_name = "EINVAL"
            reason = err
        super().__init__(f"{path}: {reason}")
        self.path = path


# ---------------------------------------------------------------- hierarchy


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy carrying the I/O controller."""

    version: Literal[1, 2]
    root: Path


def detect_hierarchy(
    cgroup_root: str | Path = "auto", *, mountinfo: Path = Path("/proc/self/mountinfo")
) -> Hierarchy:
    """Find the hierarchy to write: a v2 mount with ``io`` enabled, else the v1 ``blkio`` mount.

    An explicit ``cgroup_root`` is classified by what it contains (``io.max``
    or ``cgroup.controllers`` listing ``io`` -> v2, ``blkio.*`` files -> v1).
    """
    if str(cgroup_root) != "auto":
        return _classify(Path(cgroup_root))
    try:
        text = mountinfo.read_text()
    except OSError as err:
        raise SetupError(f"cannot read {mountinfo}: {err.strerror}") from err
    v2: list[Path] = []
    v1: list[Path] = []
    for _, _, entry in mountinfo_entries(text):
        if entry is None:
            continue
        if entry.fstype == "cgroup2":
            v2.append(Path(entry.mount_point))
        elif entry.fstype == "cgroup" and "blkio" in entry.super_options:
            v1.append(Path(entry.mount_point))
    for mp in v2:
        if "io" in _read_words(mp / "cgroup.controllers"):
            return Hierarchy(2, mp)
    if v1:
        return Hierarchy(1, v1[0])
    found = ", ".join(str(p) for p in v2) or "none"
    raise SetupError(
        "no cgroup I/O controller found: need a cgroup v2 mount whose cgroup.controllers lists 'io' "
        f"(cgroup2 mounts: {found}) or a cgroup v1 mount with the blkio controller"
    )


def _classify(root: Path) -> Hierarchy:
    if not root.is_dir():
        raise SetupError(f"cgroup_root {root} is not a directory")
    if "io" in _read_words(root / "cgroup.controllers") or (root / "io.max").exists():
        return Hierarchy(2, root)
    if (root / "blkio.throttle.read_bps_device").exists():
        return Hierarchy(1, root)
    raise SetupError(f"cgroup_root {root} has neither the v2 io controller nor v1 blkio files")


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _inside(h: Hierarchy, path: Path) -> Path:
    """Return ``path`` made absolute under the root, refusing anything that escapes it."""
    root = h.root.resolve()
    full = (path if path.is_absolute() else root / path).resolve()
    if full != root and root not in full.parents:
        raise WriterError(f"refusing {path}: outside the cgroup root {root}")
    return full


def _group_path(h: Hierarchy, relative: str) -> Path:
    if ".." in Path(relative).parts or not relative.strip("/"):
        raise WriterError(f"group path {relative!r} must be relative, non-empty and without '..'")
    try:
        return safe_join(h.root, relative)
    except CgroupPathError as err:
        raise WriterError(str(err)) from err


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


def _mkdir(path: Path, *, parents: bool = False) -> None:
    try:
        path.mkdir(parents=parents, exist_ok=True)
    except OSError as err:
        raise KernelError(path, err) from err


@contextlib.contextmanager
def _kernel_errors(path: Path) -> Iterator[None]:
    """Translate OSError on a cgroup file: a missing file whose cgroup is gone is a vanished cgroup."""
    try:
        yield
    except FileNotFoundError as err:
        if not path.parent.exists():
            raise CgroupVanished(path.parent) from err
        raise KernelError(path, err) from err
    except OSError as err:
        raise KernelError(path, err) from err


def _write(path: Path, line: str) -> None:
    with _kernel_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def _read_lines(path: Path) -> list[str]:
    with _kernel_errors(path):
        return path.read_text().splitlines()


# ---------------------------------------------------------------- io.max


@dataclass(frozen=True)
class Limits:
    """The four throttle keys of one device; ``None`` = unlimited (``max`` / v1 ``0``)."""

    rbps: int | None = None
    wbps: int | None = None
    riops: int | None = None
    wiops: int | None = None

    @property
    def is_unlimited(self) -> bool:
        return all(v is None for v in (self.rbps, self.wbps, self.riops, self.wiops))

    def v2_rule(self, device: str) -> str:
        """The ``io.max`` line setting every key (``max`` lifts), so a write states the whole limit."""
        keys = ("rbps", "wbps", "riops", "wiops")
        return device + " " + " ".join(f"{k}={_v2_value(getattr(self, k))}" for k in keys)


UNLIMITED = Limits()
Outcome = Literal["applied", "unchanged"]

_V1_FILES = {
    "rbps": "blkio.throttle.read_bps_device",
    "wbps": "blkio.throttle.write_bps_device",
    "riops": "blkio.throttle.read_iops_device",
    "wiops": "blkio.throttle.write_iops_device",
}


def _v2_value(v: int | None) -> str:
    return "max" if v is None else str(v)


def _parse_limit(path: Path, text: str) -> int | None:
    if text == "max":
        return None
    if not text.isdigit():
        raise KernelError(path, f"unexpected value {text!r}")
    value = int(text)
    return None if value == 0 else value


def read_io_max(h: Hierarchy, cgroup_dir: Path) -> dict[str, Limits]:
    """The limits in force, per device (``MAJ:MIN``); unlimited devices are left out."""
    d = _inside(h, cgroup_dir)
    found: dict[str, dict[str, int | None]] = {}
    if h.version == 2:
        path = d / "io.max"
        for line in _read_lines(path):
            parts = line.split()
            if not parts:
                continue
            keys = found.setdefault(parts[0], {})
            keys.clear()  # the last rule for a device is its whole state
            for kv in parts[1:]:
                k, sep, v = kv.partition("=")
                if not sep or k not in _V1_FILES:
                    raise KernelError(path, f"unexpected io.max field {kv!r}")
                keys[k] = _parse_limit(path, v)
    else:
        for key, name in _V1_FILES.items():
            path = d / name
            for line in _read_lines(path):
                parts = line.split()
                if len(parts) != 2:
                    continue
                found.setdefault(parts[0], {})[key] = _parse_limit(path, parts[1])
    limits = {dev: Limits(**keys) for dev, keys in found.items()}
    return {dev: lim for dev, lim in limits.items() if not lim.is_unlimited}


def apply_io_max(h: Hierarchy, cgroup_dir: Path, desired: Mapping[str, Limits]) -> Outcome:
    """Make the cgroup's limits equal ``desired``: write only differing devices, lift the rest.

    Devices limited now but absent from ``desired`` are reset to unlimited, so
    a device dropped from a push does not keep a stale limit.
    """
    d = _inside(h, cgroup_dir)
    current = read_io_max(h, d)
    wanted = {dev: lim for dev, lim in desired.items() if not lim.is_unlimited}
    changes = {dev: lim for dev, lim in wanted.items() if current.get(dev) != lim}
    changes.update({dev: UNLIMITED for dev in current if dev not in wanted})
    for dev, lim in sorted(changes.items()):
        if h.version == 2:
            _write(d / "io.max", lim.v2_rule(dev))
        else:
            old = current.get(dev, UNLIMITED)
            for key, name in _V1_FILES.items():
                new_value: int | None = getattr(lim, key)
                if new_value != getattr(old, key):
                    _write(d / name, f"{dev} {new_value or 0}")
    return "applied" if changes else "unchanged"


# ---------------------------------------------------------------- weight

#: (file, minimum, default, maximum) of each kernel weight interface.
_WEIGHT_FILES_V1 = (("blkio.bfq.weight", 1, 100, 1000), ("blkio.weight", 10, 500, 1000))
_V2_WEIGHT = ("io.weight", 1, 100, 10_000)


def weight_file(h: Hierarchy, cgroup_dir: Path) -> tuple[Path, int, int, int] | None:
    """The weight file this cgroup has, with its (min, default, max); ``None`` when there is none."""
    d = _inside(h, cgroup_dir)
    candidates = (_V2_WEIGHT,) if h.version == 2 else _WEIGHT_FILES_V1
    for name, lo, default, hi in candidates:
        if (d / name).exists():
            return d / name, lo, default, hi
    return None


def to_v1_weight(weight: int, lo: int, default: int, hi: int) -> int:
    """Map the v2 scale (1..100..10000) onto a v1 range, piecewise linear around the defaults.

    The defaults correspond (v2 100 = blkio.weight 500 = bfq.weight 100), so
    "no preference" stays "no preference"; below and above it the range is
    stretched linearly, as systemd does when it translates IOWeight= for v1.
    """
    w = max(1, min(10_000, weight))
    if w <= 100:
        return round(lo + (default - lo) * (w - 1) / 99)
    return round(default + (hi - default) * (w - 100) / 9_900)


def read_weight(h: Hierarchy, cgroup_dir: Path) -> int | None:
    """The cgroup's default weight in the file's own scale; ``None`` without a weight file."""
    found = weight_file(h, cgroup_dir)
    if found is None:
        return None
    path = found[0]
    value: int | None = None
    for line in _read_lines(path):
        parts = line.split()
        # "N" (older v1), or "default N"; per-device "MAJ:MIN N" lines are not the default.
        if len(parts) == 1 and parts[0].isdigit():
            value = int(parts[0])
        elif len(parts) == 2 and parts[0] == "default" and parts[1].isdigit():
            value = int(parts[1])
    return value


def apply_weight(h: Hierarchy, cgroup_dir: Path, weight: int) -> Outcome:
    """Set the cgroup's default weight (v2 scale 1-10000, mapped for v1); skip if already so."""
    found = weight_file(h, cgroup_dir)
    if found is None:
        raise KernelError(_inside(h, cgroup_dir), "no weight file (io.weight / blkio.bfq.weight / blkio.weight)")
    path, lo, default, hi = found
    value = weight if h.version == 2 else to_v1_weight(weight, lo, default, hi)
    if read_weight(h, cgroup_dir) == value:
        return "unchanged"
    # v2 io.weight takes "default N"; the v1 files take a bare number.
    _write(path, f"default {value}" if h.version == 2 else str(value))
    return "applied"


def weight_effective(
    h: Hierarchy,
    devices: Iterable[str],
    *,
    scheduler_of: Callable[[str], str | None],
) -> dict[str, bool]:
    """Per device: does a weight written here actually act?

    Only a weight-honouring controller makes weights bite: BFQ as the device's
    active scheduler (v1 and v2), CFQ on old v1 kernels (``blkio.weight``), or
    on v2 the io.cost controller enabled for the device in the root's
    ``io.cost.qos`` (``MAJ:MIN enable=1 ...``).
    """
    honouring = {"bfq"} if h.version == 2 else {"bfq", "cfq"}
    cost_enabled: set[str] = set()
    if h.version == 2:
        for line in _read_words_lines(h.root / "io.cost.qos"):
            parts = line.split()
            if parts and "enable=1" in parts[1:]:
                cost_enabled.add(parts[0])
    return {dev: dev in cost_enabled or scheduler_of(dev) in honouring for dev in devices}


def _read_words_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


# ---------------------------------------------------------------- io bytes


def read_io_bytes(h: Hierarchy, cgroup_dir: Path) -> dict[str, tuple[int, int]]:
    """Bytes read and written by the cgroup (and its descendants), per device, since it was made."""
    d = _inside(h, cgroup_dir)
    out: dict[str, tuple[int, int]] = {}
    if h.version == 2:
        for line in _read_lines(d / "io.stat"):
            parts = line.split()
            if not parts:
                continue
            kv = dict(p.partition("=")[::2] for p in parts[1:])
            out[parts[0]] = (int(kv.get("rbytes", "0")), int(kv.get("wbytes", "0")))
        return out
    # v1 counts only a group's own tasks in the plain file; pods keep their
    # processes in child (container) groups, so prefer the recursive one.
    path = d / "blkio.throttle.io_service_bytes_recursive"
    if not path.exists():
        path = d / "blkio.throttle.io_service_bytes"
    for line in _read_lines(path):
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        r, w = out.get(parts[0], (0, 0))
        if parts[1] == "Read":
            r = int(parts[2])
        elif parts[1] == "Write":
            w = int(parts[2])
        else:
            continue
        out[parts[0]] = (r, w)
    return out
