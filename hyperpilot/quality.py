"""`hyperpilot bench quality`: a pilot against practitioners' schedules on held-out tasks.

Runs `hyperpilot evaluate` on the frozen `heldout` suite (every method, >= 5 seeds),
then the pilot and constant Adam from an lr 100x too small and 30x too large, and
checks the project's quality targets. Jobs are cached under `--out`, so an
interrupted benchmark resumes. The result is appended to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hyperpilot import report
from hyperpilot.bench import BENCHMARKS_MD
from hyperpilot.bundle import load_bundle
from hyperpilot.evaluation import available_methods, evaluate, load_suite

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


def quality(argv: Sequence[str] | None = None) -> int:
    """Evaluates a pilot on the held-out suite and records the quality targets."""
    parser = argparse.ArgumentParser(
        prog="hyperpilot bench quality",
        description="Evaluate a pilot on the frozen heldout suite against every "
        "method, plus bad starting learning rates, and append the results and the "
        "quality targets to docs/BENCHMARKS.md. Resumable: finished jobs are reused.",
    )
    parser.add_argument(
        "--pilot", default="default", help="bundle folder or shipped name"
    )
    parser.add_argument("--suite", default="heldout", help="evaluation suite")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task (>= 5)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench-quality"), help="job cache"
    )
    parser.add_argument(
        "--train-run",
        type=Path,
        help="the pilot's training run folder, to report meta-training wall time",
    )
    parser.add_argument("--md", type=Path, default=BENCHMARKS_MD, help="results file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from hyperpilot.runtime import configure_process

    configure_process()
    bundle = load_bundle(args.pilot)
    tasks, _ = load_suite(args.suite)
    labels = [t.label for t in tasks]
    methods = available_methods()
    progress = not args.no_progress
    records = evaluate(
        args.pilot,
        tasks,
        args.seeds,
        methods,
        args.out / "normal",
        NORMAL_LR,
        progress=progress,
    )
    rows = report.method_rows(records, methods)
    summary = report.summarize(rows, methods)
    report.write_outputs(
        args.out / "normal", rows, summary, records, {"suite": args.suite}
    )
    print(report.table(summary))

    bad_rows = {}
    for name, lr in BAD_STARTS.items():
        bad = evaluate(
            args.pilot,
            tasks,
            args.seeds,
            ["pilot", "constant"],
            args.out / f"init_lr_{lr:g}",
            lr,
            progress=progress,
        )
        bad_rows[name] = report.method_rows(bad, ["pilot", "constant"])

    lines = _targets(summary, rows, bad_rows, labels)
    command = "hyperpilot bench quality " + shlex.join(list(argv or []))
    _append(args.md, command.strip(), bundle, summary, rows, lines, args, tasks)
    print("\n".join(lines))
    print(f"appended to {args.md}")
    return 0


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
    bundle,
    summary: dict,
    rows: list[dict],
    lines: list[str],
    args: argparse.Namespace,
    tasks: list,
) -> None:
    training = bundle.meta.get("training", {})
    timesteps = int(training.get("timesteps", 0))
    cost = (
        f"checkpoint at {timesteps:,} meta-env steps = "
        f"{timesteps * bundle.decision_interval:,} inner steps"
    )
    if args.train_run is not None and (args.train_run / "progress.csv").is_file():
        with (args.train_run / "progress.csv").open() as handle:
            elapsed = [float(r["time/time_elapsed"]) for r in csv.DictReader(handle)]
        cost += f"; the whole run took {elapsed[-1] / 60:.1f} min wall time"
    text = (
        f"\n## Quality on `{args.suite}`, {datetime.date.today().isoformat()}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, CPU\n"
        f"- pilot: `{args.pilot}` (trained by `{training.get('command', '?')}`; {cost})\n"
        f"- tasks: {', '.join(t.label for t in tasks)}; seeds 0-{args.seeds - 1}; "
        f"every run starts at lr {NORMAL_LR:g}, beta1 0.9\n"
        f"- plots: `{args.out / 'normal' / 'plots'}` (profile.png, curves, schedules)\n\n"
        "```\n" + report.table(summary) + "\n```\n\n"
        "Performance profile (steps to the target loss, relative to the fastest "
        "method per task; score B integrates it):\n\n"
        "```\n" + report.profile_table(rows) + "\n```\n\n"
        "Targets (zero-shot, no per-task tuning of the pilot):\n\n"
        + "\n".join(lines)
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)
