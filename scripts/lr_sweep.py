"""Best constant Adam lr per task: the `evaluate` grid, run batched in one engine per task.

For each task of a suite, every (schedule, grid lr, seed) run of `hyperpilot evaluate
--methods constant,tuned_constant,tuned_cosine` goes into one `BatchedEngine` (the runs
are independent under `vmap`), so a sweep costs a few single runs. Same instances
(seed s draws `family.sample(default_rng(s))`), start (lr 1e-3, beta1 0.9, the pilot's
default clip), K and selection rule (lowest median final validation loss over seeds,
a diverged run counting as inf) as `evaluate`.

    python scripts/lr_sweep.py SUITE.yaml [--seeds 3] [--out results.csv]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time

import numpy as np
import torch

from hyperpilot.agents.baselines import TUNING_GRID, Schedule
from hyperpilot.agents.controllers import run_episode
from hyperpilot.bundle import load_bundle
from hyperpilot.envs.actions import warmup_cosine
from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import Episode
from hyperpilot.evaluation import load_suite
from hyperpilot.runtime import configure_process


class GridSchedule(Schedule):
    """Per-run lr: constant or warmup-cosine to each run's own grid lr."""

    def __init__(self, lrs: torch.Tensor, cosine: torch.Tensor) -> None:
        self.lrs, self.cosine = lrs, cosine

    def lr_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Each run's grid lr, under warmup-cosine where the run is a cosine one."""
        lrs = self.lrs.to(step)
        return torch.where(self.cosine, warmup_cosine(step, total, lrs), lrs)


def sweep(task, seeds: int, bundle) -> list[dict]:
    family = task.spec.build()
    instances = [family.sample(np.random.default_rng(s)) for s in range(seeds)]
    runs = [
        (kind, lr, seed)
        for kind in ("constant", "cosine")
        for lr in TUNING_GRID
        for seed in range(seeds)
    ]
    settings = dataclasses.replace(bundle.settings(), device="cpu")
    engine = BatchedEngine(len(runs), settings)
    engine.start(
        list(range(len(runs))),
        [Episode(instances[s], 1e-3, 0.9, bundle.default_clip, True) for *_, s in runs],
    )
    diverged = torch.zeros(len(runs), dtype=torch.bool)

    def on_decision(state, transition) -> None:
        diverged.__ior__(transition.terminated.cpu())

    schedule = GridSchedule(
        torch.tensor([lr for _, lr, _ in runs], dtype=torch.float64),
        torch.tensor([kind == "cosine" for kind, *_ in runs]),
    )
    run_episode(engine, schedule, on_decision)
    val, test = engine.last_val.cpu(), engine.evaluate("test").cpu()
    return [
        {
            "task": task.label,
            "schedule": kind,
            "lr": lr,
            "seed": seed,
            "final_val_loss": math.inf if diverged[i] else float(val[i]),
            "test_loss": float(test[i]),
            "diverged": bool(diverged[i]),
        }
        for i, (kind, lr, seed) in enumerate(runs)
    ]


def summary(rows: list[dict]) -> dict[str, float]:
    """Best lrs and median test losses of constant 1e-3 and the tuned methods."""

    def median(kind, lr, key):
        return float(
            np.median([r[key] for r in rows if r["schedule"] == kind and r["lr"] == lr])
        )

    best = {
        kind: min(TUNING_GRID, key=lambda lr: median(kind, lr, "final_val_loss"))
        for kind in ("constant", "cosine")
    }
    return {
        "best_constant_lr": best["constant"],
        "best_cosine_lr": best["cosine"],
        "constant_1e-3_test": median("constant", 1e-3, "test_loss"),
        "tuned_constant_test": median("constant", best["constant"], "test_loss"),
        "tuned_cosine_test": median("cosine", best["cosine"], "test_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="an evaluation suite yaml (families: ...)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task")
    parser.add_argument("--pilot", default="default", help="bundle giving K and clip")
    parser.add_argument("--out", default=None, help="CSV of every run")
    args = parser.parse_args()
    configure_process(1)
    bundle = load_bundle(args.pilot)
    tasks, _ = load_suite(args.suite)
    all_rows = []
    for task in tasks:
        start = time.process_time()
        rows = sweep(task, args.seeds, bundle)
        all_rows += rows
        s = summary(rows)
        ratio = s["constant_1e-3_test"] / s["tuned_cosine_test"]
        print(
            f"{task.label:60s} best const {s['best_constant_lr']:g}  "
            f"best cos {s['best_cosine_lr']:g}  const1e-3/tcos {ratio:.3f}  "
            f"test c1e-3 {s['constant_1e-3_test']:.4g} tcos {s['tuned_cosine_test']:.4g}"
            f"  ({time.process_time() - start:.0f} s)",
            flush=True,
        )
    if args.out:
        with open(args.out, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(all_rows[0]))
            writer.writeheader()
            writer.writerows(all_rows)


if __name__ == "__main__":
    main()
