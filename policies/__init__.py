"""Pure control policies: observation in, LP allowance level in [0, 1] out. No I/O, no clock.

The controller builds one policy per SLO with :func:`build_policy` from the
parameters :func:`parse_params` validated, and calls ``step`` once per tick.
"""

from policies.aimd import AimdParams, AimdPolicy
from policies.base import FailSafe, FailSafeTracker, Observation, Policy, PolicyConfigError, SensorStatus, clamp_level
from policies.knee import KneeParams, KneePolicy
from policies.pid import PidParams, PidPolicy
from policies.registry import POLICY_KINDS, PolicyParams, build_policy, parse_params
from policies.static import StaticParams, StaticPolicy

__all__ = [
    "POLICY_KINDS",
    "AimdParams",
    "AimdPolicy",
    "FailSafe",
    "FailSafeTracker",
    "KneeParams",
    "KneePolicy",
    "Observation",
    "PidParams",
    "PidPolicy",
    "Policy",
    "PolicyConfigError",
    "PolicyParams",
    "SensorStatus",
    "StaticParams",
    "StaticPolicy",
    "build_policy",
    "clamp_level",
    "parse_params",
]
