"""A fake of ``kubernetes.dynamic.DynamicClient``, the boundary of the kubernetes backend.

There is no API server here. This keeps what the backend relies on from the
real client: ``resources.get(api_version=, kind=)`` returns a resource whose
unknown attributes call the client with the resource first (the real
``Resource.__getattr__``); ``get`` returns an instance with ``to_dict()``;
``patch`` with ``application/merge-patch+json`` merges (RFC 7386) into the
stored object, with ``application/strategic-merge-patch+json`` also merges
lists of named objects (containers, env) by name; ``server_side_apply`` stores the applied object; a missing
object is a 404 ``NotFoundError``-like exception. Workload status is what a
cluster's controllers would report: ready after ``ready_after`` reads (before
that, a Deployment looks mid-rollout: old pods ready, new ones not).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

from kubernetes.client import ApiException


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 JSON merge patch; ``strategic``: lists of objects with a ``name`` merge by name,
    as the API server's strategic merge does for containers and env."""
    if strategic and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        out_list = [copy.deepcopy(i) for i in (target or [])]
        for item in patch:
            match = next((i for i, t in enumerate(out_list) if t.get("name") == item["name"]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = merge_patch(out_list[match], item, strategic=True)
        return out_list
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v, strategic=strategic)
    return out


class _Instance:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj = obj

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._obj)


class _Resource:
    def __init__(self, client: FakeDynamicClient, api_version: str, kind: str) -> None:
        self.client, self.api_version, self.kind = client, api_version, kind

    def __getattr__(self, name: str) -> Any:
        return partial(getattr(self.client, name), self)


class _Resources:
    def __init__(self, client: FakeDynamicClient) -> None:
        self.client = client

    def get(self, *, api_version: str, kind: str) -> _Resource:
        return _Resource(self.client, api_version, kind)


class FakeDynamicClient:
    def __init__(self, *, ready_after: int = 2) -> None:
        self.resources = _Resources(self)
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str | None, str, Any]] = []
        self.ready_after = ready_after
        self._reads: dict[tuple[str, str | None, str], int] = {}

    def server_side_apply(self, resource: _Resource, body: dict[str, Any], name: str, namespace: str | None,
                          field_manager: str, force_conflicts: bool) -> _Instance:
        assert field_manager and body["kind"] == resource.kind and body["apiVersion"] == resource.api_version
        self.calls.append(("apply", resource.kind, namespace, name, None))
        self.objects[(resource.kind, namespace, name)] = copy.deepcopy(body)
        return _Instance(body)

    def get(self, resource: _Resource, name: str, namespace: str | None) -> _Instance:
        key = (resource.kind, namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self._reads[key] = self._reads.get(key, 0) + 1
        obj = copy.deepcopy(self.objects[key])
        if self._reads[key] >= self.ready_after:
            if resource.kind == "DaemonSet":
                obj["status"] = {"desiredNumberScheduled": 3, "numberReady": 3}
            elif resource.kind == "Deployment":
                n = obj["spec"].get("replicas", 1)
                obj["status"] = {"replicas": n, "updatedReplicas": n, "readyReplicas": n}
        elif resource.kind == "DaemonSet":
            obj["status"] = {"desiredNumberScheduled": 3, "numberReady": 1}
        elif resource.kind == "Deployment":  # mid-rollout: the old pods are still ready, the new ones are not
            n = obj["spec"].get("replicas", 1)
            obj["status"] = {"replicas": n + 1, "updatedReplicas": 1, "readyReplicas": n}
        return _Instance(obj)

    def patch(self, resource: _Resource, body: dict[str, Any], name: str, namespace: str | None,
              content_type: str) -> _Instance:
        assert content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json")
        key = (resource.kind, namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self.calls.append(("patch", resource.kind, namespace, name, body))
        self.objects[key] = merge_patch(self.objects[key], body, strategic="strategic" in content_type)
        self._reads[key] = 0  # a changed workload rolls out again
        return _Instance(self.objects[key])
