"""Experiment backends: where a scenario's processes run and how its limits are applied.

``run-experiment --backend NAME`` picks one; the scenario runner
(:mod:`experiments.scenarios`) only sees the :class:`~experiments.model.Backend`
protocol, which :mod:`experiments.model` defines and documents (the call
order, what each call returns). ``local`` runs every part for real on this
machine (root, real cgroups and disk); ``sim`` runs the same controller loop
and policies against a seeded model of the plant (no root).

The names below are re-exported from :mod:`experiments.model` for backends
written against this package.
"""

from __future__ import annotations

from experiments.model import Backend, BackendUnavailable, ScenarioRun, Tick

__all__ = ["Backend", "BackendUnavailable", "ScenarioRun", "Tick", "BACKENDS"]

#: Names accepted by ``--backend``; only these are implemented.
BACKENDS = ("local", "sim", "kubernetes")
