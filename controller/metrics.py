"""The controller's Prometheus metrics, on its own registry.

Called by the loop after each tick. Names follow Prometheus conventions and
are what the dashboards and the experiments query; changing one is a
breaking change for them.

| metric | labels | meaning |
|---|---|---|
| ``drcio_controller_observed_latency_seconds`` | slo | last measured latency (absent while no_data / sensor_error) |
| ``drcio_controller_target_latency_seconds`` | slo | the SLO's target |
| ``drcio_controller_slo_level`` | slo | level the SLO's policy chose |
| ``drcio_controller_level`` | group | level in force for an LP group (after conflicts) |
| ``drcio_controller_policy_term`` | slo, term | policy internals (per policy: README "Controller metrics") |
| ``drcio_controller_slo_status`` | slo, status | 1 for the current status (ok / no_data / sensor_error) |
| ``drcio_controller_failsafe_active`` | slo | 1 while the SLO's policy applies its fail-safe level |
| ``drcio_controller_sensor_errors_total`` | slo, reason | failed readings |
| ``drcio_controller_pushes_total`` | writer, result | pushes by writer and outcome (a writer no longer pushed to drops out) |
| ``drcio_controller_writers`` | | writers known this tick |
| ``drcio_controller_conflicts`` | group | other SLOs on the group plus groups whose selectors overlap it (0 = no conflict) |
| ``drcio_controller_target_bytes_per_second`` | group, direction | io.max bandwidth pushed (absent = max) |
| ``drcio_controller_target_weight`` | group | io.weight pushed |
| ``drcio_controller_loop_duration_seconds`` | | histogram of tick durations |
| ``drcio_controller_ticks_total`` | | ticks run |
| ``drcio_controller_last_tick_timestamp_seconds`` | | wall time of the last tick |
| ``drcio_controller_leader`` | | 1 on the replica that pushes (holds the Lease, or runs without election) |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from policies import SensorStatus

__all__ = ["ControllerMetrics"]


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.observed = Gauge(
            "drcio_controller_observed_latency_seconds", "Last measured HP latency quantile per SLO", ["slo"], registry=r
        )
        self.target = Gauge("drcio_controller_target_latency_seconds", "Latency target per SLO", ["slo"], registry=r)
        self.lp_utilisation = Gauge(
            "drcio_controller_lp_utilisation",
            "LP's use of its io.max over the SLO's window, the PID gate's input (absent when not measured)",
            ["slo"], registry=r,
        )
        self.slo_level = Gauge("drcio_controller_slo_level", "Level chosen by the SLO's policy (0..1)", ["slo"], registry=r)
        self.level = Gauge("drcio_controller_level", "LP allowance level in force per group (0..1)", ["group"], registry=r)
        self.term = Gauge("drcio_controller_policy_term", "Policy internal terms", ["slo", "term"], registry=r)
        self.status = Gauge("drcio_controller_slo_status", "Current sensor status per SLO", ["slo", "status"], registry=r)
        self.failsafe = Gauge("drcio_controller_failsafe_active", "1 while the fail-safe level applies", ["slo"], registry=r)
        self.sensor_errors = Counter(
            "drcio_controller_sensor_errors", "Failed Prometheus readings", ["slo", "reason"], registry=r
        )
        self.pushes = Counter("drcio_controller_pushes", "Pushes to writers by outcome", ["writer", "result"], registry=r)
        self.writers = Gauge("drcio_controller_writers", "Writers known in the last tick", registry=r)
        self.conflicts = Gauge(
            "drcio_controller_conflicts", "Other SLOs governing an LP group plus other groups whose selectors overlap it", ["group"], registry=r
        )
        self.target_bps = Gauge(
            "drcio_controller_target_bytes_per_second", "io.max bandwidth pushed", ["group", "direction"], registry=r
        )
        self.target_weight = Gauge("drcio_controller_target_weight", "io.weight pushed", ["group"], registry=r)
        self.loop_duration = Histogram(
            "drcio_controller_loop_duration_seconds",
            "Duration of one sense-decide-act tick",
            # Up to 60 s: ticks at 10,000 writers take 11.7-38.7 s (README "Scale"), and a quantile
            # can only show values up to the largest finite bucket.
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.ticks = Counter("drcio_controller_ticks", "Ticks run", registry=r)
        self.leader = Gauge(
            "drcio_controller_leader", "1 while this replica pushes (leader, or no election), 0 on a standby", registry=r
        )
        self.last_tick = Gauge("drcio_controller_last_tick_timestamp_seconds", "Wall time of the last tick", registry=r)

    def set_status(self, slo: str, status: SensorStatus) -> None:
        for s in SensorStatus:
            self.status.labels(slo=slo, status=s.value).set(1.0 if s is status else 0.0)
