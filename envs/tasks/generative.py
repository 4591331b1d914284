"""Generative losses: `autoencoder_digits` (reconstruction) and VAEs (negative ELBO)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hyperpilot.envs.tasks.base import (
    Range,
    TaskFamily,
    TaskInstance,
    build_model,
    draw,
    draw_int,
    instance_from_splits,
    mlp,
    split_rows,
    torch_generator,
)
from hyperpilot.envs.tasks.digits import load_digits
from hyperpilot.envs.tasks.registry import register_family


class Autoencoder(nn.Module):
    """A ReLU MLP encoder to a `code`-unit bottleneck and a mirrored decoder."""

    def __init__(self, n_in: int, width: int, code: int) -> None:
        super().__init__()
        self.encode = mlp(n_in, width, 1, code)
        self.decode = mlp(code, width, 1, n_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `x`."""
        return self.decode(self.encode(x))


def summed_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, averaged over rows; >= 0."""
    return (output - target).pow(2).flatten(1).sum(-1).mean()


@register_family("autoencoder_digits")
class AutoencoderDigits(TaskFamily):
    """An MLP autoencoder reconstructs scikit-learn's 8x8 digits (pixels / 16).

    Each instance draws its own 1024 / 256 / 256 train / val / test digits; the
    target is the clean image and the input a copy with Gaussian `noise` (a
    denoising autoencoder when > 0; validation and test inputs are clean). The
    loss is the squared error summed over the 64 pixels, averaged over rows, >= 0.

    Args:
        width: Units of the encoder's and decoder's hidden layer (shape knob).
        code: Bottleneck units (shape knob).
        batch_size: Rows per inner step (shape knob).
        noise: Standard deviation of the input noise (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (1024, 256, 256)

    def __init__(
        self,
        width: int = 64,
        code: int = 8,
        batch_size: int = 64,
        noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        self.width = int(width)
        self.code = int(code)
        self.batch_size = int(batch_size)
        self.noise = noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, code, batch size and data sizes."""
        return (self.width, self.code, self.batch_size, self.SIZES)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the rows, input noise and initial weights from `rng`."""
        knobs = {
            "noise": draw(rng, self.noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, _ = load_digits()
        x_train, _, x_val, _, x_test, _ = split_rows(x, x, self.SIZES, generator)
        noisy = x_train + knobs["noise"] * torch.randn(
            x_train.shape, generator=generator
        )
        model = build_model(
            lambda: Autoencoder(x.shape[1], self.width, self.code),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            (noisy, x_train, x_val, x_val, x_test, x_test),
            loss=summed_squared_error,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )
