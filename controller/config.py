"""The SLO file: typed models, units, and a loader that reports every error at once.

Called by the CLI (``drcio-controller --config slo.yaml``) and by the
experiments, which generate SLO files. Everything the rest of the controller
reads is in base units (``*_seconds``, bytes per second) and already valid:
nothing starts with a bad file.

Error messages name the file, the SLO (by index and name) and the field, and
say what is allowed, e.g.::

    slo.yaml: slos[0] (gnn-p95) -> policy: unknown policy parameter 'kq' (allowed: kp, ki, kd, ...)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.errors import ConfigError
from controller.units import parse_duration, parse_size
from policies import FailSafe, PolicyConfigError
from policies.registry import parse_params
from writer.api import WEIGHT_MAX, WEIGHT_MIN, DeviceNumber, LabelKey, LabelValue, MountRef

__all__ = [
    "ControllerConfig",
    "SloConfig",
    "ThrottleConfig",
    "RateRange",
    "WeightRange",
    "PolicyConfig",
    "PrometheusConfig",
    "WritersConfig",
    "KubernetesWriters",
    "FailSafeConfig",
    "TlsClientConfig",
    "BasicAuthConfig",
    "load_config",
    "parse_config",
]

_STRICT = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

Seconds = Annotated[float, BeforeValidator(parse_duration)]
Bytes = Annotated[int | None, BeforeValidator(parse_size)]
_METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SLO_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")


class TlsClientConfig(BaseModel):
    """How the controller verifies a server (and, optionally, proves itself with a client certificate).

    ca_file: PEM bundle of the CA(s) that signed the server's certificate;
        without it the system's trust store is used. Verification is never off.
    cert_file / key_file: the controller's client certificate, for mTLS (both or neither).
    check_hostname: whether the certificate must name the host dialled. Writers are
        dialled by pod IP on Kubernetes; set false when their certificates carry no
        IP SANs (the chain is still verified against ca_file).
    Every file is re-read when it changes (a rotated Secret), without a restart.
    """

    model_config = _STRICT
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsClientConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together (mTLS) or neither")
        return self


class BasicAuthConfig(BaseModel):
    """HTTP basic auth for a Prometheus behind a proxy; the password comes from a file (re-read on change)."""

    model_config = _STRICT
    username: Annotated[str, Field(min_length=1)]
    password_file: Path


class PrometheusConfig(BaseModel):
    """Where the sensor reads, and how long one query may take.

    timeout: per query. Default 2 s: well inside the 5 s default interval, so
        a slow Prometheus costs one reading, never the schedule.
    retries: extra attempts on connection errors and 502/503/504 only, with
        a short back-off; 1 rides out a Prometheus restart blip.
    """

    model_config = _STRICT
    url: str = "http://127.0.0.1:9090"
    timeout_seconds: Seconds = Field(2.0, alias="timeout")
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    #: TLS verification for an https URL (never disabled; ca_file for a private CA).
    tls: TlsClientConfig | None = None
    #: A bearer token for a Prometheus behind auth (Thanos, managed Prometheus); re-read on change.
    bearer_token_file: Path | None = None
    basic_auth: BasicAuthConfig | None = None

    @model_validator(mode="after")
    def _one_auth(self) -> PrometheusConfig:
        if self.bearer_token_file is not None and self.basic_auth is not None:
            raise ValueError("give at most one of bearer_token_file and basic_auth")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v.rstrip("/")


class KubernetesWriters(BaseModel):
    """Find writers through the EndpointSlices of their Service (one ready endpoint per node)."""

    model_config = _STRICT
    namespace: str = "drcio-system"
    service: str = "drcio-writer"
    port: Annotated[int, Field(ge=1, le=65535)] = 9100
    scheme: Literal["http", "https"] = "http"


class WritersConfig(BaseModel):
    model_config = _STRICT
    static: list[str] | None = None
    kubernetes: KubernetesWriters | None = None
    token_file: Path | None = None
    #: Per-writer push deadline. One slow or dead writer never delays the others beyond this.
    timeout_seconds: Seconds = Field(2.0, alias="timeout")
    #: Verify the writers' HTTPS certificates (ca_file) and optionally present a client one (mTLS).
    tls: TlsClientConfig | None = None

    @field_validator("static")
    @classmethod
    def _urls(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        bad = [u for u in v if not re.match(r"^https?://[^\s/]+/?$", u)]
        if bad:
            raise ValueError(f"writer URLs must look like http://host:port, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("writer URLs must be unique")
        return [u.rstrip("/") for u in v]

    @model_validator(mode="after")
    def _one_source(self) -> WritersConfig:
        if (self.static is None) == (self.kubernetes is None):
            raise ValueError("give exactly one of 'static' (a list of URLs) or 'kubernetes' (Service discovery)")
        return self


class FailSafeConfig(BaseModel):
    """What every policy does while the sensor fails (see :class:`policies.FailSafe`)."""

    model_config = _STRICT
    after: Annotated[int, Field(ge=0, le=1000)] = 3
    level: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2

    def to_policy(self) -> FailSafe:
        return FailSafe(after=self.after, level=self.level)


class RateRange(BaseModel):
    """A bandwidth (bytes/s) or IOPS range an LP group moves within.

    ``min`` is the limit at level 0 (throttled hardest); ``max`` the limit at
    level 1, where ``max`` means "no limit". Between them interpolation is
    geometric: equal level steps are equal *ratios*, which matches how disk
    contention responds (10 -> 20 MB/s matters as much as 500 -> 1000 MB/s).
    A ratio needs a finite top, so for ``max: max`` the curve runs from
    ``min`` to ``top`` (default 256 x min) and only level 1 lifts the limit.
    """

    model_config = _STRICT
    min: Annotated[int, BeforeValidator(parse_size)]
    max: Bytes = None
    top: Bytes = None

    @model_validator(mode="after")
    def _ordered(self) -> RateRange:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.top is not None and self.top < self.min:
            raise ValueError(f"top ({self.top}) must be >= min ({self.min})")
        if self.top is not None and self.max is not None:
            raise ValueError("top only applies when max is 'max'")
        return self

    @property
    def finite_top(self) -> int:
        if self.max is not None:
            return self.max
        return self.top if self.top is not None else self.min * 256


class WeightRange(BaseModel):
    """cgroup v2 ``io.weight`` range (1-10000); level 0 -> min, level 1 -> max, geometric between."""

    model_config = _STRICT
    min: Annotated[int, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX)]
    max: Annotated[int, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX)]

    @model_validator(mode="after")
    def _ordered(self) -> WeightRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


def _normalise_devices(value: Any) -> Any:
    # The design's shorthand `devices: {mount: /mnt/x}` means a one-element list.
    if isinstance(value, dict):
        return [value]
    return value


class ThrottleConfig(BaseModel):
    """Which LP pods an SLO throttles, on which devices, and within which range."""

    model_config = _STRICT
    selector: Annotated[dict[LabelKey, LabelValue], Field(min_length=1)]
    #: Name of the LP group on the wire and in metrics; default: the selector's values joined by '-'.
    group: str | None = None
    devices: Annotated[
        Literal["auto"] | Annotated[list[DeviceNumber | MountRef], Field(min_length=1)],
        BeforeValidator(_normalise_devices),
    ] = "auto"
    rbps: RateRange | None = None
    wbps: RateRange | None = None
    riops: RateRange | None = None
    wiops: RateRange | None = None
    weight: WeightRange | None = None

    @model_validator(mode="after")
    def _something_to_throttle(self) -> ThrottleConfig:
        if all(getattr(self, k) is None for k in ("rbps", "wbps", "riops", "wiops", "weight")):
            raise ValueError("give at least one of rbps, wbps, riops, wiops, weight")
        name = self.group_name
        if not re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", name):
            raise ValueError(f"group name {name!r} is not a valid label value; set 'group' explicitly")
        return self

    @property
    def group_name(self) -> str:
        return self.group or "-".join(self.selector[k] for k in sorted(self.selector))


class PolicyConfig(BaseModel):
    """``{kind: pid|aimd|static, ...parameters}``; parameters are checked by the policy's own dataclass."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str

    @model_validator(mode="after")
    def _params_valid(self) -> PolicyConfig:
        try:
            parse_params(self.kind, self.params)
        except PolicyConfigError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def parsed(self) -> Any:
        return parse_params(self.kind, self.params)


