# The two commands of the README. Each does its own set-up (scripts/setup.sh).
.PHONY: experiment test setup benchmark

DURATION ?= 40
OUTPUT ?= results/latest

setup:
	@scripts/setup.sh

## run-experiment on the local embedded setup (real Prometheus, real cgroups, real disk)
experiment: setup
	.venv/bin/run-experiment --scenario all --duration $(DURATION) --output $(OUTPUT)

## the default test run: type check, import contracts, pytest (benchmarks excluded)
test: setup
	.venv/bin/mypy
	.venv/bin/lint-imports
	.venv/bin/pytest -q --durations=15

## long real-disk benchmarks (not in CI)
benchmark: setup
	.venv/bin/pytest -q -m benchmark
