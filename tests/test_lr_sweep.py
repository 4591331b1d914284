"""scripts/lr_sweep.py: the batched lr grid gives evaluate's runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hyperpilot.bundle import load_bundle
from hyperpilot.envs.tasks.splits import FamilySpec
from hyperpilot.evaluation import EvalTask, Job, run_job

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lr_sweep.py"


def _lr_sweep():
    spec = importlib.util.spec_from_file_location("lr_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batched_grid_matches_evaluate_run_by_run():
    lr_sweep = _lr_sweep()
    bundle = load_bundle("default")
    task = EvalTask("logreg", FamilySpec("logreg_blobs", {"horizon": 40}))
    rows = lr_sweep.sweep(task, 2, bundle)
    assert len(rows) == 2 * 5 * 2  # schedules x grid x seeds
    for row in rows:
        if row["lr"] not in (1e-4, 1e-2):
            continue
        method = "constant" if row["schedule"] == "constant" else "cosine"
        record = run_job(
            Job(task, row["seed"], f"{method}@{row['lr']:g}"), bundle, 1e-3
        )
        assert row["final_val_loss"] == pytest.approx(record["final_val_loss"], 1e-5)
        assert row["test_loss"] == pytest.approx(record["test_loss"], 1e-5)
    summary = lr_sweep.summary(rows)
    assert summary["best_constant_lr"] in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
