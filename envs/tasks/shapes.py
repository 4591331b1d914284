"""`bn_cnn_shapes`: a BatchNorm CNN classifies procedurally drawn shape images."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from hyperpilot.envs.tasks.base import (
    Range,
    TaskFamily,
    TaskInstance,
    classification_instance,
    draw,
    draw_int,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family

SHAPES = ("disk", "square", "triangle", "ring", "cross", "bar")
"""The classes, in label order."""


def shape_images(
    generator: torch.Generator, n: int, size: int, clutter: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images `[n, 1, size, size]` of one shape each, and labels `[n]`.

    Each image holds one shape of `SHAPES` with a random centre, radius (15-35%
    of the side), rotation and brightness on a background with a random linear
    gradient, plus Gaussian pixel noise of standard deviation `clutter`.

    Args:
        generator: Source of all randomness.
        n: Images.
        size: Pixels a side.
        clutter: Pixel-noise standard deviation (brightness is about 1).

    Returns:
        Float32 images, standardized to zero mean and unit variance over the
        whole set, and int64 labels.
    """
    labels = torch.randint(len(SHAPES), (n,), generator=generator)
    centre = (torch.rand(n, 2, generator=generator) - 0.5) * 0.6
    radius = 0.3 + 0.4 * torch.rand(n, generator=generator)
    angle = torch.rand(n, generator=generator) * math.pi
    brightness = 0.5 + torch.rand(n, generator=generator)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    dx = xx - centre[:, None, None, 0]
    dy = yy - centre[:, None, None, 1]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    r = radius[:, None, None]
    distance = (u.pow(2) + v.pow(2)).sqrt()
    masks = torch.stack(
        [
            distance < r,
            (u.abs() < 0.8 * r) & (v.abs() < 0.8 * r),
            (v > -0.5 * r) & (v < r - 1.7 * u.abs()),
            (distance < r) & (distance > 0.6 * r),
            ((u.abs() < 0.25 * r) | (v.abs() < 0.25 * r)) & (distance < r),
            (u.abs() < r) & (v.abs() < 0.25 * r),
        ]
    )
    mask = masks[labels, torch.arange(n)].to(torch.float32)
    gradient = torch.randn(n, 2, generator=generator) * 0.3
    background = gradient[:, None, None, 0] * xx + gradient[:, None, None, 1] * yy
    images = background + brightness[:, None, None] * mask
    images = images + clutter * torch.randn(images.shape, generator=generator)
    images = (images - images.mean()) / images.std()
    return images[:, None], labels


class BNCNN(nn.Module):
    """conv-BN-ReLU x3 (the last two with stride 2), global average pool, linear."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images `[..., 1, size, size]`."""
        return self.head(self.features(x).mean((-2, -1)))


@register_family("bn_cnn_shapes")
class BNCNNShapes(TaskFamily):
    """A BatchNorm CNN names the shape in small generated grey images (6 classes).

    Images from `shape_images`, drawn per instance; 2048 / 256 / 512 train / val
    / test images. The loss is cross-entropy, >= 0. The engine runs the model in
    train mode (batch statistics) for the inner steps and in eval mode (running
    statistics) for validation and test.

    Args:
        channels: Channels of the first convolution (shape knob).
        size: Pixels a side (shape knob).
        batch_size: Images per inner step (shape knob).
        clutter: Pixel-noise standard deviation (free).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (2048, 256, 512)

    def __init__(
        self,
        channels: int = 8,
        size: int = 16,
        batch_size: int = 32,
        clutter: Range = (0.2, 0.5),
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 400,
    ) -> None:
        self.channels = int(channels)
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.clutter = clutter
        self.label_noise = label_noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Channels, image size, batch size and data sizes."""
        return (self.channels, self.size, self.batch_size, self.SIZES)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the images, label flips and the initial weights from `rng`."""
        knobs = {
            "clutter": draw(rng, self.clutter),
            "label_noise": draw(rng, self.label_noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y = shape_images(generator, sum(self.SIZES), self.size, knobs["clutter"])
        x_train, x_val, x_test = x.split(self.SIZES)
        y_train, y_val, y_test = y.split(self.SIZES)
        return classification_instance(
            self.name,
            lambda: BNCNN(self.channels, len(SHAPES)),
            (x_train, y_train, x_val, y_val, x_test, y_test),
            n_classes=len(SHAPES),
            knobs=knobs,
            batch_size=self.batch_size,
            generator=generator,
            rng=rng,
        )
