"""Which workloads run on this node, and where their cgroups are: the writer's view of its node.

The writer core builds one :class:`Discovery` at start-up, calls ``start`` with
a callback, and on every push (and every callback) takes a ``snapshot()`` to
find the cgroups the push's group selectors pick out. Two implementations:

* :class:`LocalDiscovery` - without Kubernetes: a fixed list of named cgroup
  directories with labels, from the writer's config file.
* :class:`KubernetesDiscovery` - the pods of this node from the API server:
  one list, then one watch, both with ``field_selector=spec.nodeName=<node>``
  and a label selector narrowing to the HP/LP groups, kept in a cache by a
  daemon thread. Every change to the cache calls ``on_change()`` so the writer
  applies current targets to a new LP pod at once instead of at the next push.

Roles: a workload matching the HP selector is ``"hp"``, else one matching the
LP selector is ``"lp"``, else ``"other"``. HP wins when both match, because
throttling a protected service is the one mistake the writer must not make.
Labels are set by whoever deploys a pod, so the writer's config may restrict
the roles to namespaces (``hp_namespaces`` / ``lp_namespaces``): a pod in
another namespace that labels itself HP is not HP (an LP pod claiming HP stays
LP), one labelled LP is not LP (the writer never limits it), and the
workload's ``note`` says why, for ``/status``.
Selectors are equality selectors (all pairs must match) and must not be empty:
an empty selector would match every pod on the node.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from writer.api import LabelKey, LabelValue
from writer.cgroup_paths import CgroupPathError, Driver, QosClass, detect_driver, join_resolved, pod_cgroup_dir

__all__ = [
    "Role",
    "Workload",
    "Discovery",
    "matches",
    "role_of",
    "namespaced_role",
    "server_label_selector",
    "LocalEntry",
    "LocalDiscovery",
    "KubernetesDiscovery",
    "PodApi",
    "PodWatch",
    "DEFAULT_HP_SELECTOR",
    "DEFAULT_LP_SELECTOR",
]

_log = logging.getLogger(__name__)

Role = Literal["hp", "lp", "other"]
DEFAULT_HP_SELECTOR: Mapping[str, str] = MappingProxyType({"group-id": "hp"})
DEFAULT_LP_SELECTOR: Mapping[str, str] = MappingProxyType({"group-id": "lp"})

_SELECTOR = TypeAdapter(Annotated[dict[LabelKey, LabelValue], Field(min_length=1)])
_QOS: Mapping[str, QosClass] = MappingProxyType(
    {"Guaranteed": "guaranteed", "Burstable": "burstable", "BestEffort": "besteffort"}
)
#: A static pod's cgroup is named after the kubelet's config hash, which its mirror pod carries here.
_MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
_HTTP_GONE = 410


@dataclass(frozen=True)
class Workload:
    """One pod (or local cgroup) on this node that the writer may act on."""

    name: str
    namespace: str | None
    uid: str | None
    labels: Mapping[str, str]
    cgroup_dir: Path
    role: Role
    #: Why the role differs from what the labels claim (a role refused outside its namespaces).
    note: str | None = None


def namespaced_role(
    labels: Mapping[str, str],
    namespace: str | None,
    hp_selector: Mapping[str, str],
    lp_selector: Mapping[str, str],
    *,
    hp_namespaces: Collection[str] | None = None,
    lp_namespaces: Collection[str] | None = None,
) -> tuple[Role, str | None]:
    """:func:`role_of`, with each role honoured only in its namespaces (``None`` = any); plus why not."""
    role = role_of(labels, hp_selector, lp_selector)
    note = None
    if role == "hp" and hp_namespaces is not None and namespace not in hp_namespaces:
        role = "lp" if matches(labels, lp_selector) else "other"
        note = f"labelled high-priority outside hp_namespaces {sorted(hp_namespaces)}: not protected, treated as {role}"
    if role == "lp" and lp_namespaces is not None and namespace not in lp_namespaces:
        note = (note + "; " if note else "") + f"outside lp_namespaces {sorted(lp_namespaces)}: not low-priority"
        role = "other"
    return role, note


class Discovery(Protocol):
    """What the writer core needs from pod discovery."""

    def snapshot(self) -> list[Workload]:
        """The workloads on this node now; never raises."""
        ...

    def start(self, on_change: Callable[[], None]) -> None:
        """Begin keeping current; ``on_change`` is called (from another thread) after each change."""
        ...

    def stop(self) -> None:
        """Stop keeping current; idempotent."""
        ...


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """True if ``labels`` has every key of the equality ``selector`` with the same value."""
    return all(key in labels and labels[key] == value for key, value in selector.items())


def role_of(labels: Mapping[str, str], hp_selector: Mapping[str, str], lp_selector: Mapping[str, str]) -> Role:
    """``"hp"`` beats ``"lp"`` beats ``"other"`` (see the module docstring for why HP wins)."""
    if matches(labels, hp_selector):
        return "hp"
    if matches(labels, lp_selector):
        return "lp"
    return "other"


def server_label_selector(hp_selector: Mapping[str, str], lp_selector: Mapping[str, str]) -> str:
    """One Kubernetes label selector that every HP or LP pod satisfies (a superset of the union).

    A label selector is a conjunction, so "HP or LP" cannot be said exactly in
    one; rather than run two watches, keep the keys both selectors share:
    ``key=value`` where they agree, ``key in (a,b)`` where they differ. Keys
    only one side has are checked on our side with :func:`matches`. With the
    default selectors this is ``group-id in (hp,lp)``; with no shared key it is
    empty, and all pods of the node are listed (a node holds at most a few
    hundred, so that stays cheap).
    """
    parts = []
    for key in sorted(hp_selector.keys() & lp_selector.keys()):
        hp, lp = hp_selector[key], lp_selector[key]
        parts.append(f"{key}={hp}" if hp == lp else f"{key} in ({','.join(sorted((hp, lp)))})")
    return ",".join(parts)


def _check_selector(selector: Mapping[str, str], what: str) -> Mapping[str, str]:
    try:
        return MappingProxyType(_SELECTOR.validate_python(dict(selector)))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'selector'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{what} selector {dict(selector)!r} is invalid (non-empty, Kubernetes label syntax): {problems}") from None


# --------------------------------------------------------------------------- local mode


def _check_relative_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or "\x00" in path or ".." in parts:
        raise ValueError(f"path {path!r} must be relative to the cgroup hierarchy root, without '..' or NUL")
    if os.path.normpath(path) == ".":
        raise ValueError(f"path {path!r} names the hierarchy root itself, not a cgroup below it")
    return path


class LocalEntry(BaseModel):
    """One named cgroup of the writer's ``discovery.local`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(min_length=1, max_length=253)]
    #: Relative to the io (v2) or blkio (v1) hierarchy root, e.g. ``drcio-demo/lp``.
    path: Annotated[str, Field(max_length=4096), AfterValidator(_check_relative_path)]
    labels: dict[LabelKey, LabelValue] = {}


class LocalDiscovery:
    """Discovery from a fixed list: the entries whose cgroup directory exists now."""

    def __init__(
        self,
        entries: Sequence[LocalEntry],
        *,
        hierarchy_root: Path,
        hp_selector: Mapping[str, str] = DEFAULT_HP_SELECTOR,
        lp_selector: Mapping[str, str] = DEFAULT_LP_SELECTOR,
    ) -> None:
        names = [e.name for e in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"local discovery entry names must be unique, repeated: {', '.join(dupes)}")
        self._entries = tuple(entries)
        self._root = hierarchy_root
        self._hp = _check_selector(hp_selector, "HP")
        self._lp = _check_selector(lp_selector, "LP")

    def snapshot(self) -> list[Workload]:
        found = []
        root = self._root.resolve()  # once per snapshot, not once per entry
        for entry in self._entries:
            try:
                cgroup_dir = join_resolved(root, entry.path)
            except CgroupPathError as exc:
                # A symlink planted in the tree must not turn into a write outside it.
                _log.error("local discovery: skipping %r: %s", entry.name, exc)
                continue
            if not cgroup_dir.is_dir():
                # Local cgroups come and go with the processes that own them; not an error.
                _log.debug("local discovery: %r has no directory %s now", entry.name, cgroup_dir)
                continue
            labels = MappingProxyType(dict(entry.labels))
            found.append(Workload(entry.name, None, None, labels, cgroup_dir, role_of(labels, self._hp, self._lp)))
        return found

    def start(self, on_change: Callable[[], None]) -> None:
        """Nothing to watch: the list is fixed and ``snapshot`` looks at the tree each time."""

    def stop(self) -> None:
        """Nothing to stop."""


