"""A progress sink that says nothing, for the tests that call ``run_plan`` themselves."""

from __future__ import annotations

from experiments.model import ScenarioSpec


class Quiet:
    """:class:`experiments.scenarios.ProgressSink` that drops every report."""

    def scenario_started(self, index: int, total: int, spec: ScenarioSpec) -> None: ...
    def tick(self, elapsed: float, total: float, status: str) -> None: ...
    def scenario_finished(self, spec: ScenarioSpec, row: dict[str, object] | None) -> None: ...
    def message(self, text: str) -> None: ...
