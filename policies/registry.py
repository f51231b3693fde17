"""Policies by name: parse a ``policy`` section of the SLO file and build the policy.

The controller's config loader calls exactly two functions:
:func:`parse_params` (validate ``{kind: ..., **params}`` once, when the file
is read) and :func:`build_policy` (make a fresh policy object per SLO).
Adding a policy means adding its params class and policy class to
``_KINDS``; nothing else here changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from policies.aimd import AimdParams, AimdPolicy
from policies.base import FailSafe, Policy, PolicyConfigError
from policies.knee import KneeParams, KneePolicy
from policies.pid import PidParams, PidPolicy
from policies.static import StaticParams, StaticPolicy

__all__ = ["POLICY_KINDS", "PolicyParams", "parse_params", "build_policy"]

PolicyParams: TypeAlias = PidParams | AimdParams | KneeParams | StaticParams

_KINDS: dict[str, tuple[type[Any], Callable[..., Policy]]] = {
    "pid": (PidParams, PidPolicy),
    "aimd": (AimdParams, AimdPolicy),
    "knee": (KneeParams, KneePolicy),
    "static": (StaticParams, StaticPolicy),
}

POLICY_KINDS: tuple[str, ...] = tuple(_KINDS)


def parse_params(kind: str, raw: Mapping[str, object]) -> PolicyParams:
    """Validate one policy section; raise one :class:`PolicyConfigError` listing every problem.

    ``raw`` holds the parameters; a ``kind`` key in it is tolerated if it
    agrees with ``kind`` (so the whole YAML mapping may be passed). Unknown,
    missing, ill-typed and out-of-range parameters are all reported together,
    each with what is allowed.
    """
    if kind not in _KINDS:
        raise PolicyConfigError(f"unknown policy kind {kind!r} (allowed: {', '.join(POLICY_KINDS)})")
    params_cls, _ = _KINDS[kind]
    fields = [f for f in dataclasses.fields(params_cls) if f.init]
    names = [f.name for f in fields]
    problems: list[str] = []
    given: dict[str, object] = {}
    for key, value in raw.items():
        if key == "kind":
            if value != kind:
                problems.append(f"kind {value!r} in the parameters contradicts kind {kind!r}")
        elif not isinstance(key, str) or key not in names:
            problems.append(f"unknown policy parameter {key!r} (allowed: {', '.join(names)})")
        else:
            given[key] = value
    for f in fields:
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and f.name not in given:
            problems.append(f"missing required parameter {f.name!r}")
    if not any(p.startswith("missing") for p in problems):
        try:
            params: PolicyParams = params_cls(**given)
        except PolicyConfigError as e:
            problems.extend(e.problems)
        else:
            if not problems:
                return params
    raise PolicyConfigError(f"{kind} policy: " + "; ".join(problems), problems)


def build_policy(params: PolicyParams, *, failsafe: FailSafe = FailSafe(), initial_level: float = 1.0) -> Policy:
    """A fresh policy for validated ``params`` (from :func:`parse_params` or built directly)."""
    for params_cls, policy_cls in _KINDS.values():
        if type(params) is params_cls:
            return policy_cls(params, failsafe=failsafe, initial_level=initial_level)
    raise PolicyConfigError(f"no policy for parameters of type {type(params).__name__}")
