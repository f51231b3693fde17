"""The writer's configuration file (``drcio-writer --config writer.yaml``).

Loaded once by :mod:`writer.cli`; every other module receives plain values.
The file is validated strictly at this edge: unknown keys are refused, and
every problem is reported at once, each naming the file and the field.

Units: durations take ``ms``/``s``/``m`` (stored as seconds), sizes take
``K``/``M``/``G`` (powers of 1024, stored as bytes) or ``max`` (stored as
``None`` = no limit), following the SLO file.

Lease TTLs: the push carries its own ``lease_ttl_seconds``, which governs as
soon as a push was accepted; ``failsafe.ttl`` here governs from start until the
first push arrives (a writer whose controller never shows up falls back after
that long). Until then the writer holds whatever limits are in force.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from writer.api import Devices, LabelKey, LabelValue, parse_duration, parse_size
from writer.cgroups import IO_COST_MODEL_KEYS, IO_COST_QOS_KEYS
from writer.discovery import LocalEntry
from writer.tls import TlsServerConfig

__all__ = [
    "ConfigError",
    "parse_duration",
    "parse_size",
    "KubernetesDiscoveryConfig",
    "DiscoveryConfig",
    "FailsafeConfig",
    "WriterConfig",
    "load_config",
    "parse_listen",
]



class ConfigError(Exception):
    """The configuration is unusable; ``errors`` lists every problem (``file: field: what``)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int | None, BeforeValidator(parse_size)]
Selector = Annotated[dict[LabelKey, LabelValue], Field(min_length=1, max_length=16)]

_STRICT = ConfigDict(extra="forbid", frozen=True)


_NUMBER_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(e[0-9]+)?$")


def _params(allowed: frozenset[str], what: str) -> Any:
    def check(value: dict[str, Any]) -> dict[str, str]:
        bad = sorted(str(k) for k in value if k not in allowed)
        if bad:
            raise ValueError(f"unknown {what} keys {bad}; allowed: {', '.join(sorted(allowed))}")
        for k, v in value.items():
            if isinstance(v, bool) or not _NUMBER_RE.match(str(v)):
                raise ValueError(f"{what} {k}: {v!r} is not a number")
        return {str(k): str(v) for k, v in value.items()}

    return check


class IoCostConfig(BaseModel):
    """io.cost with a given device model and/or QoS (``ctrl=user``); see the kernel's cgroup-v2 docs."""

    model_config = _STRICT
    #: io.cost.model parameters: rbps, rseqiops, rrandiops, wbps, wseqiops, wrandiops.
    model: Annotated[dict[str, Any], AfterValidator(_params(IO_COST_MODEL_KEYS - {"ctrl", "model"}, "io.cost.model"))] | None = None
    #: io.cost.qos parameters: rpct, rlat, wpct, wlat, min, max.
    qos: Annotated[dict[str, Any], AfterValidator(_params(IO_COST_QOS_KEYS, "io.cost.qos"))] | None = None


IoCostSetting = Literal["off", "auto"] | IoCostConfig


class KubernetesDiscoveryConfig(BaseModel):
    """Pods on this node from the Kubernetes API."""

    model_config = _STRICT
    #: Environment variable holding the node name (the DaemonSet injects it from spec.nodeName).
    node_name_env: str = "NODE_NAME"
    hp: Selector = {"group-id": "hp"}
    lp: Selector = {"group-id": "lp"}
    #: Only pods of this namespace; ``None`` = all namespaces.
    namespace: str | None = None
    #: Namespaces whose pods may be HP; ``None`` = any. A pod elsewhere labelled HP is not
    #: protected (it cannot escape a group that selects it by labelling itself HP).
    hp_namespaces: list[str] | None = None
    #: Namespaces whose pods may be LP; ``None`` = any.
    lp_namespaces: list[str] | None = None


class DiscoveryConfig(BaseModel):
    """Exactly one of ``local`` or ``kubernetes``."""

    model_config = _STRICT
    local: list[LocalEntry] | None = None
    kubernetes: KubernetesDiscoveryConfig | None = None
    #: Selectors that classify local entries as HP / LP (Kubernetes has its own).
    hp: Selector = {"group-id": "hp"}
    lp: Selector = {"group-id": "lp"}

    @model_validator(mode="after")
    def _exactly_one(self) -> DiscoveryConfig:
        if (self.local is None) == (self.kubernetes is None):
            raise ValueError("give exactly one of 'local' (a list of cgroups) or 'kubernetes'")
        return self


