"""Best constant Adam lr per task, and constant 1e-3 against tuned cosine (docs/TASKS.md).

Runs `hyperpilot evaluate --methods constant,tuned_constant,tuned_cosine` on a suite
(each task's seeds side by side in one engine) and prints, per task, the lr that
tuned constant Adam chose on validation loss and the median test loss of constant
Adam 1e-3 over that of tuned cosine. Jobs are cached in --out like evaluate's.

    python scripts/lr_sweep.py SUITE [--seeds 3] [--out runs/lr-sweep]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hyperpilot import evaluation, quality, report
from hyperpilot.runtime import configure_process

METHODS = ["constant", "tuned_constant", "tuned_cosine"]


def sweep(suite: str, seeds: int, out: Path, pilot: str = "default") -> list[dict]:
    """Per task: the tuned constant lr and constant 1e-3 / tuned cosine test loss."""
    tasks = evaluation.resolve_tasks(suite=suite).tasks
    records = evaluation.evaluate(pilot, tasks, seeds, METHODS, out, progress=False)
    rows = report.method_rows(records, METHODS)
    constant = quality.task_medians(rows, "constant")
    cosine = quality.task_medians(rows, "tuned_cosine")
    chosen = {r["task"]: r["lr"] for r in rows if r["method"] == "tuned_constant"}
    return [
        {
            "task": task.label,
            "best_constant_lr": chosen[task.label],
            "constant_vs_tuned_cosine": constant[task.label] / cosine[task.label],
        }
        for task in tasks
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="an evaluation suite (name or .yaml path)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task")
    parser.add_argument("--out", type=Path, default=Path("runs/lr-sweep"))
    args = parser.parse_args()
    configure_process(1)
    for row in sweep(args.suite, args.seeds, args.out):
        print(
            f"{row['task']:60s} best constant lr {row['best_constant_lr']:g}  "
            f"constant 1e-3 / tuned cosine {row['constant_vs_tuned_cosine']:.3f}"
        )


if __name__ == "__main__":
    main()
