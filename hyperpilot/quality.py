"""`hyperpilot bench quality`: a pilot against practitioners' schedules on held-out tasks.

Evaluates the pilot on the frozen `heldout` suite against every method (>= 5
seeds), once with validation features and once without (as deployed without a
`val_fn`), then checks the project's quality targets and appends the results to
docs/BENCHMARKS.md. Jobs are cached under `--out`: the baselines' runs do not
depend on the pilot, so they are computed once and serve every later pilot.

Targets (zero-shot, every run from lr 1e-3), each reported as holds / does NOT hold:

- floor: 0 pilot divergences; the pilot's median test loss below constant Adam's
  on all tasks but at most one, and at most 1.02x constant Adam's on every task;
- geometric-mean test loss (over tasks, of per-task medians over seeds) at most
  1.05x per-task tuned cosine's; stretch: below tuned OneCycle's;
- beats the suite-wide open-loop replay (one schedule by progress: the median of
  the pilot's own schedules over every task): lower geometric mean and a lower
  median on the majority of tasks; the per-task replay is reported the same way.
"""

from __future__ import annotations

import csv
import datetime
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hyperpilot import evaluation, report
from hyperpilot.agents.methods import METHODS, available_methods
from hyperpilot.bench import BENCHMARKS_MD
from hyperpilot.bundle import PolicyBundle, load_bundle

NORMAL_LR = 1e-3
FLOOR_MARGIN = 1.02
COSINE_MARGIN = 1.05
NO_VAL_METHODS = (
    "pilot",
    "constant",
    "tuned_cosine",
    "tuned_onecycle",
    "replay",
    "replay_suite",
)
"""What the evaluation without validation runs: the pilot and what its targets name."""


def task_medians(rows: Sequence[dict], method: str) -> dict[str, float]:
    """Per task, the median over seeds of `method`'s test loss (inf if diverged)."""
    by_task: dict[str, list[float]] = {}
    for row in rows:
        if row["method"] == method:
            loss = math.inf if row["diverged"] else row["test_loss"]
            by_task.setdefault(row["task"], []).append(loss)
    return {task: float(np.median(losses)) for task, losses in by_task.items()}


def geomean_ratio(mine: dict[str, float], theirs: dict[str, float]) -> float:
    """The geometric mean over shared tasks of `mine[t] / theirs[t]` (inf if any is)."""
    ratios = [mine[t] / theirs[t] for t in mine if t in theirs]
    if not ratios:
        return math.nan
    if not all(math.isfinite(r) and r > 0 for r in ratios):
        return math.inf
    return float(np.exp(np.mean(np.log(ratios))))


