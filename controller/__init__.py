"""drcio controller: SLO config, Prometheus sensor, control loop, push client, metrics, CLI."""
