"""Placeholder until run-experiment lands."""
import sys


def main() -> None:
    print("run-experiment: not yet built", file=sys.stderr)
    sys.exit(2)


def export_main() -> None:
    print("export-metrics: not yet built", file=sys.stderr)
    sys.exit(2)
