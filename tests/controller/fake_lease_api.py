"""A fake of the API server's Lease endpoints, at the boundary the elector talks to.

There is no API server here, so this stands in for ``CoordinationV1Api`` with
the server's semantics that leader election relies on (Kubernetes API
conventions, "Concurrency Control and Consistency"):

* every write bumps ``metadata.resourceVersion``;
* a replace whose ``resourceVersion`` is not the stored one is refused with
  409 Conflict; a create of an existing name with 409 AlreadyExists;
* a read of a missing object is 404;
* callers get copies, never the stored object (as from JSON over the wire).

``fail_next`` makes the next N calls fail with 500/503 as an overloaded server would.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client import ApiException, V1Lease, V1LeaseSpec, V1ObjectMeta


def meta_of(lease: V1Lease) -> V1ObjectMeta:
    assert lease.metadata is not None, "a Lease without metadata"
    return lease.metadata


def spec_of(lease: V1Lease) -> V1LeaseSpec:
    assert lease.spec is not None, "a Lease without spec"
    return lease.spec


class FakeLeaseApi:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], V1Lease] = {}
        self._version = 100
        self.fail_next = 0
        self.calls: list[str] = []

    def _maybe_fail(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ApiException(status=503, reason="Service Unavailable")

    def read_namespaced_lease(self, name: str, namespace: str) -> V1Lease:
        self._maybe_fail("read")
        try:
            return copy.deepcopy(self.leases[(namespace, name)])
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def create_namespaced_lease(self, namespace: str, body: V1Lease) -> V1Lease:
        self._maybe_fail("create")
        key = (namespace, str(meta_of(body).name))
        if key in self.leases:
            raise ApiException(status=409, reason="AlreadyExists")
        stored = copy.deepcopy(body)
        self._version += 1
        meta_of(stored).resource_version = str(self._version)
        self.leases[key] = stored
        return copy.deepcopy(stored)

    def replace_namespaced_lease(self, name: str, namespace: str, body: V1Lease) -> V1Lease:
        self._maybe_fail("replace")
        key = (namespace, name)
        if key not in self.leases:
            raise ApiException(status=404, reason="Not Found")
        if meta_of(body).resource_version != meta_of(self.leases[key]).resource_version:
            raise ApiException(status=409, reason="Conflict")
        stored = copy.deepcopy(body)
        self._version += 1
        meta_of(stored).resource_version = str(self._version)
        self.leases[key] = stored
        return copy.deepcopy(stored)

    def holder(self, name: str = "drcio-controller", namespace: str = "drcio-system") -> Any:
        lease = self.leases.get((namespace, name))
        return spec_of(lease).holder_identity if lease is not None else None
