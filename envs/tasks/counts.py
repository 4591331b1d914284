"""Count regression with the Poisson likelihood: `poisson_nll`, `mlp_poisson_teacher`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hyperpilot.envs.tasks.base import (
    Range,
    TaskFamily,
    TaskInstance,
    build_model,
    draw,
    draw_int,
    instance_from_splits,
    mlp,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family
from hyperpilot.envs.tasks.teacher import teacher_data


def poisson_nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Poisson negative log-likelihood of counts, with its log-factorial term.

    `output` `[n, 1]` is the log rate; per row the loss is
    `exp(output) - target * output + lgamma(target + 1)`, the exact
    `-log Poisson(target | exp(output))`. A probability mass is at most 1, so the
    loss is >= 0 (torch's `poisson_nll_loss` leaves the constant out, or, with
    `full=True`, approximates it by Stirling's formula).
    """
    log_rate = output.squeeze(-1)
    return (log_rate.exp() - target * log_rate + torch.lgamma(target + 1)).mean()


@register_family("mlp_poisson_teacher")
class MLPPoissonTeacher(TaskFamily):
    """A ReLU MLP regresses Poisson counts whose log rate is a random teacher MLP.

    Inputs `N(0, I)` `[n, n_features]`; the teacher (one tanh layer of 16 units at
    twice the default initialization scale) gives a standardized score `s`, and a
    row's count is drawn `Poisson(rate * exp(s) / E[exp(s)])`, so `rate` is the
    mean count. Targets are float32 counts `[n]`; the loss is `poisson_nll`, >= 0.
    Data: 2048 / 256 / 512 train / val / test rows.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        n_features: Input dimension (shape knob).
        batch_size: Rows per inner step (shape knob).
        rate: Mean count (free, log-uniform).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (2048, 256, 512)
    TEACHER_WIDTH = 16

    def __init__(
        self,
        width: int = 32,
        depth: int = 2,
        n_features: int = 8,
        batch_size: int = 64,
        rate: Range = (0.5, 20.0),
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.n_features = int(n_features)
        self.batch_size = int(batch_size)
        self.rate = rate
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, features, batch size and data sizes."""
        return (self.width, self.depth, self.n_features, self.batch_size, self.SIZES)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the teacher, inputs, counts and the student's weights from `rng`."""
        knobs = {
            "rate": draw(rng, self.rate, log=True),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, score = teacher_data(
            generator, sum(self.SIZES), self.n_features, self.TEACHER_WIDTH, 1, 2.0
        )
        score = score[:, 0]
        score = (score - score.mean()) / score.std().clamp_min(1e-6)
        rates = knobs["rate"] * score.exp() / score.exp().mean()
        y = torch.poisson(rates, generator=generator)
        splits = tuple(
            t for pair in zip(x.split(self.SIZES), y.split(self.SIZES)) for t in pair
        )
        model = build_model(
            lambda: mlp(self.n_features, self.width, self.depth, 1),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            splits,
            loss=poisson_nll,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )
