"""The Prometheus sensor: one SLO's latency quantile at an explicit evaluation time.

Called once per SLO per tick by :class:`controller.loop.Controller`. It is the
only module that talks to Prometheus, through ``prometheus-api-client``, and
it reads strictly: the answer must be an instant vector with at most one
series and a finite, non-negative value. Everything else is classified:

* ``ok`` — a measurement (``latency_seconds`` is set);
* ``no_data`` — the HP series exists and Prometheus answered, but there is
  nothing to measure: fewer HP requests per second than the SLO's
  ``min_rate`` (a P95 of three requests is noise, not a measurement), or NaN
  from ``histogram_quantile`` over zero traffic;
* ``sensor_error`` — connection refused, timeout, HTTP error, bad query, an
  answer of the wrong shape, **an absent series** (an unknown metric name, a
  label typo: the quantile or count query returns an empty vector), the
  HP scrape job down (``up == 0`` for the SLO's labels), a window holding
  fewer than two scrapes of the series (``rate()`` cannot see the traffic:
  the series is new, or the window is shorter than two scrape intervals),
  or NaN from ``histogram_quantile`` while the request rate shows traffic.
  The reason names what is missing. drcio must never open LP up because it
  has gone blind: an absent series looks exactly like "no traffic" to a
  careless reader.

For an SLO whose policy gates on LP's use of its limit
(``SloConfig.uses_lp_utilisation``: the PID's ``gate_utilisation``), an OK
reading also carries ``lp_utilisation`` (:func:`lp_utilisation_query`, from the
writers' own metrics). It never changes the status: an empty answer (no LP
bandwidth limited, writers not scraped) is None, which the gate treats as "not
bound", and a failed query is None with ``lp_utilisation_error`` saying why.

``prometheus-api-client`` by default waits forever and retries for seconds;
here every query gets the configured deadline and a small retry policy that
only retries connection failures and 502/503/504, so a tick never overruns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import urllib3
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from controller.config import PrometheusConfig, SloConfig
from controller.errors import SensorError
from controller.tls import prometheus_auth, prometheus_session
from policies import SensorStatus
from writer.api import LP_IO_MAX_METRIC, LP_READ_BYTES_METRIC, LP_WRITE_BYTES_METRIC

__all__ = [
    "Reading", "Sensor", "PrometheusSensor", "quantile_query", "rate_query", "lp_utilisation_query", "CLIPPED_FACTOR",
]

log = logging.getLogger(__name__)

#: ``histogram_quantile`` answers +Inf when the quantile lies beyond the top
#: bucket: a certain violation of unknown size. It is reported as this many
#: times the target (and flagged ``clipped``), never as a finite guess.
CLIPPED_FACTOR = 10.0


@dataclass(frozen=True)
class Reading:
    """What the sensor saw for one SLO at one evaluation time."""

    status: SensorStatus
    latency_seconds: float | None
    request_rate: float | None = None
    error: str | None = None
    reason: str | None = None
    clipped: bool = False
    #: LP's use of its limit over the window (see ``policies.Observation.lp_utilisation``); None if not asked or unknown.
    lp_utilisation: float | None = None
    lp_utilisation_error: str | None = None


class Sensor(Protocol):
    """Anything that turns an SLO and a time into a Reading (real Prometheus, the simulator)."""

    def read(self, slo: SloConfig, at: float) -> Reading: ...


def _matchers(labels: Mapping[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items()))


def _window(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"


def quantile_query(slo: SloConfig) -> str:
    """The PromQL whose value is the SLO's latency in seconds."""
    if slo.query is not None:
        return slo.query
    return (
        f"histogram_quantile({slo.quantile}, sum by (le) "
        f"(rate({slo.metric}_bucket{{{_matchers(slo.labels)}}}[{_window(slo.window_seconds)}])))"
    )


def rate_query(slo: SloConfig) -> str | None:
    """The PromQL whose value is the HP request rate behind the quantile (None: not checked)."""
    if slo.query is not None:
        return slo.rate_query
    return f"sum(rate({slo.metric}_count{{{_matchers(slo.labels)}}}[{_window(slo.window_seconds)}]))"


def lp_utilisation_query(slo: SloConfig) -> str:
    """The PromQL whose value is LP's highest use of its ``io.max`` bandwidth over the SLO's window.

    Per LP cgroup of the SLO's group (the writers' per-workload, per-device
    metrics), per direction: bytes/s moved over the window divided by the
    limit's mean over the window; the maximum over all of them. Directions
    without a limit have no limit series and drop out of the division.
    """
    window = _window(slo.window_seconds)
    group = _matchers({"group": slo.throttle.group_name})
    parts = [
        f'label_replace(rate({metric}_total{{{group}}}[{window}]), "direction", "{direction}", "", "")'
        f' / avg_over_time({LP_IO_MAX_METRIC}{{{group},direction="{direction}"}}[{window}])'
        for direction, metric in (("read", LP_READ_BYTES_METRIC), ("write", LP_WRITE_BYTES_METRIC))
    ]
    return f"max({' or '.join(parts)})"


