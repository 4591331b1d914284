"""Evaluation metrics in the spirit of AlgoPerf.

Steps to target, performance profiles and the integrated score B
(https://arxiv.org/abs/2306.07179).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

R_MAX = 4.0


def steps_to_target(
    steps: Sequence[int], val_losses: Sequence[float], target: float
) -> float:
    """The first inner step whose validation loss is at or below `target` (inf if never)."""
    for step, loss in zip(steps, val_losses):
        if math.isfinite(loss) and loss <= target:
            return float(step)
    return math.inf


def performance_ratios(
    times: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """`times[method][task]` divided by the fastest method's time on that task.

    A task no method reached gives every method an infinite ratio.
    """
    tasks = {task for by_task in times.values() for task in by_task}
    best = {task: min(t.get(task, math.inf) for t in times.values()) for task in tasks}
    return {
        method: {
            task: (by_task.get(task, math.inf) / best[task])
            if math.isfinite(best[task]) and best[task] > 0
            else math.inf
            for task in tasks
        }
        for method, by_task in times.items()
    }


def performance_profile(
    ratios: Mapping[str, Mapping[str, float]], taus: np.ndarray
) -> dict[str, np.ndarray]:
    """For each method, the share of tasks whose ratio is at most each `tau`."""
    profile = {}
    for method, by_task in ratios.items():
        values = np.array(list(by_task.values()), dtype=float)
        profile[method] = (values[None, :] <= taus[:, None]).mean(axis=1)
    return profile


def score_b(
    times: Mapping[str, Mapping[str, float]], r_max: float = R_MAX
) -> dict[str, float]:
    """AlgoPerf's benchmark score: the profile integrated over [1, r_max], scaled to [0, 1].

    It compares methods within one evaluation only: the fastest method on a task
    sets that task's ratio 1.
    """
    taus = np.linspace(1.0, r_max, 1001)
    profile = performance_profile(performance_ratios(times), taus)
    return {
        method: float(np.trapezoid(values, taus) / (r_max - 1.0))
        for method, values in profile.items()
    }
