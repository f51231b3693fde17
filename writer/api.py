"""Wire models of the controller -> writer push (``PUT /v1/targets``).

This module is the contract between the two halves of drcio: the controller
builds :class:`TargetsPush` bodies, the writer validates them strictly and
answers with a :class:`PushResponse`. It imports nothing of ours and does no
I/O, so the controller may import it without pulling in anything privileged.

Validation is deliberately strict, because the writer is the only privileged
part of the system: unknown fields are rejected, numbers are range-checked,
label selectors and device references must match Kubernetes label syntax and
``MAJ:MIN`` respectively, so nothing in a body can be turned into a path.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "API_VERSION",
    "TARGETS_PATH",
    "STATUS_PATH",
    "MAX_BODY_BYTES",
    "MAX_GROUPS",
    "DeviceNumber",
    "Devices",
    "GroupName",
    "LabelKey",
    "LabelValue",
    "MountRef",
    "IoMax",
    "GroupTarget",
    "TargetsPush",
    "CgroupResult",
    "PushResponse",
    "ErrorResponse",
    "LP_READ_BYTES_METRIC",
    "LP_WRITE_BYTES_METRIC",
    "LP_IO_MAX_METRIC",
    "WEIGHT_MIN",
    "WEIGHT_MAX",
    "parse_size",
    "parse_duration",
]

API_VERSION = "v1"
TARGETS_PATH = f"/{API_VERSION}/targets"
#: What the writer holds and has in force (bearer token required); a controller taking over reads it.
STATUS_PATH = "/status"
#: The writer refuses larger bodies with 413 before parsing them.
MAX_BODY_BYTES = 64 * 1024
#: More LP groups than this in one push is a bug, not a configuration.
MAX_GROUPS = 64
#: cgroup v2 ``io.weight`` range; v1 writers map it onto their own range.
#: The writer's metrics the controller reads back (``PidParams.gate_utilisation``): per LP cgroup
#: (labels ``group``, ``workload``, ``device``), the bytes it moved (counters, exposed with
#: ``_total``) and the ``io.max`` bandwidth in force (label ``direction``: read / write; absent = max).
LP_READ_BYTES_METRIC = "drcio_io_read_bytes"
LP_WRITE_BYTES_METRIC = "drcio_io_write_bytes"
LP_IO_MAX_METRIC = "drcio_io_max_bytes_per_second"

WEIGHT_MIN = 1
WEIGHT_MAX = 10_000
#: Largest bandwidth or IOPS value accepted (the kernel takes u64; 2**62 is "more than any disk").
_LIMIT_MAX = 2**62

_STRICT = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

# Kubernetes label syntax: optional DNS-subdomain prefix + "/" + name (<= 63 chars).
_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*"
_LABEL_KEY_RE = re.compile(rf"^(?:{_LABEL_PREFIX}/)?{_LABEL_NAME}$")
_LABEL_VALUE_RE = re.compile(rf"^(?:{_LABEL_NAME})?$")


# ---------------------------------------------------------------- units (one notation for both files)

_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?)\s*$")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_duration(value: object) -> float:
    """``"100ms"`` -> 0.1, ``"5s"`` -> 5.0, ``"2m"`` -> 120.0 (seconds, > 0).

    The one duration parser of drcio: the SLO file (controller) and the
    writer file both use it, so a value means the same in either. A bare
    number is refused: is ``100`` seconds or milliseconds?
    """
    allowed = "expected a duration such as '100ms', '5s' or '2m' (a number with ms, s or m)"
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{allowed}, got {value!r}")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"{allowed}, got {value!r}")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be > 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int | None:
    """``"10M"`` -> 10485760 (K/M/G are powers of 1024), ``"max"`` -> None (no limit), a bare integer is taken as-is.

    The one size parser of drcio, shared by the SLO file and the writer file.
    ``MB``, ``MiB`` or ``T`` are refused rather than guessed at (is ``MB``
    10**6 or 2**20?). The result is >= 1: a zero limit is a typo, ``max``
    means no limit.
    """
    allowed = "expected a size such as '512K', '10M', '1.5G' (powers of 1024), a number of bytes, or 'max'"
    if isinstance(value, bool):
        raise ValueError(f"{allowed}, got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str):
        if value.strip() == "max":
            return None
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{allowed}, got {value!r}")
        number, unit = float(m.group(1)), m.group(2)
    else:
        raise ValueError(f"{allowed}, got {value!r}")
    size = int(number * _SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"size must be at least 1 (use 'max' for no limit), got {value!r}")
    return size


# Selectors repeat in every push (the same few keys and values each tick), and a
# writer in a 2,500-writer benchmark process spent a fifth of its push in these
# two regexes: remember the ones that passed. Failures raise, so they are never cached.
@functools.lru_cache(maxsize=4096)
def _check_label_key(key: str) -> str:
    if len(key) > 317 or not _LABEL_KEY_RE.fullmatch(key):
        raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
    return key


@functools.lru_cache(maxsize=4096)
def _check_label_value(value: str) -> str:
    if not _LABEL_VALUE_RE.fullmatch(value):
        raise ValueError(f"label value {value!r} is not a valid Kubernetes label value")
    return value


LabelKey = Annotated[str, AfterValidator(_check_label_key)]
LabelValue = Annotated[str, AfterValidator(_check_label_value)]
#: A block device as ``MAJ:MIN`` (decimal, as in ``/proc/self/mountinfo`` and ``io.max``).
DeviceNumber = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,4}:[0-9]{1,7}$")]
#: A group name: a label value that is never empty.
GroupName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=rf"^{_LABEL_NAME}$")]
Limit = Annotated[int, Field(ge=1, le=_LIMIT_MAX)]


def _check_mount_path(path: str) -> str:
    parts = path.split("/")
    if not path.startswith("/") or "\x00" in path or ".." in parts or len(path) > 4096:
        raise ValueError(f"mount path {path!r} must be absolute, without '..' or NUL")
    return path


class MountRef(BaseModel):
    """A mount point whose backing block device the writer resolves on its node."""

    model_config = _STRICT
    mount: Annotated[str, AfterValidator(_check_mount_path)]


DeviceRef = DeviceNumber | MountRef
#: ``"auto"`` = every real disk of the node (virtual devices skipped).
Devices = Literal["auto"] | Annotated[list[DeviceRef], Field(min_length=1, max_length=64)]


class IoMax(BaseModel):
    """Desired ``io.max`` keys for one LP group. ``None`` means ``max`` (no limit).

    Every key is written every time (``max`` for ``None``), so a push states
    the whole desired limit and replays are idempotent. Bandwidth is in bytes
    per second, IOPS in operations per second.
    """

    model_config = _STRICT
    rbps: Limit | None = None
    wbps: Limit | None = None
    riops: Limit | None = None
    wiops: Limit | None = None

    @property
    def is_unlimited(self) -> bool:
        return all(v is None for v in (self.rbps, self.wbps, self.riops, self.wiops))


class GroupTarget(BaseModel):
    """The desired I/O limits of one LP group (the pods matching ``selector``)."""

    model_config = _STRICT
    name: GroupName
    selector: Annotated[dict[LabelKey, LabelValue], Field(min_length=1, max_length=16)]
    devices: Devices = "auto"
    io_max: IoMax = IoMax()
    #: cgroup v2 ``io.weight`` (1-10000); ``None`` leaves the weight alone.
    io_weight: Annotated[int, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX)] | None = None
    #: The controller's level in [0, 1] behind these values; informational (status, metrics).
    level: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    #: What to fall back to when the controller's lease runs out: the controller's
    #: ``failsafe.level`` turned into limits for this group. The writer applies it
    #: only in its ``static`` fail-safe mode and never looser than its own static
    #: limits nor tighter than its ``failsafe.floor`` (see writer.config). None = the writer's own.
    failsafe: IoMax | None = None


class TargetsPush(BaseModel):
    """Body of ``PUT /v1/targets``: the whole desired state for every LP group."""

    model_config = _STRICT
    #: Strictly increasing, also across controller restarts (the controller uses
    #: wall-clock milliseconds); a push with a lower generation than the last
    #: accepted one is refused (409). An equal generation is a replay.
    generation: Annotated[int, Field(ge=0, le=2**63 - 1)]
    #: Without a valid push within this many seconds the writer applies its fail-safe.
    lease_ttl_seconds: Annotated[float, Field(gt=0.0, le=86_400.0, allow_inf_nan=False)]
    groups: Annotated[list[GroupTarget], Field(max_length=MAX_GROUPS)]
    #: Who sent it (for /status); free text, short.
    controller: Annotated[str, StringConstraints(max_length=128)] = ""

    @model_validator(mode="after")
    def _group_names_unique(self) -> TargetsPush:
        names = [g.name for g in self.groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"group names must be unique, repeated: {', '.join(dupes)}")
        return self


CgroupOutcome = Literal["applied", "unchanged", "error"]


class CgroupResult(BaseModel):
    """What the writer did to one cgroup for one group."""

    model_config = ConfigDict(extra="forbid")
    group: str
    cgroup: str
    outcome: CgroupOutcome
    #: For errors: what failed, with the kernel's errno name where there is one.
    detail: str = ""


class PushResponse(BaseModel):
    """The writer's answer to an accepted push."""

    model_config = ConfigDict(extra="forbid")
    node: str
    generation: int
    results: list[CgroupResult]
    #: Groups of the push that selected no LP workload on this node (nothing written for them).
    unmatched_groups: list[str] = []
    #: What an all-green ``results`` would hide: no LP workload, no kubelet tree recognised, ...
    warnings: list[str] = []


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx the writer returns."""

    model_config = ConfigDict(extra="forbid")
    error: str
    detail: list[str] = []
