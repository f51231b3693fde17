"""Placeholder until the node writer lands."""
import sys


def main() -> None:
    print("drcio-writer: not yet built", file=sys.stderr)
    sys.exit(2)
