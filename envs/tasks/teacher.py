"""`mlp_teacher`: a student MLP regresses a random teacher MLP's outputs."""

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
    mse,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family


def teacher_data(
    generator: torch.Generator,
    n: int,
    n_features: int,
    width: int,
    depth: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws a random tanh teacher MLP, then `N(0, I)` inputs and its outputs.

    Args:
        generator: Source of the teacher's weights, then of the inputs.
        n: Rows.
        n_features: Input dimension.
        width: The teacher's hidden units.
        depth: The teacher's hidden layers.
        scale: The teacher's initialization scale (above 1 saturates its units).

    Returns:
        Inputs `[n, n_features]` and the teacher's outputs `[n, 1]`.
    """
    teacher = build_model(
        lambda: mlp(n_features, width, depth, 1, nn.Tanh), generator, scale
    )
    x = torch.randn(n, n_features, generator=generator)
    with torch.no_grad():
        return x, teacher(x)


@register_family("mlp_teacher")
class MLPTeacher(TaskFamily):
    """Student-teacher regression: Gaussian inputs labelled by a random tanh MLP.

    The teacher (one tanh layer of 8 units, drawn per instance at three times the
    default initialization scale so its units saturate) labels `N(0, I)` inputs. A
    wider or deeper teacher was almost linear at this data size, so a student
    barely beat least squares; this one leaves an MLP a clear margin. Targets are
    standardized with the training rows' statistics, then Gaussian noise is added
    to the training targets only, so validation and test measure the clean function.
    Targets are `[n, 1]` float32. Data: 1024 / 256 / 256 train / val / test rows.

    Args:
        width: Units per hidden layer of the student (shape knob).
        depth: Hidden layers of the student (shape knob).
        n_features: Input dimension (shape knob).
        batch_size: Rows per inner step (shape knob).
        noise: Standard deviation of the training-target noise, relative to the
            target's (free).
        init_scale: Multiplier on the student's default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (1024, 256, 256)
    TEACHER_WIDTH = 8
    TEACHER_DEPTH = 1
    TEACHER_SCALE = 3.0

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        n_features: int = 16,
        batch_size: int = 64,
        noise: Range = (0.0, 0.5),
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.n_features = int(n_features)
        self.batch_size = int(batch_size)
        self.noise = noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, features, batch size and data sizes."""
        return (self.width, self.depth, self.n_features, self.batch_size, self.SIZES)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the teacher, the inputs, the noise and the student's weights."""
        knobs = {
            "noise": draw(rng, self.noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        n_train, n_val, n_test = self.SIZES
        x, y = teacher_data(
            generator,
            n_train + n_val + n_test,
            self.n_features,
            self.TEACHER_WIDTH,
            self.TEACHER_DEPTH,
            self.TEACHER_SCALE,
        )
        y = (y - y[:n_train].mean()) / y[:n_train].std().clamp_min(1e-6)
        x_train, x_val, x_test = x.split(self.SIZES)
        y_train, y_val, y_test = y.split(self.SIZES)
        y_train = y_train + knobs["noise"] * torch.randn(
            y_train.shape, generator=generator
        )
        model = build_model(
            lambda: mlp(self.n_features, self.width, self.depth, 1),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            loss=mse,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )
