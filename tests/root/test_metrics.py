import json
import math

import numpy as np
import pytest

from hyperpilot.metrics import (
    performance_profile,
    performance_ratios,
    score_b,
    steps_to_target,
)
from hyperpilot.report import profile_table, write_outputs


def test_steps_to_target_is_the_first_step_at_or_below():
    assert steps_to_target([10, 20, 30], [1.0, 0.5, 0.4], 0.5) == 20
    assert steps_to_target([10, 20], [1.0, math.nan], 0.5) == math.inf


def test_ratios_profile_and_score_b():
    times = {
        "fast": {"a": 10.0, "b": 20.0},
        "half": {"a": 20.0, "b": 40.0},
        "miss": {"a": math.inf, "b": 20.0},
    }
    ratios = performance_ratios(times)
    assert ratios["fast"] == {"a": 1.0, "b": 1.0}
    assert ratios["half"] == {"a": 2.0, "b": 2.0}
    assert ratios["miss"]["a"] == math.inf
    profile = performance_profile(ratios, np.array([1.0, 2.0]))
    np.testing.assert_allclose(profile["miss"], [0.5, 0.5])
    scores = score_b(times)
    assert scores["fast"] == pytest.approx(1.0)
    assert scores["half"] == pytest.approx(2 / 3, abs=1e-3)  # ratio 2 of r_max 4
    assert scores["miss"] == pytest.approx(0.5)


def test_a_task_nobody_reached_counts_as_missed_for_all():
    ratios = performance_ratios({"x": {"a": math.inf}, "y": {"a": math.inf}})
    assert ratios == {"x": {"a": math.inf}, "y": {"a": math.inf}}


def test_profile_table_gives_each_methods_share_of_tasks_per_factor():
    rows = [
        {"method": method, "task": task, "steps_to_target": steps}
        for method, task, steps in (
            ("fast", "a", 10),
            ("fast", "b", 20),
            ("slow", "a", 30),  # 3x the fastest on a
            ("slow", "b", 20),
        )
    ]
    lines = profile_table(rows, taus=(1.0, 2.0, 4.0)).splitlines()
    assert lines[0].split()[-3:] == ["1x", "2x", "4x"]
    assert lines[1].split() == ["fast", "100%", "100%", "100%"]
    assert lines[2].split() == ["slow", "50%", "50%", "100%"]


def test_results_json_writes_a_diverged_methods_infinite_medians_as_null(tmp_path):
    curves = {
        "steps": [10, 20],
        "train_loss": [2.0, math.inf],
        "val_loss": [2.0, 3.0],
        "lr": [1e-3, 1e-3],
        "beta1": [0.9, 0.9],
        "clip": [math.inf, math.inf],
    }
    row = {
        "task": "t",
        "seed": 0,
        "method": "pilot",
        "lr": 1e-3,
        "test_loss": math.inf,
        "test_accuracy": None,
        "best_val_loss": 2.0,
        "final_val_loss": math.nan,
        "steps_to_target": None,
        "diverged": True,
        "inner_steps": 20,
        "_record": curves,
    }
    summary = {"pilot": {"median_test_loss": {"t": math.inf}, "ratio": [1.0, math.nan]}}
    write_outputs(tmp_path, [row], summary, [], {"init_lr": 1e-3})
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["summary"]["pilot"] == {
        "median_test_loss": {"t": None},
        "ratio": [1.0, None],
    }
    assert results["runs"][0]["test_loss"] is None
    assert results["runs"][0]["final_val_loss"] is None
