"""`hyperpilot bench ablations`: short meta-training arms that choose settings by evidence.

Each arm is the default config with a few `--set` overrides and a short budget,
trained with several seeds. Its best-on-val pilot is then evaluated on the `val`
task split (never `heldout`, which stays for the final judgement) against constant
Adam. Finished runs and evaluations are reused, so a second call resumes where the
first stopped; results are appended to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hyperpilot import evaluation, quality, report, training
from hyperpilot.agents.checkpoints import list_checkpoints
from hyperpilot.agents.ppo import TrainResult
from hyperpilot.bench import BENCHMARKS_MD
from hyperpilot.config import load_config
from hyperpilot.envs.tasks.splits import HELDOUT_PREFIX, load_split
from hyperpilot.runtime import UserError

# arm name -> overrides of the base training config (configs/train/default.yaml)
ARMS: dict[str, list[str]] = {
    "baseline": [],
    # how actions act: accumulate on the current values, or bend a base schedule
    "residual": ["env.action_mode=residual"],
    "residual_lr_only": ["env.action_mode=residual", "env.controlled=[lr]"],
    "residual_wide": ["env.action_mode=residual", "env.action_bounds.lr_step=1.0"],
    "residual_narrow_init": [
        "env.action_mode=residual",
        "env.init.lr=[1.0e-4, 1.0e-2]",
    ],
    "lr_only": ["env.controlled=[lr]"],
    # how far a decision may move: a fifth of a decade of lr, beta1 kept >= 0.8
    "small_steps": [
        "env.action_bounds={lr_step: 0.2, beta1_step: 0.1, clip_step: 0.25, "
        "beta1: [0.8, 0.999]}"
    ],
    "residual_small_steps": [
        "env.action_mode=residual",
        "env.action_bounds={lr_step: 0.25, beta1_step: 0.1, beta1: [0.8, 0.999]}",
    ],
    # where runs start: around the lrs users start from, not 1e-5 to 1e-1
    "narrow_init": ["env.init.lr=[1.0e-4, 1.0e-2]"],
    # reward and credit
    "reward_val_loss": ["env.reward.kind=val_loss"],
    "reward_train_loss": ["env.reward.kind=train_loss"],
    "terminal_term": ["env.reward.kind=val_loss", "env.reward.terminal_weight=30.0"],
    "gamma_0.9": ["ppo.gamma=0.9"],
    "k_20": ["env.decision_interval=20"],
    "no_val_features": ["env.val_drop_prob=1.0"],
    # task diversity: one family instead of the train split
    "digits_only": ["env.family=mlp_digits"],
}


@dataclass(frozen=True)
class AblationResult:
    """Per arm, the pilot's summary on `val` for each meta-training seed.

    `stopped` is the training run that a signal (or a lost Ray worker) ended; the
    arms after it did not run, and nothing was appended.
    """

    results: dict[str, list[dict]]
    stopped: TrainResult | None = None


def check_arms(arms: Sequence[str]) -> list[str]:
    """The arms, checked against `ARMS`.

    Raises:
        UserError: For an unknown arm.
    """
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arms {unknown}; choose from {list(ARMS)}")
    return list(arms)


def _quiet(line: str) -> None:
    """Drops a training run's progress lines (the arms' table is what counts)."""


def _train_arm(
    arm: str, seed: int, timesteps: int, run: Path, base: str
) -> TrainResult | None:
    """Trains (or resumes) one arm's run; None when its pilot already exists."""
    if (run / "pilot").is_dir():
        return None
    if list_checkpoints(run):
        config = training.load_run_config(run)
        return training.run(config, run, command="", resume=True, log=_quiet)
    shutil.rmtree(run, ignore_errors=True)  # stopped before its first checkpoint
    sets = [*ARMS[arm], "logging.progress_bar=false"]
    overrides = [*sets, f"run.seed={seed}", f"run.total_timesteps={timesteps}"]
    argv = ["--config", base, "--seed", str(seed), "--total-timesteps"]
    argv += [str(timesteps), *(x for o in sets for x in ("--set", o))]
    argv += ["--runs-root", str(run.parent), "--run-name", run.name]
    command = shlex.join(["hyperpilot", "train", *argv])
    config = load_config(base, overrides)
    return training.run(config, run, command=command, log=_quiet)


def run(
    arms: Sequence[str] = tuple(ARMS),
    *,
    seeds: int = 2,
    timesteps: int = 40_000,
    eval_seeds: int = 3,
    config: str = "default",
    split: str = "val",
    root: Path = Path("runs/ablations"),
    md: Path = BENCHMARKS_MD,
    command: str = "hyperpilot bench ablations",
    log: Callable[[str], None] = print,
) -> AblationResult:
    """Trains and evaluates the ablation arms; appends a table to `md`.

    Each arm is the training config `config` (default.yaml) plus its overrides,
    trained for `timesteps` meta-env steps with `seeds` seeds under
    `root/<arm>__s<seed>`; its best-on-val pilot is evaluated on the task split
    `split` (never a held-out one) against constant Adam. Finished runs and
    evaluations are reused, so a second call resumes.

    Raises:
        UserError: For an unknown arm.
    """
    arms = check_arms(arms)
    if Path(split).stem.startswith(HELDOUT_PREFIX):
        raise UserError(
            f"--split {split}: held-out splits judge the shipped pilot only; choose "
            "pilots on val"
        )
    tasks = [evaluation.EvalTask(spec.label, spec) for spec in load_split(split)]
    methods = ["pilot", "constant", "tuned_cosine"]
    results = {}
    for arm in arms:
        per_seed = []
        for seed in range(seeds):
            run_dir = root / f"{arm}__s{seed}"
            trained = _train_arm(arm, seed, timesteps, run_dir, config)
            if trained is not None and (
                trained.interrupted_by is not None or trained.worker_died is not None
            ):
                return AblationResult(results, trained)
            best = run_dir / "pilot-best"
            pilot = best if best.is_dir() else run_dir / "pilot"
            # one cache for every arm: the baselines run once, each pilot under
            # its own fingerprint
            records = evaluation.evaluate(
                str(pilot),
                tasks,
                eval_seeds,
                methods,
                root / f"eval-{split}",
                progress=False,
            )
            per_seed.append(_judge(report.method_rows(records, methods)))
        results[arm] = per_seed
    _append(md, command, results, seeds, timesteps, eval_seeds, config, split, log)
    return AblationResult(results)


def _judge(rows: list[dict]) -> dict[str, float]:
    """The pilot against constant Adam and tuned cosine, by task (medians over seeds)."""
    summary = report.summarize(rows, ["pilot"])["pilot"]
    pilot = quality.task_medians(rows, "pilot")
    constant = quality.task_medians(rows, "constant")
    ratios = [pilot[t] / constant[t] for t in pilot]
    return {
        "wins_vs_constant": float(np.mean([r < 1.0 for r in ratios])),
        "divergences": summary["divergences"],
        "geomean_vs_constant": quality.geomean_ratio(pilot, constant),
        "worst_vs_constant": max(ratios),
        "geomean_vs_tuned_cosine": quality.geomean_ratio(
            pilot, quality.task_medians(rows, "tuned_cosine")
        ),
    }


def _append(
    md: Path,
    command: str,
    results: dict[str, list[dict]],
    seeds: int,
    timesteps: int,
    eval_seeds: int,
    config: str,
    split: str,
    log: Callable[[str], None],
) -> None:
    lines = [
        f"\n## Ablations on the `{split}` split, {datetime.date.today().isoformat()}\n",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch "
        f"{torch.__version__}; each training run uses its config's `run.threads`",
        f"- each arm: the `{config}` training config plus its overrides, "
        f"{timesteps:,} meta-env steps, {seeds} meta-training seeds; its best-on-val "
        f"pilot on the {split} split, {eval_seeds} task seeds, from lr 1e-3",
        "",
        "Per meta-training seed, over the split's tasks (each a median over task "
        "seeds): the share of tasks where the pilot's test loss is below constant "
        "Adam 1e-3's, the geometric mean and the worst of pilot / constant, and the "
        "geometric mean of pilot / tuned cosine (lower is better).",
        "",
        "| arm | overrides | tasks won vs constant | pilot / constant, geometric "
        "mean | worst task | pilot / tuned cosine | pilot divergences |",
        "|---|---|---|---|---|---|---|",
    ]

    def cells(per_seed: list[dict], key: str, spec: str) -> str:
        values = [s[key] for s in per_seed]
        text = ", ".join(format(v, spec) for v in values)
        return f"{text} (mean {np.mean(values):{spec}})" if len(values) > 1 else text

    for arm, per_seed in results.items():
        divergences = sum(s["divergences"] for s in per_seed)
        lines.append(
            f"| {arm} | {' '.join(ARMS[arm]) or '-'} | "
            f"{cells(per_seed, 'wins_vs_constant', '.0%')} | "
            f"{cells(per_seed, 'geomean_vs_constant', '.3f')} | "
            f"{cells(per_seed, 'worst_vs_constant', '.3f')} | "
            f"{cells(per_seed, 'geomean_vs_tuned_cosine', '.3f')} | {divergences} |"
        )
    md.parent.mkdir(parents=True, exist_ok=True)
    with md.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    log("\n".join(lines))
