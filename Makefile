# The two commands of the README. Each does its own set-up (scripts/setup.sh).
.PHONY: experiment test setup benchmark

DURATION ?= 40
OUTPUT ?= results/latest

setup:
	@scripts/setup.sh

## run-experiment on the local embedded setup (real Prometheus, real cgroups, real disk)
experiment: setup
	.venv/bin/run-experiment --scenario all --duration $(DURATION) --output $(OUTPUT)

## the default test run: type check, import contracts, pytest (benchmarks excluded): first the tests that
## need neither the kernel's cgroups nor a real Prometheus, on both cores (pytest-xdist); then those and the
## `serial` ones, one at a time (they measure the disk, the host and HP latency, which a busy core would skew)
test: setup
	.venv/bin/mypy
	.venv/bin/lint-imports
	.venv/bin/pytest -q -n 2 --dist loadscope -m "not benchmark and not kernel and not prometheus and not serial" --durations=5
	.venv/bin/pytest -q -m "not benchmark and (kernel or prometheus or serial)" --durations=15

## long real-disk benchmarks (not in CI)
benchmark: setup
	.venv/bin/pytest -q -m benchmark
