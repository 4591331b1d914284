"""A tiny family with model buffers, loaded by import path by the engine's tests.

`norm_family:NormFamily` classifies Gaussian points by a random linear teacher
with a small BatchNorm network (BatchNorm1d after a linear layer, or BatchNorm2d
after a convolution) and `SeededDropout`, so the envs' contract tests cover
buffers, train/eval modes and per-run randomness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hyperpilot.envs.tasks.base import (
    Range,
    SeededDropout,
    TaskFamily,
    TaskInstance,
    accuracy,
    build_model,
    cross_entropy,
    draw,
    draw_int,
    instance_from_splits,
    torch_generator,
)

SIZES = (96, 32, 32)
SIDE = 4  # images are SIDE x SIDE, one channel
CLASSES = 3


class NormFamily(TaskFamily):
    """Points (or 4x4 images) labelled by a linear teacher, learnt by a BatchNorm net.

    The net: Linear (or Conv2d), BatchNorm, ReLU, SeededDropout, Linear.

    Args:
        kind: `mlp` (Linear, BatchNorm1d) or `cnn` (Conv2d, BatchNorm2d) (shape knob).
        width: Hidden units or channels (shape knob).
        batch_size: Rows per inner step (shape knob).
        dropout: Dropout rate after the ReLU (shape knob).
        weight_decay: Decoupled weight decay of the inner AdamW (free).
        horizon: Inner steps per run (free).
    """

    def __init__(
        self,
        kind: str = "mlp",
        width: int = 8,
        batch_size: int = 16,
        dropout: float = 0.0,
        weight_decay: Range = 0.0,
        horizon: Range = 40,
    ) -> None:
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}")
        self.kind, self.width, self.batch_size = kind, width, batch_size
        self.dropout = dropout
        self.weight_decay, self.horizon = weight_decay, horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        return (self.kind, self.width, self.batch_size, self.dropout)

    def _model(self) -> nn.Module:
        if self.kind == "mlp":
            # No bias before a BatchNorm: its gradient is 0 up to rounding, which Adam
            # would blow up to lr-sized steps of noise.
            linear = nn.Linear(SIDE * SIDE, self.width, bias=False)
            hidden = [linear, nn.BatchNorm1d(self.width)]
        else:
            hidden = [
                nn.Unflatten(1, (1, SIDE, SIDE)),
                nn.Conv2d(1, self.width, 3, padding=1, bias=False),
                nn.BatchNorm2d(self.width),
                nn.Flatten(),
            ]
        out = self.width * (1 if self.kind == "mlp" else SIDE * SIDE)
        head = [nn.ReLU(), SeededDropout(self.dropout), nn.Linear(out, CLASSES)]
        return nn.Sequential(*hidden, *head)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        knobs = {
            "horizon": draw_int(rng, self.horizon),
            "weight_decay": draw(rng, self.weight_decay),
        }
        generator = torch_generator(rng)
        # a shift and scale away from 0 and 1, so the running statistics matter
        x = 3.0 + 2.0 * torch.randn(sum(SIZES), SIDE * SIDE, generator=generator)
        teacher = torch.randn(SIDE * SIDE, CLASSES, generator=generator)
        y = ((x - 3.0) @ teacher).argmax(1)
        model = build_model(self._model, generator)
        x_train, x_val, x_test = x.split(SIZES)
        y_train, y_val, y_test = y.split(SIZES)
        return instance_from_splits(
            self.name,
            model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            loss=cross_entropy,
            accuracy=accuracy,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )
