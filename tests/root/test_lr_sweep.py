"""scripts/lr_sweep.py: evaluate's tuned choice and constant / tuned cosine per task."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lr_sweep.py"


def _lr_sweep():
    spec = importlib.util.spec_from_file_location("lr_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_reports_evaluates_tuned_choice(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("families:\n  - family: logreg_blobs\n    horizon: 40\nseeds: 2\n")
    (row,) = _lr_sweep().sweep(str(suite), 2, tmp_path / "out")
    assert row["best_constant_lr"] in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    assert row["constant_vs_tuned_cosine"] > 0
    # the chosen lr is the grid point with the lowest median final validation loss
    finals = {}
    for path in (tmp_path / "out" / "jobs").rglob("constant@*/seed*.json"):
        record = json.loads(path.read_text())
        finals.setdefault(record["run"], []).append(record["final_val_loss"])
    best = min(finals, key=lambda run: float(np.median(finals[run])))
    assert row["best_constant_lr"] == pytest.approx(float(best.split("@")[1]))
