"""Reading and writing the kernel's cgroup I/O files (v2 ``io.*`` and v1 ``blkio.*``).

This is the only module of drcio that opens files under the cgroup hierarchy.
The reconciler (:mod:`writer.reconcile`) and the metrics collector call the
file-level API (:func:`read_io_max`, :func:`apply_io_max`, :func:`apply_weight`,
:func:`read_io_bytes`, ...). Making, filling and removing cgroups is not the
agent's business (kubelet does that on a node): those helpers, used only by
experiments and tests, live in :mod:`writer.groups`, which the agent never imports.

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
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    "read_io_max",
    "apply_io_max",
    "throttle_dirs",
    "apply_io_max_tree",
    "weight_file",
    "read_weight",
    "apply_weight",
    "to_v1_weight",
    "read_io_bytes",
    "weight_effective",
    "Mechanism",
    "weight_mechanisms",
    "apply_bfq_weight",
    "IO_COST_MODEL_KEYS",
    "IO_COST_QOS_KEYS",
    "enable_io_cost",
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

    @functools.cached_property
    def resolved_root(self) -> Path:
        """``root`` with symlinks resolved, once: the mount point does not move under a running writer."""
        return self.root.resolve()


def detect_hierarchy(
    cgroup_root: str | Path = "auto",
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    require_any: Sequence[str] = (),
) -> Hierarchy:
    """Find the hierarchy to write: a v2 mount with ``io`` enabled, else the v1 ``blkio`` mount.

    An explicit ``cgroup_root`` (e.g. the host's tree mounted into the
    writer's pod at ``/host/sys/fs/cgroup``) is classified by what it contains
    (``io.max`` or ``cgroup.controllers`` listing ``io`` -> v2, ``blkio.*``
    files -> v1).

    Inside a pod, mountinfo cannot tell the pod's own cgroup-namespaced mount
    from the host's tree: recorded in the v2 guest, the namespaced mount shows
    root ``/`` and the host's tree bound in shows ``/../../../..``
    (``tests/writer/recorded/v2-guest-pod-cgroupns.txt``). So with
    ``require_any`` (kubelet's ``kubepods.slice`` / ``kubepods`` dirs) only a
    mount holding one of them is taken - the host's tree, never the pod's
    namespaced view - and finding none is an error naming what was seen.
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
    candidates = [Hierarchy(2, mp) for mp in v2 if "io" in _read_words(mp / "cgroup.controllers")]
    candidates += [Hierarchy(1, mp) for mp in v1]
    if require_any:
        held = [c for c in candidates if any((c.root / d).is_dir() for d in require_any)]
        if not held:
            seen = ", ".join(str(c.root) for c in candidates) or "none"
            raise SetupError(
                f"no cgroup I/O hierarchy holds {' or '.join(require_any)} (looked at: {seen}); in a pod, mount the"
                " host's /sys/fs/cgroup (e.g. at /host/sys/fs/cgroup) and set cgroup_root to it"
            )
        candidates = held
    if candidates:
        return candidates[0]
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
    """Return ``path`` made absolute under the root, refusing anything that escapes it.

    Symlinks are resolved first (``os.path.realpath``: one ``lstat`` per
    component), so a link planted in the tree cannot turn into a write outside
    it. Each public function checks its directory once and passes the checked
    path on to the private helpers, which do not check again.
    """
    root = h.resolved_root
    full = Path(os.path.realpath(path if path.is_absolute() else root / path))
    if not full.is_relative_to(root):  # the root itself is relative to itself
        raise WriterError(f"refusing {path}: outside the cgroup root {root}")
    return full


def _group_path(h: Hierarchy, relative: str) -> Path:
    if ".." in Path(relative).parts or not relative.strip("/"):
        raise WriterError(f"group path {relative!r} must be relative, non-empty and without '..'")
    try:
        return safe_join(h.root, relative)
    except CgroupPathError as err:
        raise WriterError(str(err)) from err


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
    return _read_io_max(h, _inside(h, cgroup_dir))


def _read_io_max(h: Hierarchy, d: Path) -> dict[str, Limits]:
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
    return _apply_io_max(h, _inside(h, cgroup_dir), desired)


def _apply_io_max(h: Hierarchy, d: Path, desired: Mapping[str, Limits]) -> Outcome:
    current = _read_io_max(h, d)
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


def throttle_dirs(h: Hierarchy, cgroup_dir: Path) -> list[Path]:
    """The cgroups a limit meant for ``cgroup_dir`` must be written to, the cgroup itself first.

    cgroup v2 ``io.max`` is hierarchical: the pod cgroup's limit covers the
    container cgroups below it, so it is written once. cgroup v1
    ``blkio.throttle.*`` is not (measured on this machine: a reader in a child
    of a 10 MiB/s parent read at about 2 GB/s), and kubelet keeps a pod's
    processes in container cgroups below the pod cgroup, so on v1 the limit
    goes to the cgroup and every cgroup below it. The list is taken fresh on
    every reconcile round, which is how a container started after the push
    is covered within one reconcile interval.
    """
    return _throttle_dirs(h, _inside(h, cgroup_dir))


def _throttle_dirs(h: Hierarchy, d: Path) -> list[Path]:
    if h.version == 2:
        return [d]
    found = [d]
    for parent, dirs, _ in os.walk(d):
        dirs.sort()
        found.extend(Path(parent) / name for name in dirs)
    return found


def apply_io_max_tree(h: Hierarchy, cgroup_dir: Path, desired: Mapping[str, Limits]) -> list[Outcome]:
    """:func:`apply_io_max` on every cgroup of :func:`throttle_dirs` (the workload's cgroup first).

    A cgroup below the workload's that vanishes meanwhile (a container that
    exited) is skipped; the workload's own cgroup vanishing raises
    :class:`CgroupVanished`. The workload's directory is checked once; the
    cgroups below it were found by walking it without following links, and
    each is checked again before it is written.
    """
    dirs = _throttle_dirs(h, _inside(h, cgroup_dir))
    outcomes = [_apply_io_max(h, dirs[0], desired)]
    for child in dirs[1:]:
        try:
            outcomes.append(apply_io_max(h, child, desired))
        except CgroupVanished:
            continue
    return outcomes


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


#: What carries a weight on a device: the v2 io.cost controller, the BFQ scheduler,
#: legacy CFQ (v1 kernels before 5.0), or nothing (the weight is written but inert).
Mechanism = Literal["iocost", "bfq", "cfq", "none"]


def weight_mechanisms(
    h: Hierarchy,
    devices: Iterable[str],
    *,
    scheduler_of: Callable[[str], str | None],
) -> dict[str, Mechanism]:
    """Per device: which kernel mechanism makes a weight written here act, if any.

    Only a weight-honouring controller makes weights bite: on v2 the io.cost
    controller enabled for the device in the root's ``io.cost.qos``
    (``MAJ:MIN enable=1 ...``; it governs ``io.weight`` and wins over the
    scheduler), else BFQ as the device's active scheduler (``io.bfq.weight`` /
    ``blkio.bfq.weight``), or CFQ on old v1 kernels (``blkio.weight``).
    """
    cost_enabled: set[str] = set()
    if h.version == 2:
        for line in _read_words_lines(h.root / "io.cost.qos"):
            parts = line.split()
            if parts and "enable=1" in parts[1:]:
                cost_enabled.add(parts[0])
    out: dict[str, Mechanism] = {}
    for dev in devices:
        scheduler = scheduler_of(dev)
        if dev in cost_enabled:
            out[dev] = "iocost"
        elif scheduler == "bfq":
            out[dev] = "bfq"
        elif scheduler == "cfq" and h.version == 1:
            out[dev] = "cfq"
        else:
            out[dev] = "none"
    return out


def weight_effective(
    h: Hierarchy,
    devices: Iterable[str],
    *,
    scheduler_of: Callable[[str], str | None],
) -> dict[str, bool]:
    """Per device: does a weight written here actually act? (see :func:`weight_mechanisms`)."""
    return {dev: m != "none" for dev, m in weight_mechanisms(h, devices, scheduler_of=scheduler_of).items()}


def apply_bfq_weight(h: Hierarchy, cgroup_dir: Path, weight: int) -> Outcome | None:
    """On v2, also set ``io.bfq.weight`` (1-1000, mapped from the v2 scale) where BFQ offers it.

    ``io.weight`` is read by io.cost only; BFQ reads its own file. The file
    exists once the BFQ module is loaded; writing it is harmless on devices
    that run another scheduler and keeps the weight right if BFQ is switched
    on later. ``None`` when there is no such file (v1 handles BFQ in
    :func:`apply_weight`).
    """
    if h.version != 2:
        return None
    path = _inside(h, cgroup_dir) / "io.bfq.weight"
    if not path.exists():
        return None
    value = to_v1_weight(weight, 1, 100, 1000)
    for line in _read_lines(path):
        parts = line.split()
        if (len(parts) == 2 and parts[0] == "default" and parts[1] == str(value)) or parts == [str(value)]:
            return "unchanged"
    _write(path, f"default {value}")
    return "applied"


#: Keys ``io.cost.model`` takes after ``MAJ:MIN`` (Documentation/admin-guide/cgroup-v2.rst).
IO_COST_MODEL_KEYS = frozenset({"ctrl", "model", "rbps", "rseqiops", "rrandiops", "wbps", "wseqiops", "wrandiops"})
#: Keys of ``io.cost.qos`` one may set (besides ``enable`` and ``ctrl``).
IO_COST_QOS_KEYS = frozenset({"rpct", "rlat", "wpct", "wlat", "min", "max"})


def enable_io_cost(
    h: Hierarchy, device: str, *, model: Mapping[str, str] | None = None, qos: Mapping[str, str] | None = None
) -> Outcome:
    """Switch the io.cost controller on for ``device`` in the root's ``io.cost.qos``.

    Without ``model`` the kernel's own device model applies, and without
    ``qos`` its own QoS (``ctrl=auto``: the rate is raised until latency
    suffers, so weights act once the device is saturated). A given ``model``
    is written to ``io.cost.model`` (``ctrl=user``) first; given ``qos``
    parameters (``rpct``, ``rlat``, ``wpct``, ``wlat``, ``min``, ``max``) are
    written with ``ctrl=user``. Reads back and writes nothing when already so.
    Only v2 has io.cost; on v1 this raises :class:`KernelError`.
    """
    if h.version != 2:
        raise KernelError(h.root / "io.cost.qos", "io.cost exists only on cgroup v2")
    if qos and not set(qos) <= IO_COST_QOS_KEYS:
        raise WriterError(f"io.cost.qos keys must be among {sorted(IO_COST_QOS_KEYS)}, got {sorted(qos)}")
    qos_path = h.root / "io.cost.qos"
    model_path = h.root / "io.cost.model"
    changed = False
    if model:
        wanted = {"ctrl": "user", "model": "linear", **model}
        current = _device_params(model_path, device)
        if not all(_same(current.get(k), v) for k, v in wanted.items()):
            _write(model_path, device + " " + " ".join(f"{k}={v}" for k, v in wanted.items()))
            changed = True
    wanted_qos = {"enable": "1", "ctrl": "user", **qos} if qos else {"enable": "1"}
    if not all(_same(_device_params(qos_path, device).get(k), v) for k, v in wanted_qos.items()):
        if not qos and not model:
            wanted_qos["ctrl"] = "auto"
        _write(qos_path, device + " " + " ".join(f"{k}={v}" for k, v in wanted_qos.items()))
        changed = True
    return "applied" if changed else "unchanged"


def _same(a: str | None, b: str) -> bool:
    """Equal as written, or as numbers (the kernel shows ``rbps=2e8`` back as ``rbps=200000000``)."""
    if a is None or a == b:
        return a == b
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _device_params(path: Path, device: str) -> dict[str, str]:
    """The ``key=value`` pairs of ``device``'s line in an io.cost file (last line wins)."""
    found: dict[str, str] = {}
    for line in _read_lines(path) if path.exists() else []:
        parts = line.split()
        if parts and parts[0] == device:
            found = dict(p.partition("=")[::2] for p in parts[1:])
    return found


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
