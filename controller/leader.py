"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that of the controller's
replicas exactly one pushes.

Wired by the CLI (``drcio-controller --leader-elect``): a :class:`LeaderElector`
runs in a thread and renews or tries to acquire the Lease every
``retry_period``; :class:`LeaderGatedPusher` wraps the real pusher and pushes
only while :meth:`LeaderElector.is_leader` holds. A standby keeps reading and
stepping, but what its policies conclude comes from a plant the leader drives
(an AIMD standby sees only headroom and opens to 1). So ``on_elected`` makes
the next tick start the policies afresh from the level the writers hold
(:meth:`controller.loop.Controller.take_over`), and a tick the election lands
in pushes nothing: the take-over is bumpless.

The rules follow client-go's leaderelection, with the same parameters:

* A replica that does not hold the Lease judges it expired by its **own**
  monotonic clock: ``lease_duration`` after it last *saw the record change*,
  never by comparing the holder's ``renewTime`` with its own wall clock (the
  two clocks may disagree). So a standby takes over at most
  ``lease_duration + retry_period`` after the leader's last renewal.
* The leader stops pushing if it could not renew for ``renew_deadline``
  (< ``lease_duration``): it steps down before any standby may take over, so
  two replicas never push at once as long as clocks *run* at the same rate.
* A leader that stops (SIGTERM on a rollout) releases the Lease, so the
  standby takes over at its next round rather than after lease_duration.
* Writes are optimistic: a replace carries the ``resourceVersion`` read, and
  the API server's 409 means someone else won this round.

Generations stay monotonic across leaders: the leader writes the generation it
last pushed into the Lease's annotation ``drcio.io/generation`` at every
renewal; a new leader starts above it plus ``renew_deadline`` in milliseconds
(the most the old leader's wall-clock-millisecond generations can have grown
after its last renewal before it stepped down).

Only this module talks to the coordination API; the API object is injected
(``kubernetes.client.CoordinationV1Api`` in production, a fake in tests).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.push import InForce, Pusher, PushResult
from writer.api import TargetsPush

__all__ = ["ElectionConfig", "LeaseApi", "LeaderElector", "LeaderGatedPusher", "GENERATION_ANNOTATION", "push_gate"]

log = logging.getLogger(__name__)

GENERATION_ANNOTATION = "drcio.io/generation"


class LeaseApi(Protocol):
    """The three calls of ``kubernetes.client.CoordinationV1Api`` the elector uses."""

    def read_namespaced_lease(self, name: str, namespace: str) -> Any: ...

    def create_namespaced_lease(self, namespace: str, body: Any) -> Any: ...

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any) -> Any: ...


