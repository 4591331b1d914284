"""Turns evaluation job records into results: tuned choices, metrics, tables, files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from hyperpilot.agents.methods import TUNED
from hyperpilot.metrics import R_MAX, performance_profile, performance_ratios, score_b
from hyperpilot.metrics import steps_to_target as first_step_at
from hyperpilot.runtime import atomic_path, atomic_write_text

TAB20 = colormaps["tab20"]  # more methods than the default ten colours
COLUMNS = (
    "task",
    "seed",
    "method",
    "lr",
    "test_loss",
    "test_accuracy",
    "best_val_loss",
    "final_val_loss",
    "steps_to_target",
    "diverged",
    "inner_steps",
)


def task_records(records: Sequence[dict]) -> dict[str, dict[str, list[dict]]]:
    """Records grouped as `[task][run] -> list over seeds`."""
    grouped: dict[str, dict[str, list[dict]]] = {}
    for record in records:
        grouped.setdefault(record["task"], {}).setdefault(record["run"], []).append(
            record
        )
    return grouped


def _median_final(runs: list[dict]) -> float:
    values = [math.inf if r["diverged"] else r["final_val_loss"] for r in runs]
    return float(np.median(values))


def method_rows(
    records: Sequence[dict], methods: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (task, seed, method); tuned methods pick their lr per task.

    A tuned method takes, for each task, the grid lr with the lowest median final
    validation loss over seeds, and is charged the inner steps of the whole grid.
    """
    rows = []
    for by_run in task_records(records).values():
        for method in methods:
            if method in TUNED:
                base = TUNED[method]
                grid = {
                    run: rs for run, rs in by_run.items() if run.startswith(f"{base}@")
                }
                if not grid:
                    continue
                chosen = min(grid, key=lambda run: _median_final(grid[run]))
                spent = {}
                for runs in grid.values():
                    for r in runs:
                        spent[r["seed"]] = spent.get(r["seed"], 0) + r["inner_steps"]
                for r in grid[chosen]:
                    rows.append(
                        _row(r, method, float(chosen.split("@")[1]), spent[r["seed"]])
                    )
            else:
                for r in by_run.get(method, []):
                    rows.append(_row(r, method, None, r["inner_steps"]))
    _add_steps_to_target(rows, records)
    return rows


def _row(record: dict, method: str, lr: float | None, spent: int) -> dict[str, Any]:
    return {
        "task": record["task"],
        "seed": record["seed"],
        "method": method,
        "lr": lr,
        "test_loss": record["test_loss"],
        "test_accuracy": record["test_accuracy"],
        "best_val_loss": record["best_val_loss"],
        "final_val_loss": record["final_val_loss"],
        "steps_to_target": None,
        "diverged": bool(record["diverged"]),
        "inner_steps": spent,
        "_record": record,
    }


def _add_steps_to_target(rows: list[dict], records: Sequence[dict]) -> None:
    """Target per task: the median over seeds of tuned cosine's best validation loss."""
    targets = {}
    for task in {r["task"] for r in rows}:
        cosine = [
            r["best_val_loss"]
            for r in rows
            if r["task"] == task and r["method"] == "tuned_cosine"
        ]
        if cosine:
            targets[task] = float(np.median(cosine))
    for row in rows:
        target = targets.get(row["task"])
        if target is not None:
            record = row["_record"]
            row["steps_to_target"] = first_step_at(
                record["steps"], record["val_loss"], target
            )