def _make_client(cfg: PrometheusConfig) -> PrometheusConnect:
    retry = Retry(
        total=cfg.retries,
        connect=cfg.retries,
        read=0,
        status=cfg.retries,
        backoff_factor=0.05,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),
        raise_on_status=False,
    )
    # TLS is always verified (prometheus.tls.ca_file for a private CA); credentials come
    # from files re-read on change (controller.tls).
    return PrometheusConnect(
        url=cfg.url, retry=retry, timeout=cfg.timeout_seconds, session=prometheus_session(cfg), auth=prometheus_auth(cfg)
    )


class PrometheusSensor:
    """Reads SLO latencies from a real Prometheus."""

    def __init__(
        self,
        config: PrometheusConfig,
        *,
        client_factory: Callable[[PrometheusConfig], PrometheusConnect] = _make_client,
    ) -> None:
        self.config = config
        self._client = client_factory(config)

    def _instant(self, query: str, at: float) -> list[dict[str, Any]]:
        try:
            result = self._client.custom_query(query, params={"time": f"{at:.3f}"}, timeout=self.config.timeout_seconds)
        except requests.exceptions.SSLError as e:
            verify = self.config.tls.ca_file if self.config.tls is not None and self.config.tls.ca_file else "the system trust store"
            reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(e) else _short(e)
            raise SensorError("tls", f"TLS with Prometheus at {self.config.url} failed ({reason}; verified against {verify})") from None
        except requests.exceptions.ConnectionError as e:
            if not _timed_out(e):
                raise SensorError("unreachable", f"Prometheus at {self.config.url} is unreachable: {_errno(e)}") from None
            # With the retry policy, requests reports a read timeout as a ConnectionError (max retries exceeded).
            raise SensorError(
                "timeout", f"Prometheus at {self.config.url} did not answer within {self.config.timeout_seconds}s"
            ) from None
        except requests.exceptions.Timeout:
            raise SensorError(
                "timeout", f"Prometheus at {self.config.url} did not answer within {self.config.timeout_seconds}s"
            ) from None
        except PrometheusApiClientException as e:
            raise SensorError("http_error", f"Prometheus rejected {query!r}: {_short(e)}") from None
        except requests.exceptions.RequestException as e:
            raise SensorError("http_error", f"request to Prometheus failed: {_short(e)}") from None
        except ValueError as e:  # JSON decoding
            raise SensorError("bad_answer", f"Prometheus answered something that is not JSON: {_short(e)}") from None
        except (KeyError, TypeError) as e:
            # prometheus-api-client reads response.json()["data"]["result"]: a 200 from something that is not
            # Prometheus' query API (a proxy's page, a wrong URL path) has no such keys.
            raise SensorError(
                "bad_answer", f"Prometheus at {self.config.url} answered 200 without data.result ({type(e).__name__}: {_short(e)})"
            ) from None
        if not isinstance(result, list) or not all(
            isinstance(s, dict) and isinstance(s.get("value"), list) and len(s["value"]) == 2 for s in result
        ):
            raise SensorError(
                "bad_answer", f"{query!r} must return an instant vector, got {type(result).__name__}: {str(result)[:120]}"
            )
        return result

    def _single_value(self, query: str, at: float) -> float | None:
        """The value of a one-series instant vector; None for an empty vector; NaN kept as NaN."""
        series = self._instant(query, at)
        if not series:
            return None
        if len(series) > 1:
            raise SensorError(
                "bad_answer",
                f"{query!r} returned {len(series)} series; it must return one (aggregate, e.g. with max(), for the worst)",
            )
        raw = series[0]["value"][1]
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise SensorError("bad_answer", f"{query!r} returned a non-numeric value {raw!r}") from None

    def _scrape_down(self, slo: SloConfig, at: float) -> str | None:
        """Why the HP scrape is failing, when ``up`` for the SLO's labels says so; else None.

        Only meaningful for metric SLOs: ``up`` carries the target labels
        (``job``, ``instance``, ...). Labels that are not target labels make
        the selector match nothing, which proves nothing and is ignored here
        (the absent-series check catches a real typo).
        """
        if slo.metric is None or not slo.labels:
            return None
        up = self._single_value(f"min(up{{{_matchers(slo.labels)}}})", at)
        if up is not None and up == 0:
            return f"HP scrape failing: up{{{_matchers(slo.labels)}}} == 0 (the target does not answer its scrape)"
        return None

    def _series_exists(self, slo: SloConfig, at: float) -> bool:
        """Whether the count series has a sample inside the window (fresh, not just within the 5 min lookback:
        a Prometheus killed and restarted keeps the old sample without a staleness marker)."""
        sel = f"{slo.metric}_count{{{_matchers(slo.labels)}}}[{_window(slo.window_seconds)}]"
        return self._single_value(f"count(count_over_time({sel}))", at) is not None

    def read(self, slo: SloConfig, at: float) -> Reading:
        try:
            down = self._scrape_down(slo, at)
            if down is not None:
                return Reading(SensorStatus.SENSOR_ERROR, None, error=down, reason="scrape_down")
            rate: float | None = None
            rq = rate_query(slo)
            if rq is not None:
                rate = self._single_value(rq, at)
                if rate is None and slo.metric is not None and self._series_exists(slo, at):
                    # Present, but rate() needs two samples in the window: a series scraped once so far, or a
                    # window shorter than two scrape intervals. Traffic cannot be told from none: blind, not idle.
                    return Reading(
                        SensorStatus.SENSOR_ERROR, None, reason="too_few_samples",
                        error=f"the HP request series has fewer than two samples in the {slo.window_seconds:g} s "
                              "window: new, or scraped less often than twice per window (make the window at least "
                              "twice the scrape interval)",
                    )
                if rate is None:
                    return Reading(
                        SensorStatus.SENSOR_ERROR, None, reason="absent",
                        error=f"no series for the HP request rate {rq!r}: unknown metric, label typo, or scrape down",
                    )
                if math.isinf(rate) or rate < 0:
                    return Reading(
                        SensorStatus.SENSOR_ERROR, None, reason="bad_answer",
                        error=f"the HP request rate {rq!r} returned {rate}, not a rate >= 0",
                    )
                if math.isnan(rate) or rate < slo.min_rate:
                    shown = "none" if math.isnan(rate) else f"{rate:.3g}/s"
                    return Reading(
                        SensorStatus.NO_DATA, None, request_rate=None if math.isnan(rate) else rate,
                        error=f"HP request rate {shown} is below min_rate {slo.min_rate}/s",
                    )
            qq = quantile_query(slo)
            value = self._single_value(qq, at)
        except SensorError as e:
            return Reading(SensorStatus.SENSOR_ERROR, None, error=str(e), reason=e.reason)
        if value is None:
            return Reading(
                SensorStatus.SENSOR_ERROR, None, request_rate=rate, reason="absent",
                error=f"no series for the HP latency quantile {qq!r}: unknown metric, label typo, or scrape down",
            )
        if math.isnan(value):
            if rate is not None and rate > 0:
                # The count says requests were served, the buckets say none were: not "nothing to measure".
                return Reading(
                    SensorStatus.SENSOR_ERROR, None, request_rate=rate, reason="bad_answer",
                    error=f"the HP latency quantile is NaN while the request rate is {rate:.3g}/s: "
                          f"the buckets do not match the count ({qq!r})",
                )
            return Reading(SensorStatus.NO_DATA, None, request_rate=rate, error="no HP latency samples in the window")
        if value < 0 or value == -math.inf:
            return Reading(
                SensorStatus.SENSOR_ERROR, None, error=f"negative latency {value} from {slo.name}'s query", reason="bad_answer"
            )
        if value == math.inf:
            return self._with_lp_utilisation(
                slo, at, Reading(SensorStatus.OK, slo.target_seconds * CLIPPED_FACTOR, request_rate=rate, clipped=True)
            )
        return self._with_lp_utilisation(slo, at, Reading(SensorStatus.OK, value, request_rate=rate))

    def _with_lp_utilisation(self, slo: SloConfig, at: float, reading: Reading) -> Reading:
        """``reading`` with LP's use of its limit, when the SLO's policy asks for it."""
        if not slo.uses_lp_utilisation:
            return reading
        query = lp_utilisation_query(slo)
        try:
            used = self._single_value(query, at)
        except SensorError as e:
            return dataclasses.replace(reading, lp_utilisation_error=str(e))
        if used is None:
            return reading
        if not (math.isfinite(used) and used >= 0):
            return dataclasses.replace(reading, lp_utilisation_error=f"{query!r} returned {used}, not a ratio >= 0")
        return dataclasses.replace(reading, lp_utilisation=used)


def _timed_out(e: requests.exceptions.ConnectionError) -> bool:
    """Whether a ConnectionError is a timeout: requests' ConnectTimeout, or urllib3's retries running out on a
    read timeout (not NewConnectionError, which urllib3 derives from its ConnectTimeoutError: a refusal)."""
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(e, requests.exceptions.Timeout) or isinstance(reason, urllib3.exceptions.ReadTimeoutError)


def _errno(e: BaseException) -> str:
    """The OS-level reason inside a requests ConnectionError (its text embeds the whole URL)."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
    return m.group(1).strip() if m else _short(e)


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:200] + "..."
