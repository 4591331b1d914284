"""Benchmarks: `python scripts/bench.py throughput` (the same as `hyperpilot bench`)."""

import sys

from hyperpilot.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
