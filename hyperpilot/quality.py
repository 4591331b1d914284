"""`hyperpilot bench quality`: a pilot against practitioners' schedules on held-out tasks.

Runs `hyperpilot evaluate` on the frozen `heldout` suite (every method, >= 5 seeds),
then the pilot and constant Adam from an lr 100x too small and 30x too large, and
checks the project's quality targets. Jobs are cached under `--out`, so an
interrupted benchmark resumes. The result is appended to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import datetime
import math
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hyperpilot import evaluation, report
from hyperpilot.agents.methods import available_methods
from hyperpilot.bench import BENCHMARKS_MD
from hyperpilot.bundle import PolicyBundle, load_bundle

NORMAL_LR = 1e-3
BAD_STARTS = {"100x too small": 1e-5, "30x too large": 3e-2}


def _per_pair(rows: list[dict], method: str) -> dict[tuple[str, int], float]:
    return {
        (r["task"], r["seed"]): math.inf if r["diverged"] else r["test_loss"]
        for r in rows
        if r["method"] == method
    }


def _ratio_to(summary: dict, method: str, other: str, tasks: Sequence[str]) -> float:
    """Median over tasks of (median test loss of `method`) / (that of `other`)."""
    mine = summary.get(method, {}).get("median_test_loss", {})
    theirs = summary.get(other, {}).get("median_test_loss", {})
    ratios = [mine[t] / theirs[t] for t in tasks if t in mine and t in theirs]
    return float(np.median(ratios)) if ratios else math.nan


def _within(bad: dict, normal: dict, tolerance: float = 0.10) -> float:
    """Share of (task, seed) pairs whose bad-start test loss is within 10% of normal."""
    hits = [
        abs(bad[k] - normal[k]) <= tolerance * normal[k] for k in normal if k in bad
    ]
    return float(np.mean(hits)) if hits else math.nan


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
) -> list[str]:
    """Evaluates a pilot on a suite and appends the quality targets to `md`.

    Every available method runs from lr 1e-3; then the pilot and constant Adam
    from an lr 100x too small and 30x too large. Jobs are cached under `out`, so an
    interrupted benchmark resumes.

    Args:
        pilot: A bundle folder or a shipped pilot's name.
        suite: The evaluation suite (the frozen `heldout` one by default).
        seeds: Seeds per task.
        out: The job cache and report folder.
        train_run: The pilot's training run folder, to report its wall time.
        md: The results file the section is appended to.
        progress: Show progress bars.
        command: The command line, written with the results.
        log: Where the tables go.

    Returns:
        The target lines (`... -> holds` / `does NOT hold`).
    """
    bundle = load_bundle(pilot)
    tasks = evaluation.resolve_tasks(suite=suite).tasks
    labels = [t.label for t in tasks]
    normal = evaluation.run(
        pilot,
        tasks,
        seeds,
        available_methods(),
        out / "normal",
        init_lr=NORMAL_LR,
        progress=progress,
    )
    log(report.table(normal.summary))

    bad_rows = {}
    for name, lr in BAD_STARTS.items():
        bad = evaluation.evaluate(
            pilot,
            tasks,
            seeds,
            ["pilot", "constant"],
            out / f"init_lr_{lr:g}",
            lr,
            progress=progress,
        )
        bad_rows[name] = report.method_rows(bad, ["pilot", "constant"])

    lines = _targets(normal.summary, normal.rows, bad_rows, labels)
    _append(md, command, bundle, normal, lines, pilot, suite, seeds, out, train_run)
    log("\n".join(lines))
    log(f"appended to {md}")
    return lines


def _targets(
    summary: dict, rows: list[dict], bad_rows: dict[str, list[dict]], labels: list[str]
) -> list[str]:
    pilot = summary["pilot"]
    score = {m: s["score_b"] for m, s in summary.items()}

    def holds(ok: bool) -> str:
        return "holds" if ok else "does NOT hold"

    lines = []
    ok = pilot["divergences"] == 0
    lines.append(f"- floor, 0 pilot divergences: {pilot['divergences']} -> {holds(ok)}")
    wins = pilot["wins_vs_constant"]
    lines.append(
        f"- floor, beats constant Adam 1e-3 on >= 80% of task x seed pairs: "
        f"{wins:.0%} -> {holds(wins >= 0.8)}"
    )
    for control in ("replay", "random", "blind"):
        if control in score and score.get("pilot") is not None:
            b_pilot, b_control = score["pilot"], score[control]
            lines.append(
                f"- score B above {control}: {b_pilot:.3f} vs {b_control:.3f} -> "
                f"{holds(b_pilot > b_control)}"
            )
    ratio = _ratio_to(summary, "pilot", "tuned_cosine", labels)
    line = (
        f"- median final test loss within 5% of tuned cosine: pilot / tuned cosine = "
        f"{ratio:.3f} -> {holds(ratio <= 1.05)}"
    )
    long = [t for t in labels if "horizon=" in t]
    if long:
        long_ratio = _ratio_to(summary, "pilot", "tuned_cosine", long)
        line += f"; on the 2x / 4x horizons: {long_ratio:.3f} -> {holds(long_ratio <= 1.05)}"
    lines.append(line)
    normal_pilot = _per_pair(rows, "pilot")
    normal_constant = _per_pair(rows, "constant")
    for name, bad in bad_rows.items():
        p = _within(_per_pair(bad, "pilot"), normal_pilot)
        c = _within(_per_pair(bad, "constant"), normal_constant)
        lines.append(
            f"- started {name}: within 10% of its normal result on {p:.0%} of pairs "
            f"(pilot) vs {c:.0%} (constant Adam) -> "
            f"{holds(p >= 0.8 and c < 0.8)} (target: pilot yes, constant no)"
        )
    if "schedulefree" in score and score.get("pilot") is not None:
        gap = score["pilot"] - score["schedulefree"]
        lines.append(
            f"- stretch, score B above Schedule-Free AdamW by >= 0.03: {gap:+.3f} -> "
            f"{holds(gap >= 0.03)}"
        )
    return lines


def _append(
    path: Path,
    command: str,
    bundle: PolicyBundle,
    normal: evaluation.Evaluation,
    lines: list[str],
    pilot: str,
    suite: str,
    seeds: int,
    out: Path,
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
    tasks = ", ".join(dict.fromkeys(r["task"] for r in normal.rows))
    text = (
        f"\n## Quality on `{suite}`, {datetime.date.today().isoformat()}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, CPU\n"
        f"- pilot: `{pilot}` (trained by `{training.get('command', '?')}`; {cost})\n"
        f"- tasks: {tasks}; seeds 0-{seeds - 1}; "
        f"every run starts at lr {NORMAL_LR:g}, beta1 0.9\n"
        f"- plots: `{out / 'normal' / 'plots'}` (profile.png, curves, schedules)\n\n"
        "```\n" + report.table(normal.summary) + "\n```\n\n"
        "Performance profile (steps to the target loss, relative to the fastest "
        "method per task; score B integrates it):\n\n"
        "```\n" + report.profile_table(normal.rows) + "\n```\n\n"
        "Targets (zero-shot, no per-task tuning of the pilot):\n\n"
        + "\n".join(lines)
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)
