"""Evaluate a pilot: `python scripts/evaluate.py --pilot runs/x/pilot --suite smoke`."""

import sys

from hyperpilot.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
