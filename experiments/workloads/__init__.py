"""The experiment workloads, each runnable as ``python -m experiments.workloads.<name>``.

- :mod:`~experiments.workloads.hp_gnn`: the HP service (GNN fraud scoring whose feature reads hit the disk).
- :mod:`~experiments.workloads.loadgen`: the open-loop load generator that drives it and records client latencies.
- :mod:`~experiments.workloads.lp_batch`: the LP batch job (large direct-I/O reads/writes, starts paused).
- :mod:`~experiments.workloads.levels`: the ``low``/``medium``/``high`` load levels.

The orchestrator (``experiments.cli`` and its backends) starts them as subprocesses.
"""