def median_steps_to_target(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """`[method][task]` -> the median over seeds of steps to target (where known)."""
    times: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row["steps_to_target"] is not None:
            by_task = times.setdefault(row["method"], {})
            by_task.setdefault(row["task"], []).append(row["steps_to_target"])
    return {
        m: {t: float(np.median(v)) for t, v in by.items()} for m, by in times.items()
    }


def summarize(
    rows: Sequence[dict], methods: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per method: test loss against constant Adam, wins, divergences, score B, cost."""
    by_key = {(r["task"], r["seed"], r["method"]): r for r in rows}
    medians = median_steps_to_target(rows)
    scores = score_b(medians) if medians else {}
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        ratios, wins = [], []
        for r in mine:
            base = by_key.get((r["task"], r["seed"], "constant"))
            if base is not None and method != "constant":
                mine_loss = math.inf if r["diverged"] else r["test_loss"]
                base_loss = math.inf if base["diverged"] else base["test_loss"]
                ratios.append(
                    mine_loss / base_loss if math.isfinite(base_loss) else math.nan
                )
                wins.append(mine_loss < base_loss)
        summary[method] = {
            "runs": len(mine),
            "median_test_loss_vs_constant": float(np.median(ratios))
            if ratios
            else None,
            "wins_vs_constant": float(np.mean(wins)) if wins else None,
            "divergences": sum(r["diverged"] for r in mine),
            "score_b": scores.get(method),
            "inner_steps": int(sum(r["inner_steps"] for r in mine)),
            "median_test_loss": {
                task: float(
                    np.median([r["test_loss"] for r in mine if r["task"] == task])
                )
                for task in dict.fromkeys(r["task"] for r in mine)
            },
        }
    return summary


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The terminal table."""

    def fmt(value: Any, spec: str) -> str:
        return (
            "-"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else format(value, spec)
        )

    lines = [
        f"{'method':<16} {'test/const':>10} {'wins':>6} {'diverged':>8} {'score B':>8} "
        f"{'inner steps':>12}"
    ]
    for method, s in summary.items():
        lines.append(
            f"{method:<16} {fmt(s['median_test_loss_vs_constant'], '.3f'):>10} "
            f"{fmt(s['wins_vs_constant'], '.0%'):>6} {s['divergences']:>8} "
            f"{fmt(s['score_b'], '.3f'):>8} {s['inner_steps']:>12,}"
        )
    tasks = list(
        dict.fromkeys(t for s in summary.values() for t in s["median_test_loss"])
    )
    lines.append("")
    lines.append("median final test loss per task:")
    header = f"{'method':<16}" + "".join(f" {t[:22]:>22}" for t in tasks)
    lines.append(header)
    for method, s in summary.items():
        cells = "".join(
            f" {fmt(s['median_test_loss'].get(t), '.4g'):>22}" for t in tasks
        )
        lines.append(f"{method:<16}{cells}")
    return "\n".join(lines)


def profile_table(
    rows: Sequence[dict], taus: Sequence[float] = (1.0, 1.5, 2.0, 4.0)
) -> str:
    """The performance profile as text, one line per method.

    Each column is the share of tasks whose median steps to target is within a factor
    `tau` of the fastest method's.
    """
    medians = median_steps_to_target(rows)
    if not medians:
        return ""
    profile = performance_profile(performance_ratios(medians), np.asarray(taus))
    header = f"{'share of tasks within':<22}" + "".join(f"{t:>8g}x" for t in taus)
    lines = [header] + [
        f"{method:<22}" + "".join(f"{v:>9.0%}" for v in values)
        for method, values in profile.items()
    ]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float in it (nested too) as None, for JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(
    out: Path, rows: list[dict], summary: dict, records: Sequence[dict], settings: dict
) -> list[Path]:
    """Writes results.json, results.csv, PNG plots and TensorBoard folders."""
    written = []
    clean = [{k: _finite(r[k]) for k in COLUMNS} for r in rows]
    results = _finite({"settings": settings, "summary": summary, "runs": clean})
    path = out / "results.json"
    text = json.dumps(results, indent=1, allow_nan=False)
    atomic_write_text(path, text)
    written.append(path)
    path = out / "results.csv"
    with atomic_path(path) as temp, temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(clean)
    written.append(path)
    written += _plots(out / "plots", rows, summary)
    _tensorboard(out / "tensorboard", rows)
    return written


def _first_seed(rows: list[dict]) -> dict[str, dict[str, dict]]:
    chosen: dict[str, dict[str, dict]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        chosen.setdefault(r["task"], {}).setdefault(r["method"], r["_record"])
    return chosen


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _plots(folder: Path, rows: list[dict], summary: dict) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task, by_method in _first_seed(rows).items():
        figure = Figure(figsize=(7, 4.5))
        axis = figure.subplots()
        axis.set_prop_cycle(color=[TAB20(i) for i in range(20)])
        for method, record in by_method.items():
            axis.plot(record["steps"], record["val_loss"], label=method)
        axis.set(
            title=f"{task}: validation loss (seed 0)", xlabel="inner step", yscale="log"
        )
        axis.legend(fontsize="x-small")
        path = folder / f"curves_{_safe(task)}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)
        if "pilot" in by_method:
            figure = Figure(figsize=(12, 3.5))
            axes = figure.subplots(1, 3)
            for method in ("pilot", "tuned_cosine"):
                if method in by_method:
                    record = by_method[method]
                    for axis, key in zip(axes, ("lr", "beta1", "clip")):
                        axis.plot(record["steps"], record[key], label=method)
            for axis, key in zip(axes, ("lr", "beta1", "clip")):
                axis.set(title=key, xlabel="inner step")
                if key != "beta1":
                    axis.set_yscale("log")
            axes[0].legend(fontsize="small")
            figure.suptitle(f"{task}: schedules (seed 0)")
            path = folder / f"schedule_{_safe(task)}.png"
            figure.savefig(path, dpi=110, bbox_inches="tight")
            written.append(path)
    medians = median_steps_to_target(rows)
    if medians:
        taus = np.linspace(1.0, R_MAX, 301)
        profile = performance_profile(performance_ratios(medians), taus)
        figure = Figure(figsize=(6, 4))
        axis = figure.subplots()
        axis.set_prop_cycle(color=[TAB20(i) for i in range(20)])
        for method, values in profile.items():
            axis.step(taus, values, where="post", label=method)
        axis.set(
            title="performance profile (steps to target)",
            xlabel="ratio to fastest",
            ylabel="share of tasks",
            ylim=(0, 1.02),
        )
        axis.legend(fontsize="x-small")
        path = folder / "profile.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)
    return written


def _tensorboard(folder: Path, rows: list[dict]) -> None:
    """One folder per (method, task), seed 0, with `inner/*` and `hparams/*` per step."""
    for task, by_method in _first_seed(rows).items():
        for method, record in by_method.items():
            with SummaryWriter(str(folder / method / _safe(task))) as writer:
                for i, step in enumerate(record["steps"]):
                    writer.add_scalar("inner/train_loss", record["train_loss"][i], step)
                    writer.add_scalar("inner/val_loss", record["val_loss"][i], step)
                    for key in ("lr", "beta1", "clip"):
                        if math.isfinite(record[key][i]):
                            writer.add_scalar(f"hparams/{key}", record[key][i], step)
