"""`hyperpilot bench ablations`: short meta-training arms that choose settings by evidence.

Each arm is the default config with a few `--set` overrides and a short budget,
trained with several seeds. Its best-on-val pilot is then evaluated on the `val`
task split (never `heldout`, which stays for the final judgement) against constant
Adam. Finished runs and evaluations are reused, so the script resumes where it
stopped; results are appended to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hyperpilot.bench import BENCHMARKS_MD

# arm name -> overrides of configs/train/default.yaml
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "residual": ["env.action_mode=residual"],
    "lr_only": ["env.controlled=[lr]"],
    "reward_val_loss": ["env.reward.kind=val_loss"],
    "reward_train_loss": ["env.reward.kind=train_loss"],
    "terminal_term": ["env.reward.kind=val_loss", "env.reward.terminal_weight=30.0"],
    "gamma_0.9": ["ppo.gamma=0.9"],
    "k_20": ["env.decision_interval=20"],
    "no_val_features": ["env.val_drop_prob=1.0"],
    "digits_only": ["env.family=mlp_digits"],
}


def ablations(argv: Sequence[str] | None = None) -> int:
    """Trains and evaluates the ablation arms; appends a table to docs/BENCHMARKS.md."""
    parser = argparse.ArgumentParser(
        prog="hyperpilot bench ablations",
        description="Short meta-training arms (action mode, reward, discount, "
        "controlled set, K, validation features, task diversity), several seeds "
        "each, evaluated on the val split against constant Adam. Resumable.",
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated, from: {', '.join(ARMS)}",
    )
    parser.add_argument(
        "--seeds", type=int, default=2, help="meta-training seeds per arm"
    )
    parser.add_argument(
        "--timesteps", type=int, default=40_000, help="meta-training steps per run"
    )
    parser.add_argument("--eval-seeds", type=int, default=3, help="task seeds")
    parser.add_argument(
        "--root", type=Path, default=Path("runs/ablations"), help="runs and caches"
    )
    parser.add_argument("--md", type=Path, default=BENCHMARKS_MD, help="results file")
    args = parser.parse_args(argv)
    args.argv = list(argv or [])
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        from hyperpilot.cli import UserError

        raise UserError(f"unknown arms {unknown}; choose from {list(ARMS)}")
    from hyperpilot import report
    from hyperpilot.agents.checkpoints import list_checkpoints
    from hyperpilot.cli import train
    from hyperpilot.envs.tasks.splits import load_split
    from hyperpilot.evaluation import EvalTask, evaluate

    tasks = [EvalTask(spec.label, spec) for spec in load_split("val")]
    results = {}
    for arm in arms:
        per_seed = []
        for seed in range(args.seeds):
            run = args.root / f"{arm}__s{seed}"
            if not (run / "pilot").is_dir():
                common = [
                    "--config",
                    "default",
                    "--seed",
                    str(seed),
                    "--total-timesteps",
                    str(args.timesteps),
                ]
                overrides = [item for o in ARMS[arm] for item in ("--set", o)]
                if list_checkpoints(run):
                    code = train(["--resume", str(run)])
                else:
                    # stopped before its first checkpoint: nothing to keep
                    shutil.rmtree(run, ignore_errors=True)
                    code = train(
                        [
                            *common,
                            *overrides,
                            "--set",
                            "logging.progress_bar=false",
                            "--runs-root",
                            str(args.root),
                            "--run-name",
                            run.name,
                        ]
                    )
                if code != 0:
                    return code
            pilot = run / ("pilot-best" if (run / "pilot-best").is_dir() else "pilot")
            records = evaluate(
                str(pilot),
                tasks,
                args.eval_seeds,
                ["pilot", "constant"],
                run / "eval-val",
                progress=False,
            )
            summary = report.summarize(
                report.method_rows(records, ["pilot", "constant"]),
                ["pilot", "constant"],
            )["pilot"]
            per_seed.append(summary)
        results[arm] = per_seed
    _append(args, results)
    return 0


def _append(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    lines = [
        f"\n## Ablations on the `val` split, {datetime.date.today().isoformat()}\n",
        f"- command: `hyperpilot bench ablations {shlex.join(args.argv)}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch "
        f"{torch.__version__}; each training run uses its config's `run.threads`",
        f"- each arm: configs/train/default.yaml plus its overrides, {args.timesteps:,} "
        f"meta-env steps, {args.seeds} meta-training seeds; its best-on-val pilot on "
        f"the val split, {args.eval_seeds} task seeds, from lr 1e-3",
        "",
        "| arm | overrides | pilot test loss / constant (median, per seed) | "
        "wins vs constant (per seed) | pilot divergences |",
        "|---|---|---|---|---|",
    ]
    for arm, seeds in results.items():
        ratio = ", ".join(f"{s['median_test_loss_vs_constant']:.3f}" for s in seeds)
        wins = ", ".join(f"{s['wins_vs_constant']:.0%}" for s in seeds)
        divergences = sum(s["divergences"] for s in seeds)
        mean = np.mean([s["median_test_loss_vs_constant"] for s in seeds])
        lines.append(
            f"| {arm} | {' '.join(ARMS[arm]) or '-'} | {ratio} (mean {mean:.3f}) | "
            f"{wins} | {divergences} |"
        )
    args.md.parent.mkdir(parents=True, exist_ok=True)
    with args.md.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
