"""A user-defined task family, loaded by import path in test_tasks.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hyperpilot.envs.tasks.base import (
    TaskFamily,
    TaskInstance,
    build_model,
    mse,
    torch_generator,
)


class CustomFamily(TaskFamily):
    """Linear regression on Gaussian inputs, with one shape knob."""

    def __init__(self, n_features: int = 4, horizon: int = 20) -> None:
        self.n_features = n_features
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        return (self.n_features,)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        generator = torch_generator(rng)
        x = torch.randn(96, self.n_features, generator=generator)
        y = x.sum(1, keepdim=True)
        model = build_model(lambda: nn.Linear(self.n_features, 1), generator)
        return TaskInstance(
            family=self.name,
            model=model,
            x_train=x[:64],
            y_train=y[:64],
            x_val=x[64:80],
            y_val=y[64:80],
            x_test=x[80:],
            y_test=y[80:],
            loss=mse,
            batch_size=16,
            horizon=self.horizon,
            data_seed=int(rng.integers(2**62)),
        )
