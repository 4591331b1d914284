"""What starts an episode: a task instance, initial hyperparameters, validation on or off."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperpilot.envs.tasks.base import TaskFamily, TaskInstance, draw


@dataclass(frozen=True)
class InitRanges:
    """Ranges the initial hyperparameters are drawn from.

    Wide ranges teach a policy to recover from a bad start. lr and clip are drawn
    log-uniform, beta1 uniform; `[v, v]` fixes a value.
    """

    lr: tuple[float, float] = (1e-5, 1e-1)
    beta1: tuple[float, float] = (0.8, 0.95)
    clip: tuple[float, float] = (0.1, 100.0)

    def __post_init__(self) -> None:
        for name, (low, high), (valid_low, valid_high) in (
            ("lr", self.lr, (1e-6, 1.0)),
            ("beta1", self.beta1, (0.5, 0.999)),
            ("clip", self.clip, (1e-2, 1e3)),
        ):
            if not valid_low <= low <= high <= valid_high:
                raise ValueError(
                    f"init range {name}=[{low}, {high}] must be ordered and inside "
                    f"[{valid_low}, {valid_high}]"
                )


@dataclass(frozen=True)
class Episode:
    """One run to start: the instance, its initial (lr, beta1, clip), validation flag."""

    instance: TaskInstance
    lr: float
    beta1: float
    clip: float
    val_available: bool


def draw_episode(
    family: TaskFamily,
    rng: np.random.Generator,
    init: InitRanges,
    val_drop_prob: float = 0.0,
) -> Episode:
    """Draws an episode from `rng` alone, always in the same order.

    So the two env views (and a re-run with the same seed) start identical episodes.
    """
    instance = family.sample(rng)
    lr = draw(rng, init.lr, log=True)
    beta1 = draw(rng, init.beta1)
    clip = draw(rng, init.clip, log=True)
    val_available = bool(rng.random() >= val_drop_prob)
    return Episode(instance, lr, beta1, clip, val_available)