class SloConfig(BaseModel):
    """One latency SLO: what to measure, what to aim for, how to react, what to throttle."""

    model_config = _STRICT
    name: str
    metric: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    quantile: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    window_seconds: Seconds = Field(30.0, alias="window")
    target_seconds: Seconds = Field(alias="target")
    #: A raw PromQL expression returning one series of latency in seconds, instead of metric/labels/quantile/window.
    query: str | None = None
    #: Below this many HP requests per second a quantile is noise: it counts as no data.
    min_rate: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.5
    #: For raw queries: PromQL giving the HP request rate (optional; without it min_rate is not checked).
    rate_query: str | None = None
    policy: PolicyConfig
    throttle: ThrottleConfig

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _SLO_NAME_RE.match(v):
            raise ValueError("must be lower-case letters, digits, '-', '_' or '.', at most 63 characters")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and not _METRIC_RE.match(v):
            raise ValueError(f"{v!r} is not a Prometheus metric name")
        if v is not None and v.endswith("_bucket"):
            raise ValueError(f"give the histogram's base name, without '_bucket' ({v[: -len('_bucket')]!r})")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _LABEL_NAME_RE.match(k) or k == "le"]
        if bad:
            raise ValueError(f"invalid label names {bad} (Prometheus label syntax; 'le' is reserved)")
        return v

    @model_validator(mode="after")
    def _metric_or_query(self) -> SloConfig:
        if (self.metric is None) == (self.query is None):
            raise ValueError("give exactly one of 'metric' (with labels/quantile/window) or 'query' (raw PromQL)")
        return self

    @model_validator(mode="after")
    def _gate_has_bandwidth(self) -> SloConfig:
        if self.uses_lp_utilisation and self.throttle.rbps is None and self.throttle.wbps is None:
            raise ValueError(
                "policy: the gate (gate_utilisation > 0) measures LP's bandwidth against its io.max; "
                "give throttle.rbps or throttle.wbps"
            )
        return self

    @property
    def uses_lp_utilisation(self) -> bool:
        """Whether the policy needs LP's use of its limit measured (``PidParams.gate_utilisation`` > 0)."""
        return bool(getattr(self.policy.parsed(), "uses_lp_utilisation", False))


class ControllerConfig(BaseModel):
    """The whole SLO file."""

    model_config = _STRICT
    #: Control interval. Default 5 s: a P95 over a 30 s window moves little faster; >= 1 s.
    interval_seconds: Seconds = Field(5.0, alias="interval")
    mode: Literal["active", "dry-run"] = "active"
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    writers: WritersConfig
    #: Shorthand for writers.token_file, as in the design's example.
    token_file: Path | None = None
    failsafe: FailSafeConfig = Field(default_factory=FailSafeConfig)
    #: Where the policies start when this controller starts or takes over as leader. ``in-force``
    #: (default): the level its writers hold from the last push, the lowest over the writers that
    #: answer within one interval (a writer in fail-safe or without a push counts as the fail-safe
    #: level at most; none answering: the fail-safe level), so a restart or a fail-over continues
    #: from the limits in force. ``failsafe``: ``failsafe.level``. A number in [0, 1]: that level
    #: (``run-experiment --start-from`` sets the level an earlier run's loop ended at).
    start_level: Literal["in-force", "failsafe"] | float = "in-force"
    #: How long a push stays valid on the writers; default 6 intervals (>= 15 s).
    lease_ttl_seconds: Seconds | None = Field(None, alias="lease_ttl")
    slos: Annotated[list[SloConfig], Field(min_length=1)]

    @field_validator("start_level", mode="before")
    @classmethod
    def _start_level(cls, v: Any) -> Any:
        if v in ("in-force", "failsafe"):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0:
            return float(v)
        raise ValueError(f"must be 'in-force', 'failsafe' or a level in [0, 1], got {v!r}")

    @field_validator("interval_seconds")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError("must be at least 1s")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> ControllerConfig:
        names = [s.name for s in self.slos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"SLO names must be unique, repeated: {dupes}")
        if self.token_file is not None and self.writers.token_file is not None:
            raise ValueError("give token_file once (top level or under writers)")
        selectors: dict[str, dict[str, str]] = {}
        for slo in self.slos:
            seen = selectors.setdefault(slo.throttle.group_name, dict(slo.throttle.selector))
            if seen != dict(slo.throttle.selector):
                raise ValueError(
                    f"LP group {slo.throttle.group_name!r} is given two different selectors ({seen} and "
                    f"{dict(slo.throttle.selector)}); name the groups apart with throttle.group"
                )
        if self.lease_ttl_seconds is not None and self.lease_ttl_seconds < 2 * self.interval_seconds:
            raise ValueError(
                f"lease_ttl ({self.lease_ttl_seconds:g}s) must be at least twice the interval "
                f"({self.interval_seconds:g}s): a push lost or late would otherwise drop the writers into their fail-safe"
            )
        for slo in self.slos:
            if self.prometheus.timeout_seconds * (1 + self.prometheus.retries) >= self.interval_seconds:
                raise ValueError(
                    "prometheus.timeout x (1 + retries) must stay below the interval, "
                    "or one slow query would delay the next step"
                )
            if slo.metric is not None and slo.window_seconds < 2 * 1.0:
                raise ValueError(f"slos[{slo.name}].window must be >= 2s so rate() sees two scrapes")
        return self

    @property
    def fixed_start_level(self) -> float | None:
        """The level the policies start at when ``start_level`` fixes one (a number or ``failsafe``), else None."""
        if self.start_level == "in-force":
            return None
        return self.failsafe.level if self.start_level == "failsafe" else float(self.start_level)

    @property
    def effective_token_file(self) -> Path | None:
        return self.token_file or self.writers.token_file

    @property
    def lease_ttl(self) -> float:
        if self.lease_ttl_seconds is not None:
            return self.lease_ttl_seconds
        return max(6 * self.interval_seconds, 15.0)


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """Render a pydantic error location, naming SLOs by index and name."""
    parts: list[str] = []
    node: Any = raw
    for i, key in enumerate(loc):
        if isinstance(key, int):
            name = ""
            if isinstance(node, list) and 0 <= key < len(node):
                node = node[key]
                if i == 1 and loc[0] == "slos" and isinstance(node, dict) and "name" in node:
                    name = f" ({node['name']})"
            else:
                node = None
            parts[-1] = f"{parts[-1]}[{key}]{name}" if parts else f"[{key}]{name}"
        else:
            node = node.get(key) if isinstance(node, dict) else None
            parts.append(str(key))
    return " -> ".join(parts) if parts else "(top level)"


def parse_config(raw: Any, *, source: str = "<config>") -> ControllerConfig:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"{source}: expected a mapping at the top level, got {type(raw).__name__}"])
    try:
        return ControllerConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {_where(loc, raw)}: {msg}")
        raise ConfigError(source, problems) from None


def load_config(path: Path | str) -> ControllerConfig:
    """Read and validate an SLO file. Every problem is reported at once, with file, SLO and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"{path}: cannot read: {e.strerror or e}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), [f"{path}{where}: not valid YAML: {problem}"]) from None
    return parse_config(raw, source=str(path))