def _holds(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


def targets(rows: Sequence[dict], summary: dict) -> list[str]:
    """The target lines for one evaluation (see the module docstring)."""
    pilot = task_medians(rows, "pilot")
    constant = task_medians(rows, "constant")
    lines = []
    divergences = summary["pilot"]["divergences"]
    lines.append(
        f"- floor, 0 pilot divergences: {divergences} -> {_holds(divergences == 0)}"
    )
    worse = [t for t in pilot if not pilot[t] < constant.get(t, math.inf)]
    lines.append(
        f"- floor, median test loss below constant Adam 1e-3 on all tasks but at most "
        f"one: below on {len(pilot) - len(worse)} of {len(pilot)}"
        f"{' (not: ' + ', '.join(worse) + ')' if worse else ''} -> "
        f"{_holds(len(worse) <= 1)}"
    )
    ratios = {t: pilot[t] / constant[t] for t in pilot if t in constant}
    task, worst = max(ratios.items(), key=lambda item: item[1])
    lines.append(
        f"- floor, at most {FLOOR_MARGIN}x constant Adam on every task: worst "
        f"{worst:.3f}x ({task}) -> {_holds(worst <= FLOOR_MARGIN)}"
    )
    for other, margin, label in (
        ("tuned_cosine", COSINE_MARGIN, f"at most {COSINE_MARGIN}x tuned cosine"),
        ("tuned_onecycle", 1.0, "stretch, below tuned OneCycle"),
    ):
        ratio = geomean_ratio(pilot, task_medians(rows, other))
        ok = ratio <= margin if margin != 1.0 else ratio < margin
        lines.append(
            f"- geometric-mean test loss {label}: pilot / {other} = {ratio:.3f} -> "
            f"{_holds(ok)}"
        )
    for other in ("replay_suite", "replay"):
        theirs = task_medians(rows, other)
        if not theirs:
            continue
        ratio = geomean_ratio(pilot, theirs)
        lower = sum(pilot[t] < theirs[t] for t in pilot if t in theirs)
        ok = ratio < 1.0 and lower > len(theirs) / 2
        name = "suite-wide" if other == "replay_suite" else "per-task"
        lines.append(
            f"- beats the {name} open-loop replay ({other}): geometric mean "
            f"{ratio:.3f}, lower median on {lower} of {len(theirs)} tasks -> "
            f"{_holds(ok)}"
        )
    return lines


@dataclass(frozen=True)
class QualityResult:
    """Both evaluations and their target lines."""

    with_val: evaluation.Evaluation
    without_val: evaluation.Evaluation
    lines: list[str]


def run(
    pilot: str = "default",
    *,
    suite: str = "heldout",
    seeds: int = 5,
    out: Path = Path("runs/bench-quality"),
    train_run: Path | None = None,
    md: Path = BENCHMARKS_MD,
    progress: bool = True,
    command: str = "hyperpilot bench quality",
    log: Callable[[str], None] = print,
) -> QualityResult:
    """Evaluates a pilot on a suite, with and without validation; appends to `md`.

    Args:
        pilot: A bundle folder or a shipped pilot's name.
        suite: The evaluation suite (the frozen `heldout` one by default).
        seeds: Seeds per task.
        out: The job cache (`out/jobs`, shared by every pilot) and the reports
            (`out/<fingerprint>/with-val`, `.../without-val`).
        train_run: The pilot's training run folder, to report its wall time.
        md: The results file the section is appended to.
        progress: Show progress bars.
        command: The command line, written with the results.
        log: Where the tables go.
    """
    bundle = load_bundle(pilot)
    tasks = evaluation.resolve_tasks(suite=suite).tasks
    folder = out / bundle.fingerprint
    results = {}
    for validation, methods, name in (
        (True, available_methods(), "with-val"),
        (False, [m for m in NO_VAL_METHODS if METHODS[m].available], "without-val"),
    ):
        results[name] = evaluation.run(
            pilot,
            tasks,
            seeds,
            methods,
            out,
            init_lr=NORMAL_LR,
            progress=progress,
            validation=validation,
            report_to=folder / name,
        )
        log(f"{name}:\n{report.table(results[name].summary)}")
    lines = []
    for name, result in results.items():
        lines.append(f"{name}:")
        lines += targets(result.rows, result.summary)
    _append(md, command, bundle, results, lines, pilot, suite, seeds, folder, train_run)
    log("\n".join(lines))
    log(f"appended to {md}")
    return QualityResult(results["with-val"], results["without-val"], lines)


def _append(
    path: Path,
    command: str,
    bundle: PolicyBundle,
    results: dict[str, evaluation.Evaluation],
    lines: list[str],
    pilot: str,
    suite: str,
    seeds: int,
    folder: Path,
    train_run: Path | None,
) -> None:
    training = bundle.meta.get("training", {})
    timesteps = int(training.get("timesteps", 0))
    cost = (
        f"checkpoint at {timesteps:,} meta-env steps = "
        f"{timesteps * bundle.decision_interval:,} inner steps"
    )
    if train_run is not None and (train_run / "progress.csv").is_file():
        with (train_run / "progress.csv").open() as handle:
            elapsed = [float(r["time/time_elapsed"]) for r in csv.DictReader(handle)]
        cost += f"; the whole run took {elapsed[-1] / 60:.1f} min wall time"
    normal = results["with-val"]
    tasks = ", ".join(dict.fromkeys(r["task"] for r in normal.rows))
    tables = "".join(
        f"{name}:\n\n```\n{report.table(result.summary)}\n```\n\n"
        for name, result in results.items()
    )
    text = (
        f"\n## Quality on `{suite}`, {datetime.date.today().isoformat()}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, CPU\n"
        f"- pilot: `{pilot}` (fingerprint {bundle.fingerprint}; trained by "
        f"`{training.get('command', '?')}`; {cost})\n"
        f"- tasks: {tasks}; seeds 0-{seeds - 1}; every run starts at lr "
        f"{NORMAL_LR:g}, beta1 0.9; baselines unclipped, the pilot and its controls "
        "from the bundle's default clip\n"
        f"- reports: `{folder}/with-val`, `{folder}/without-val` (results, plots)\n\n"
        + tables
        + "Performance profile with validation (steps to the target loss, relative "
        "to the fastest method per task; score B integrates it):\n\n"
        "```\n" + report.profile_table(normal.rows) + "\n```\n\n"
        "Targets (zero-shot, no per-task tuning of the pilot):\n\n"
        + "\n".join(lines)
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)
