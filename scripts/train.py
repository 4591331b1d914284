"""Meta-train a pilot: `python scripts/train.py --config configs/train/smoke.yaml`."""

import sys

from hyperpilot.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
