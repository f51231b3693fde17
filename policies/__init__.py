"""Pure control policies: observation in, LP allowance level in [0, 1] out. No I/O, no clock."""

from policies.base import FailSafe, Observation, Policy, PolicyConfigError, SensorStatus

__all__ = ["FailSafe", "Observation", "Policy", "PolicyConfigError", "SensorStatus"]