class FailsafeConfig(BaseModel):
    """What the writer does to LP cgroups when the controller's lease runs out."""

    model_config = _STRICT
    #: static: apply the limits below; release: lift all limits; hold: leave them as they are.
    mode: Literal["static", "release", "hold"] = "static"
    #: Lease from start until the first push (a push's own lease_ttl_seconds governs afterwards).
    ttl: Duration = 30.0
    #: Static fail-safe limits, bytes/s or IOPS; None = max. Defaults follow the classic static agent.
    rbps: Size = 200 * 1024**2
    wbps: Size = 50 * 1024**2
    riops: Size = None
    wiops: Size = None
    #: Devices for the static limits when no push ever named any (later: the last push's devices).
    devices: Devices = "auto"
    #: Longest lease a push may ask for; longer requests are cut to this. 5 minutes: sixty
    #: 5 s controller ticks, plenty for a controller restart, short of "a day without control".
    max_ttl: Duration = 300.0
    #: A push may carry its own fail-safe limits per group (the controller's failsafe.level);
    #: in static mode they are used, bounded by the limits above (never looser) and by these
    #: floors (never tighter): bytes/s and IOPS.
    floor_bps: Annotated[int, BeforeValidator(parse_size), Field(ge=1)] = 1024**2
    floor_iops: Annotated[int, Field(ge=1)] = 10


class WriterConfig(BaseModel):
    """The whole writer file."""

    model_config = _STRICT
    listen: str = "127.0.0.1:9100"
    #: File holding the bearer token (a mounted Secret); whitespace around it is stripped.
    token_file: Path | None = None
    #: Serve HTTPS with this certificate (re-read when the files change); client_ca_file = require mTLS.
    tls: TlsServerConfig | None = None
    #: ``auto``, or the io/blkio hierarchy root to use. In a pod: the host's tree
    #: mounted in, e.g. ``/host/sys/fs/cgroup`` (auto-detection in Kubernetes mode
    #: only takes a hierarchy holding kubelet's kubepods, never the pod's own cgroup).
    cgroup_root: str = "auto"
    #: kubelet's ``--cgroup-root`` (its default is ``/``), e.g. ``/kubelet``.
    kubelet_cgroup_root: str = "/"
    #: The proc file system whose mount table resolves ``{mount: ...}`` devices.
    #: ``/proc`` reads this process's own mounts; any other path (the host's /proc
    #: mounted into the writer's pod, e.g. ``/host/proc``) is read at ``<path>/1``,
    #: the host's init, so mount paths are looked up in the host's mount namespace.
    proc_root: Path = Path("/proc")
    #: Switch the io.cost controller on for the devices of groups with a weight
    #: (cgroup v2): ``off``; ``auto`` (the kernel's own model, ``ctrl=auto``); or
    #: ``{model: {rbps: 200000000, ...}, qos: {min: 50, max: 150, ...}}`` (``ctrl=user``).
    #: Off by default: it changes how the whole device is shared, which is the node owner's call.
    io_cost: IoCostSetting = "off"
    discovery: DiscoveryConfig
    failsafe: FailsafeConfig = FailsafeConfig()
    #: How often the reconcile loop re-reads the files and heals drift; 10 s keeps a
    #: runtime's rewrite short-lived without measurable cost (a few small reads).
    reconcile_interval: Duration = 10.0
    #: This node's name for responses and Kubernetes discovery; None = the env var / hostname.
    node_name: str | None = None
    #: Kubelet cgroup driver; auto = detected from what exists (kubepods.slice/ vs kubepods/).
    driver: Literal["auto", "systemd", "cgroupfs"] = "auto"
    #: Count device-mapper disks (LVM) as real disks for ``devices: auto``.
    include_dm: bool = False
    #: File (in an existing directory on the node, e.g. a hostPath) where the writer keeps the cgroups of its LP workloads across
    #: its restarts, so a pod relabelled from LP while the writer was down is still lifted
    #: (:mod:`writer.lp_memory`). None: kept in memory only, and such a pod keeps its limits.
    state_file: Path | None = None

    @field_validator("kubelet_cgroup_root")
    @classmethod
    def _kubelet_root(cls, value: str) -> str:
        parts = value.split("/")
        if not value.startswith("/") or ".." in parts or "\x00" in value:
            raise ValueError(f"{value!r} must be an absolute cgroup path like / or /kubelet")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` / ``"[::1]:9100"`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT with a port in 1-65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]{1,253}$", host):
            raise ValueError(f"{value!r}: {host!r} is not an IP address or host name") from None
    return host, int(port)


def load_config(path: Path) -> WriterConfig:
    """Read and validate the file; raise :class:`ConfigError` listing every problem."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{path}:{where}: not valid YAML: {getattr(err, 'problem', err)}"]) from err
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping of settings, got {type(raw).__name__}"])
    try:
        return WriterConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError([f"{path}: {_loc(e['loc'])}: {e['msg']}" for e in err.errors()]) from err


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_relative()]",) or part.startswith(("function-", "constrained-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"
