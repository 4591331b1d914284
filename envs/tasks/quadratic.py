"""`quadratic_2d`: a noisy quadratic bowl, the fast family every test uses."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hyperpilot.envs.tasks.base import (
    Range,
    TaskFamily,
    TaskInstance,
    draw,
    draw_int,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family


class _Residual(nn.Module):
    """Maps a row `[target sample | sqrt curvature]` to the weighted residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.position = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target, sqrt_curvature = x[..., : self.dim], x[..., self.dim :]
        return (self.position - target) * sqrt_curvature


def _half_squared_norm(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    del target  # the centre samples travel in the inputs
    return 0.5 * output.pow(2).sum(-1).mean()


@register_family("quadratic_2d")
class Quadratic2D(TaskFamily):
    """A 2-D quadratic `0.5 * sum_i h_i (w_i - c_i)^2` with noisy minibatch targets.

    Each data row holds a noisy sample of the centre `c` and the square roots of the
    curvatures `h`, so a minibatch gives a noisy gradient, as in the noisy quadratic
    model of Zhang et al. 2019 (https://arxiv.org/abs/1907.04164).

    Args:
        batch_size: Rows per inner step (shape knob).
        condition: Ratio of the largest to the smallest curvature (free).
        noise: Standard deviation of the centre samples (free).
        init_scale: Distance of the start from the centre (free).
        horizon: Inner steps per run (free).
    """

    DIM = 2
    SIZES = (256, 64, 64)

    def __init__(
        self,
        batch_size: int = 16,
        condition: Range = (1.0, 100.0),
        noise: Range = (0.1, 1.0),
        init_scale: Range = (1.0, 3.0),
        horizon: Range = 100,
    ) -> None:
        self.batch_size = int(batch_size)
        self.condition = condition
        self.noise = noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Dimension and batch size."""
        return (self.DIM, self.batch_size)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws curvatures, centre, start and noisy rows from `rng`."""
        knobs = {
            "condition": draw(rng, self.condition, log=True),
            "noise": draw(rng, self.noise, log=True),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        centre = torch.randn(self.DIM, generator=generator)
        curvature = torch.logspace(0, np.log10(knobs["condition"]), self.DIM)
        model = _Residual(self.DIM)
        with torch.no_grad():
            direction = torch.randn(self.DIM, generator=generator)
            model.position.copy_(centre + knobs["init_scale"] * direction)

        def rows(n: int) -> torch.Tensor:
            samples = centre + knobs["noise"] * torch.randn(
                n, self.DIM, generator=generator
            )
            return torch.cat([samples, curvature.sqrt().expand(n, -1)], dim=1)

        n_train, n_val, n_test = self.SIZES
        return TaskInstance(
            family=self.name,
            model=model,
            x_train=rows(n_train),
            y_train=torch.zeros(n_train),
            x_val=rows(n_val),
            y_val=torch.zeros(n_val),
            x_test=rows(n_test),
            y_test=torch.zeros(n_test),
            loss=_half_squared_norm,
            batch_size=self.batch_size,
            horizon=knobs["horizon"],
            data_seed=int(rng.integers(2**62)),
            knobs=knobs,
        )