@dataclass(frozen=True)
class ElectionConfig:
    """Lease timing, as client-go names it.

    lease_duration: how long a standby waits, after it last saw the Lease
        change, before it takes over. 15 s (client-go's default): long enough
        to ride out an API-server hiccup, short next to the writers' lease
        (>= 15 s, default 6 intervals), so a controller failover does not drop
        the node writers into their fail-safe.
    renew_deadline: the leader steps down when it could not renew for this
        long; must be below lease_duration (10 s).
    retry_period: how often every replica renews or tries to acquire (2 s).
    """

    name: str = "drcio-controller"
    namespace: str = "drcio-system"
    identity: str = ""
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity (the pod name, POD_NAME)")
        if not 0 < self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class LeaderElector:
    """Acquire and renew one Lease; see the module docstring for the rules.

    ``monotonic`` times expiry and deadlines; ``wall`` only stamps
    ``acquireTime``/``renewTime`` for humans (``kubectl get lease``).
    """

    def __init__(
        self,
        api: LeaseApi,
        config: ElectionConfig,
        *,
        generation: Callable[[], int] = lambda: 0,
        on_elected: Callable[[int], None] = lambda floor: None,
        on_change: Callable[[bool], None] = lambda leader: None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.config = config
        self._generation = generation
        self._on_elected = on_elected
        self._on_change = on_change
        self._monotonic = monotonic
        self._wall = wall
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self._leader = False
        self._lock = threading.Lock()

    # -- state ------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while this replica holds the Lease and renewed it within renew_deadline."""
        with self._lock:
            if self._renewed_at is None:
                return False
            return self._monotonic() - self._renewed_at < self.config.renew_deadline_seconds

    # -- one round ----------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, renew or take it if allowed. Returns whether we lead now."""
        now = self._monotonic()
        try:
            leader = self._round(now)
        except Exception as e:  # API errors of any kind: this round failed; deadlines decide the rest
            log.warning("leader election: %s: %s", type(e).__name__, e)
            leader = False
        if leader:
            with self._lock:
                self._renewed_at = now
        self._set_leader(self.is_leader())
        return self.is_leader()

    def _round(self, now: float) -> bool:
        from kubernetes.client import ApiException

        c = self.config
        try:
            lease = self.api.read_namespaced_lease(c.name, c.namespace)
        except ApiException as e:
            if _status(e) != 404:
                raise
            return self._create(now)
        spec = lease.spec
        holder = spec.holder_identity if spec is not None else None
        record = (holder, spec.renew_time if spec is not None else None, lease.metadata.resource_version)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder and holder != c.identity and now - self._observed_at < c.lease_duration_seconds:
            return False  # someone else holds a lease that has not expired by our clock
        return self._update(lease, taking_over=holder != c.identity, now=now)

    def _stamp(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._wall(), tz=dt.timezone.utc)

    def _create(self, now: float) -> bool:
        from kubernetes.client import ApiException, V1Lease, V1LeaseSpec, V1ObjectMeta

        c = self.config
        stamp = self._stamp()
        body = V1Lease(
            metadata=V1ObjectMeta(name=c.name, namespace=c.namespace,
                                  annotations={GENERATION_ANNOTATION: str(self._generation())}),
            spec=V1LeaseSpec(holder_identity=c.identity, lease_duration_seconds=int(c.lease_duration_seconds),
                             acquire_time=stamp, renew_time=stamp, lease_transitions=0),
        )
        try:
            created = self.api.create_namespaced_lease(c.namespace, body)
        except ApiException as e:
            if _status(e) == 409:  # another replica created it first
                return False
            raise
        self._observed = (c.identity, created.spec.renew_time, created.metadata.resource_version)
        self._observed_at = now
        self._elected(0)
        return True

    def _update(self, lease: Any, *, taking_over: bool, now: float) -> bool:
        from kubernetes.client import ApiException

        c = self.config
        annotations = dict(lease.metadata.annotations or {})
        previous = _int(annotations.get(GENERATION_ANNOTATION))
        stamp = self._stamp()
        spec = lease.spec
        if taking_over:
            spec.acquire_time = stamp
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = c.identity
        spec.renew_time = stamp
        spec.lease_duration_seconds = int(c.lease_duration_seconds)
        annotations[GENERATION_ANNOTATION] = str(max(self._generation(), previous))
        lease.metadata.annotations = annotations
        try:
            updated = self.api.replace_namespaced_lease(c.name, c.namespace, lease)
        except ApiException as e:
            if _status(e) == 409:  # changed since we read it: someone else won this round
                return False
            raise
        self._observed = (c.identity, updated.spec.renew_time, updated.metadata.resource_version)
        self._observed_at = now
        if taking_over or not self._leader:
            self._elected(previous + int(c.renew_deadline_seconds * 1000) + 1 if previous else 0)
        return True

    def _elected(self, floor: int) -> None:
        log.info("leader election: %s now holds lease %s/%s (generation floor %d)",
                 self.config.identity, self.config.namespace, self.config.name, floor)
        self._on_elected(floor)

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            if not leader:
                log.warning("leader election: %s lost or could not renew the lease; pushing stops",
                            self.config.identity)
            self._leader = leader
            self._on_change(leader)

    def release(self) -> None:
        """Give the Lease up on shutdown (client-go's ReleaseOnCancel), so a standby takes over at its
        next round instead of after lease_duration. Best effort: a failure just means the standby waits."""
        from kubernetes.client import ApiException

        c = self.config
        with self._lock:
            self._renewed_at = None
        self._set_leader(False)
        try:
            lease = self.api.read_namespaced_lease(c.name, c.namespace)
            if lease.spec is None or lease.spec.holder_identity != c.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = self._stamp()
            annotations = dict(lease.metadata.annotations or {})
            annotations[GENERATION_ANNOTATION] = str(max(self._generation(), _int(annotations.get(GENERATION_ANNOTATION))))
            lease.metadata.annotations = annotations
            self.api.replace_namespaced_lease(c.name, c.namespace, lease)
            log.info("leader election: %s released the lease", c.identity)
        except (ApiException, OSError) as e:
            log.warning("leader election: releasing the lease failed (%s); the standby waits for it to expire", e)

    # -- the thread ---------------------------------------------------------------------

    def run(self, stop: threading.Event, *, wait: Callable[[float], object] | None = None) -> None:
        """Renew or try to acquire every retry_period until ``stop`` is set."""
        sleep = wait if wait is not None else stop.wait
        while not stop.is_set():
            self.try_acquire_or_renew()
            sleep(self.config.retry_period_seconds)
        self.release()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="leader-election", daemon=True)
        thread.start()
        return thread


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def push_gate(is_leader: Callable[[], bool], take_over_pending: Callable[[], bool]) -> Callable[[], bool]:
    """Whether a push may go out now: this replica leads, and no take-over waits for the next tick.

    The elector requests the take-over (:func:`controller.cli.build_elector`'s ``elected``) before it
    counts as leader (``_renewed_at`` is set after the round). Asking ``is_leader`` first and the pending
    take-over second therefore never sees a replica that leads without seeing its take-over: a tick whose
    policies ran as a standby cannot push their levels, however the elector's thread interleaves with it.
    """
    return lambda: is_leader() and not take_over_pending()


class LeaderGatedPusher:
    """Pushes through ``inner`` only while ``is_leader()``; a standby pushes nothing."""

    def __init__(self, inner: Pusher, is_leader: Callable[[], bool]) -> None:
        self.inner = inner
        self.is_leader = is_leader

    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        if not self.is_leader():
            return []
        return self.inner.push(writers, body)

    def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
        return self.inner.read_in_force(writers, deadline_seconds)  # reading changes nothing: a standby may


def in_cluster_lease_api() -> LeaseApi:
    """``CoordinationV1Api`` with the pod's service account (or the local kubeconfig outside a cluster)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api: LeaseApi = client.CoordinationV1Api()
    return api
