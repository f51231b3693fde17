"""drcio node writer: the only privileged part; writes LP cgroup I/O limits pushed by the controller."""