# --------------------------------------------------------------------------- Kubernetes mode


class PodApi(Protocol):
    """The two ``CoreV1Api`` calls discovery makes."""

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any: ...

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any: ...


class PodWatch(Protocol):
    """What discovery uses of ``kubernetes.watch.Watch``."""

    def stream(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterable[Mapping[str, Any]]: ...

    def stop(self) -> None: ...


class _WatchExpired(Exception):
    """The watch's resource version is too old (410 Gone): relist, no back-off."""


@dataclass(frozen=True)
class _Pod:
    """What the cache keeps of a pod: enough to compare for changes and to place its cgroup."""

    name: str
    namespace: str | None
    uid: str
    cgroup_uid: str
    qos: QosClass
    labels: Mapping[str, str]
    role: Role
    note: str | None = None


def _backoff_delay(attempt: int, *, initial_seconds: float, max_seconds: float) -> float:
    """Exponential back-off after ``attempt`` consecutive failures (0 = the first), capped."""
    return float(min(max_seconds, initial_seconds * 2 ** min(attempt, 32)))


class KubernetesDiscovery:
    """The HP/LP pods of one node, from a list then a watch of the API server.

    ``api`` is a ``kubernetes.client.CoreV1Api`` (or anything with its two
    list calls); ``watch_factory`` makes the watch objects (default ``kubernetes.watch.Watch``).
    Both are injected so tests run against recorded pods and scripted events.

    The loop, on a daemon thread: list (remember the resource version), watch
    from it; a watch ending normally (server timeout) resumes from the last
    version seen; 410 Gone relists at once; any other error is logged, waits
    an exponential back-off and relists. ``stop()`` interrupts the wait and
    the watch.

    Pods are kept when Running, on this node, with a uid, without a deletion
    timestamp, and matching the HP or LP selector. Their cgroup directory is
    placed when ``snapshot()`` is called, so a driver that cannot be detected
    yet (no ``kubepods`` in the tree) is retried instead of losing pods. A
    missing directory is not filtered out here: the API is authoritative, and a
    wrong driver or cgroup root must show up as write errors, not as no pods.
    """

    def __init__(
        self,
        node_name: str,
        *,
        api: PodApi,
        hierarchy_root: Path,
        driver: Driver | None = None,
        hp_selector: Mapping[str, str] = DEFAULT_HP_SELECTOR,
        lp_selector: Mapping[str, str] = DEFAULT_LP_SELECTOR,
        namespace: str | None = None,
        hp_namespaces: Collection[str] | None = None,
        lp_namespaces: Collection[str] | None = None,
        watch_factory: Callable[[], PodWatch] | None = None,
        watch_timeout_seconds: int = 300,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        kubelet_cgroup_root: str = "/",
    ) -> None:
        if not node_name or "," in node_name or "=" in node_name:
            raise ValueError(f"node name {node_name!r} must be a non-empty Kubernetes node name")
        self._node = node_name
        self._api = api
        self._root = hierarchy_root
        self._driver = driver
        #: kubelet's --cgroup-root, under which it keeps kubepods.
        self._kubelet_root = kubelet_cgroup_root
        self._hp = _check_selector(hp_selector, "HP")
        self._lp = _check_selector(lp_selector, "LP")
        self._namespace = namespace
        self._hp_namespaces = None if hp_namespaces is None else frozenset(hp_namespaces)
        self._lp_namespaces = None if lp_namespaces is None else frozenset(lp_namespaces)
        if watch_factory is None:
            # Imported only here: the kubernetes client costs ~0.4 s at every start of a writer that
            # discovers locally (about 30 % of importing the writer, measured with -X importtime).
            import kubernetes.watch

            watch_factory = kubernetes.watch.Watch
        self._watch_factory = watch_factory
        #: Server-side watch timeout: the watch is renewed this often even when idle
        #: (5 min, like client-go's reflector; shorter wastes requests, longer hides dead connections).
        self._watch_timeout = watch_timeout_seconds
        self._backoff = (backoff_initial_seconds, backoff_max_seconds)
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}
        self._resource_version: str | None = None
        self._synced = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: PodWatch | None = None
        self._on_change: Callable[[], None] | None = None

    # -- what the API calls are sent with (public so the writer can report them in /status)

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self._node}"

    @property
    def label_selector(self) -> str:
        return server_label_selector(self._hp, self._lp)

    @property
    def has_synced(self) -> bool:
        """True once a list has succeeded; before that an empty snapshot means "not known yet"."""
        with self._lock:
            return self._synced

    # -- Discovery

    def snapshot(self) -> list[Workload]:
        with self._lock:
            pods = sorted(self._pods.values(), key=lambda p: (p.namespace or "", p.name))
        if not pods:
            return []
        driver = self._detect_driver()
        if driver is None:
            return []
        found = []
        for pod in pods:
            try:
                cgroup_dir = pod_cgroup_dir(self._root, pod.cgroup_uid, pod.qos, driver, cgroup_root=self._kubelet_root)
            except CgroupPathError as exc:
                _log.error("pod discovery: skipping %s/%s: %s", pod.namespace, pod.name, exc)
                continue
            found.append(Workload(pod.name, pod.namespace, pod.uid, pod.labels, cgroup_dir, pod.role, pod.note))
        return found

    def start(self, on_change: Callable[[], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("KubernetesDiscovery.start() called twice")
        self._on_change = on_change
        self._thread = threading.Thread(target=self._run, name=f"drcio-pod-watch-{self._node}", daemon=True)
        self._thread.start()

    def stop(self, *, join_timeout_seconds: float = 10.0) -> None:
        """Stop the watch thread and wait for it (bounded: a watch started in the same instant may
        only notice at its server timeout, and the thread is a daemon, so it never blocks exit)."""
        self._stopping.set()
        watch = self._watch
        if watch is not None:
            watch.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=join_timeout_seconds)

    # -- one list, one watch (public for tests and for a writer that wants a synchronous first sync)

    def relist(self) -> bool:
        """List this node's pods, replace the cache, return whether it changed (and notify if so)."""
        pod_list = self._list_call()(*self._list_args(), **self._selectors())
        fresh: dict[str, _Pod] = {}
        for item in pod_list.items or []:
            pod = self._to_pod(item)
            if pod is not None:
                fresh[pod.uid] = pod
        with self._lock:
            changed = fresh != self._pods
            self._pods = fresh
            self._resource_version = pod_list.metadata.resource_version if pod_list.metadata else None
            self._synced = True
        if changed:
            self._notify()
        return changed

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        attempt = 0
        need_list = True
        while not self._stopping.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                self._watch_once()
                attempt = 0
            except _WatchExpired:
                _log.info("pod watch on %s: resource version expired (410), relisting", self._node)
                need_list = True
            except ApiException as exc:
                if exc.status == _HTTP_GONE:
                    _log.info("pod watch on %s: resource version expired (410), relisting", self._node)
                    need_list = True
                    continue
                attempt = self._back_off(attempt, f"API error {exc.status} {exc.reason}")
                need_list = True
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any client or network error
                attempt = self._back_off(attempt, f"{type(exc).__name__}: {exc}")
                need_list = True
        _log.debug("pod watch on %s stopped", self._node)

    def _back_off(self, attempt: int, reason: str) -> int:
        delay = _backoff_delay(attempt, initial_seconds=self._backoff[0], max_seconds=self._backoff[1])
        _log.warning("pod discovery on %s failed (%s); relisting in %.1f s", self._node, reason, delay)
        self._stopping.wait(delay)
        return attempt + 1

    def _watch_once(self) -> None:
        watch = self._watch_factory()
        self._watch = watch
        if self._stopping.is_set():  # stop() ran before this watch existed
            return
        kwargs = {
            **self._selectors(),
            "resource_version": self._resource_version,
            "timeout_seconds": self._watch_timeout,
            "allow_watch_bookmarks": True,
        }
        for event in watch.stream(self._list_call(), *self._list_args(), **kwargs):
            if self._stopping.is_set():
                break
            self._handle(event)

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if kind == "ERROR":
            raw = event.get("raw_object", obj)
            code = raw.get("code") if isinstance(raw, Mapping) else None
            if code == _HTTP_GONE:
                raise _WatchExpired()
            raise RuntimeError(f"watch error event: {raw!r}")
        if kind == "BOOKMARK":
            self._remember_version(obj)
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED") or obj is None or obj.metadata is None:
            _log.warning("pod watch on %s: ignoring unexpected event %r", self._node, kind)
            return
        self._remember_version(obj)
        pod = None if kind == "DELETED" else self._to_pod(obj)
        uid = obj.metadata.uid
        with self._lock:
            before = self._pods.get(uid)
            if pod is None:
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = pod
        if before != pod:
            self._notify()

    def _remember_version(self, obj: Any) -> None:
        if isinstance(obj, Mapping):
            version = (obj.get("metadata") or {}).get("resourceVersion")
        else:
            version = getattr(getattr(obj, "metadata", None), "resource_version", None)
        if version:
            with self._lock:
                self._resource_version = str(version)

    def _to_pod(self, item: Any) -> _Pod | None:
        meta, spec, status = item.metadata, item.spec, item.status
        if meta is None or not meta.uid or meta.deletion_timestamp is not None:
            return None
        if status is None or status.phase != "Running":
            return None
        if spec is not None and spec.node_name not in (None, self._node):
            # The field selector already did this; a pod reported for another node is never ours.
            return None
        labels = MappingProxyType(dict(meta.labels or {}))
        role, note = namespaced_role(
            labels, meta.namespace, self._hp, self._lp, hp_namespaces=self._hp_namespaces, lp_namespaces=self._lp_namespaces
        )
        if role == "other" and note is None:
            return None  # kept with a note: /status shows whose claim was refused
        qos = _QOS.get(status.qos_class or "")
        if qos is None:
            _log.warning("pod %s/%s: unknown QoS class %r, skipped", meta.namespace, meta.name, status.qos_class)
            return None
        annotations = meta.annotations or {}
        return _Pod(
            name=meta.name,
            namespace=meta.namespace,
            uid=meta.uid,
            cgroup_uid=annotations.get(_MIRROR_ANNOTATION) or meta.uid,
            qos=qos,
            labels=labels,
            role=role,
            note=note,
        )

    def _detect_driver(self) -> Driver | None:
        if self._driver is None:
            try:
                self._driver = detect_driver(self._root, cgroup_root=self._kubelet_root)
            except CgroupPathError as exc:
                _log.error("pod discovery on %s: %s", self._node, exc)
                return None
        return self._driver

    def _notify(self) -> None:
        callback = self._on_change
        if callback is None:
            return
        try:
            callback()
        except Exception:  # noqa: BLE001 - a failing callback must not kill the watch
            _log.exception("pod discovery on %s: on_change callback failed", self._node)

    def _list_call(self) -> Callable[..., Any]:
        if self._namespace is None:
            return self._api.list_pod_for_all_namespaces
        return self._api.list_namespaced_pod

    def _list_args(self) -> tuple[str, ...]:
        return () if self._namespace is None else (self._namespace,)

    def _selectors(self) -> dict[str, str]:
        selectors = {"field_selector": self.field_selector}
        if self.label_selector:
            selectors["label_selector"] = self.label_selector
        return selectors
