"""One Prometheus request per tick for all SLOs, instead of two per SLO.

:class:`PrometheusSensor` asks two instant queries per SLO (the HP request
rate, then the quantile): 200 HTTP round trips per tick for 100 SLOs, each
paying the client's and Prometheus' per-request cost. :class:`BatchedPrometheusSensor`
sends all of a tick's queries as ONE instant query: every query is wrapped in
``label_replace(<query>, "drcio_query", "<i>", "", "")`` and the wrapped
queries are joined with ``or``. The label keeps the answers apart (``or``
keeps every series of both sides whose label sets differ, and the ``i``
differ), so each query's own series come back exactly as they would alone:
empty stays empty, NaN stays NaN, two series stay two series (and are then
refused, as alone). The per-SLO classification (``ok`` / ``no_data`` /
``sensor_error``) is :class:`PrometheusSensor`'s, unchanged: this class only
answers its ``_single_value`` from the batch.

The batch is fetched on the first read of a tick (a new evaluation time) and
serves every SLO's reads at that time. It holds every SLO's rate and quantile
query from the start, and any other query the per-SLO logic has asked once
(the scrape-health and series-presence checks), so from the second tick on a
tick is one request whatever the sensor checks. If the batch itself fails (a raw
``query:`` with a syntax error fails the whole expression, Prometheus down),
each query is asked alone, so one bad SLO cannot blind the others and every
error is reported against the SLO that caused it; but not when Prometheus
could not be reached or did not answer in time (``unreachable``, ``timeout``,
``tls``): then every read of that tick fails at once with the same error,
so a blackholed Prometheus costs a tick one deadline, not one per query and
SLO (the fail-safe counts ticks, so it must not be slowed either). The batched expression
goes through the same client, deadline and answer checks as a single query
(about 40 KB of URL for 100 SLOs; Prometheus accepts up to 1 MB).

Measured against the real Prometheus by ``benchmarks/scale.py`` (README, "Scale").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_api_client import PrometheusConnect

from controller.config import PrometheusConfig, SloConfig
from controller.errors import SensorError
from controller.sensor import PrometheusSensor, _make_client, quantile_query, rate_query

__all__ = ["BatchedPrometheusSensor", "batch_query", "BATCH_LABEL"]

log = logging.getLogger(__name__)

#: The label that tells the batched answers apart.
BATCH_LABEL = "drcio_query"
#: Sensor error reasons that mean Prometheus was not reached this tick (not that one query was bad).
UNREACHED = frozenset({"unreachable", "timeout", "tls"})


def batch_query(queries: Sequence[str]) -> str:
    """One PromQL expression whose series are those of every query, labelled ``drcio_query="<index>"``."""
    return " or ".join(f'label_replace(({q}), "{BATCH_LABEL}", "{i}", "", "")' for i, q in enumerate(queries))


class BatchedPrometheusSensor(PrometheusSensor):
    """A :class:`PrometheusSensor` that reads every SLO of a tick with one request."""

    #: More distinct queries than this are not batched (a config whose queries change every tick).
    MAX_BATCHED = 2000

    def __init__(
        self,
        config: PrometheusConfig,
        slos: Sequence[SloConfig],
        *,
        client_factory: Callable[[PrometheusConfig], PrometheusConnect] = _make_client,
    ) -> None:
        super().__init__(config, client_factory=client_factory)
        # Known from the start: every SLO's rate and quantile query. Any other query the
        # per-SLO logic asks (health checks, presence checks) is learnt on first use and
        # batched from the next tick on.
        self.queries: dict[str, None] = {}
        for slo in slos:
            rq = rate_query(slo)
            for q in ([rq] if rq is not None else []) + [quantile_query(slo)]:
                self.queries[q] = None
        self._at: float | None = None
        self._answers: dict[str, list[dict[str, Any]]] = {}
        #: This tick's transport failure, if any: every later read of the tick fails with it, unsent.
        self._down: SensorError | None = None
        #: HTTP requests sent to Prometheus so far (for the benchmark and tests).
        self.requests = 0

    def _instant(self, query: str, at: float) -> list[dict[str, Any]]:
        if self._at != at:
            self._at = at
            self._down = None
            self._answers = self._batch(at)
        if self._down is not None:
            raise SensorError(self._down.reason, str(self._down))
        answer = self._answers.get(query)
        if answer is not None:
            return answer
        if len(self.queries) < self.MAX_BATCHED:
            self.queries[query] = None
        return self._ask(query, at)

    def _ask(self, query: str, at: float) -> list[dict[str, Any]]:
        """One request; a transport failure is remembered for the rest of the tick."""
        self.requests += 1
        try:
            return super()._instant(query, at)
        except SensorError as e:
            if e.reason in UNREACHED:
                self._down = e
            raise

    def _batch(self, at: float) -> dict[str, list[dict[str, Any]]]:
        """Every known query's series at ``at`` in one request; empty (ask one by one) if that fails."""
        queries = list(self.queries)
        if len(queries) < 2:
            return {}
        try:
            return self._split(queries, self._ask(batch_query(queries), at))
        except SensorError as e:
            if self._down is None:
                log.info("batched query failed (%s); asking each query alone this tick", e)
            return {}

    @staticmethod
    def _split(queries: list[str], series: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        by_query: dict[str, list[dict[str, Any]]] = {q: [] for q in queries}
        for s in series:
            metric = s.get("metric")
            i = metric.pop(BATCH_LABEL, None) if isinstance(metric, dict) else None
            if not isinstance(i, str) or not i.isdigit() or int(i) >= len(queries):
                raise SensorError("bad_answer", f"batched answer has a series without a valid {BATCH_LABEL} label")
            by_query[queries[int(i)]].append(s)
        return by_query
