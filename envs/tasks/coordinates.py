"""Coordinate networks fitting a photograph: `coord_mlp_flower`, `fourier_mlp_hopper`."""

from __future__ import annotations

import functools
import math
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
    mse,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family


@functools.cache
def load_image(name: str, resolution: int) -> torch.Tensor:
    """A photograph shipped inside an installed package, as float32 `[3, r, r]`.

    The image is centre-cropped to a square and area-downsampled to `resolution`
    pixels a side; values are in `[0, 1]`. Never downloaded.

    Args:
        name: `flower` or `china` (scikit-learn's `load_sample_image`, 427 x 640)
            or `grace_hopper` (matplotlib's sample data, 600 x 512).
        resolution: Pixels a side.

    Returns:
        The image; callers must not modify it.
    """
    if name in ("flower", "china"):
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        import matplotlib.image
        from matplotlib import cbook

        pixels = matplotlib.image.imread(cbook.get_sample_data("grace_hopper.jpg"))
    else:
        raise ValueError(
            f"unknown image {name!r}; choose flower, china or grace_hopper"
        )
    image = torch.from_numpy(np.array(pixels, dtype=np.float32) / 255.0)
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side].permute(2, 0, 1)
    return torch.nn.functional.adaptive_avg_pool2d(square, resolution)


def pixel_grid(resolution: int) -> torch.Tensor:
    """Pixel-centre coordinates in `[-1, 1]^2`, row-major, `[resolution^2, 2]`."""
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    return torch.cartesian_prod(axis, axis)


def fourier_features(coords: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Random Fourier features `[sin(2 pi v B^T), cos(2 pi v B^T)]` of coordinates.

    Tancik et al. 2020 (https://arxiv.org/abs/2006.10739): with Gaussian `B`, the
    scale of `B` sets which image frequencies an MLP can fit.
    """
    angles = 2 * math.pi * coords @ frequencies.T
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _CoordinateFamily(TaskFamily):
    """An MLP maps pixel coordinates to the RGB colour of one photograph.

    Each instance draws which pixels are train / val / test (`sizes`), so val and
    test measure interpolation between the pixels seen. Inputs are the
    coordinates in `[-1, 1]^2` `[n, 2]` (or features of them, see `_inputs`);
    targets `[n, 3]` are the colours standardized per channel with the training
    pixels' statistics. The loss is MSE, >= 0 (about 1 for a constant output).

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        resolution: Pixels a side after downsampling (shape knob).
        batch_size: Pixels per inner step (shape knob).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    IMAGE = ""

    def __init__(
        self,
        width: int = 64,
        depth: int = 3,
        resolution: int = 48,
        batch_size: int = 256,
        init_scale: Range = 1.0,
        horizon: Range = 1000,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def n_inputs(self) -> int:
        """Input features per pixel."""
        return 2

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Train / val / test pixels: 2/3, 1/9 and 2/9 of the image."""
        n = self.resolution**2
        return n - n // 9 - 2 * (n // 9), n // 9, 2 * (n // 9)

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, resolution, input features, batch size and data sizes."""
        return (
            self.width,
            self.depth,
            self.resolution,
            self.n_inputs,
            self.batch_size,
            self.sizes,
        )

    def _draw_knobs(self, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }

    def _inputs(
        self, coords: torch.Tensor, knobs: dict[str, Any], generator: torch.Generator
    ) -> torch.Tensor:
        return coords

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the knobs, the pixel split and the initial weights from `rng`."""
        knobs = self._draw_knobs(rng)
        generator = torch_generator(rng)
        inputs = self._inputs(pixel_grid(self.resolution), knobs, generator)
        colours = load_image(self.IMAGE, self.resolution).flatten(1).T
        order = torch.randperm(len(inputs), generator=generator)
        parts = order.split(self.sizes)
        mean, std = colours[parts[0]].mean(0), colours[parts[0]].std(0)
        colours = (colours - mean) / std.clamp_min(1e-6)
        splits = tuple(t[rows] for rows in parts for t in (inputs, colours))
        model = build_model(
            lambda: mlp(self.n_inputs, self.width, self.depth, 3),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            splits,
            loss=mse,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


@register_family("coord_mlp_flower")
class CoordMLPFlower(_CoordinateFamily):
    """A plain ReLU MLP on raw (x, y) coordinates fits scikit-learn's flower photo.

    Without Fourier features an MLP learns the low frequencies first and the
    edges slowly (spectral bias). See `_CoordinateFamily` for data, loss and knobs.
    """

    IMAGE = "flower"


@register_family("fourier_mlp_hopper")
class FourierMLPHopper(_CoordinateFamily):
    """A ReLU MLP on random Fourier features fits matplotlib's Grace Hopper portrait.

    The inputs are `fourier_features` of the coordinates with `features / 2`
    Gaussian frequencies of standard deviation `scale`, drawn per instance. See
    `_CoordinateFamily` for data and loss.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        resolution: Pixels a side after downsampling (shape knob).
        features: Fourier features (sines and cosines), even (shape knob).
        batch_size: Pixels per inner step (shape knob).
        scale: Standard deviation of the frequencies, in cycles per unit of
            coordinate (free, log-uniform).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    IMAGE = "grace_hopper"

    def __init__(
        self,
        width: int = 64,
        depth: int = 3,
        resolution: int = 48,
        features: int = 64,
        batch_size: int = 256,
        scale: Range = 6.0,
        init_scale: Range = 1.0,
        horizon: Range = 1000,
    ) -> None:
        super().__init__(width, depth, resolution, batch_size, init_scale, horizon)
        if int(features) % 2:
            raise ValueError(
                f"features must be even (sines and cosines), got {features}"
            )
        self.features = int(features)
        self.scale = scale

    @property
    def n_inputs(self) -> int:
        """Fourier features per pixel."""
        return self.features

    def _draw_knobs(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"scale": draw(rng, self.scale, log=True), **super()._draw_knobs(rng)}

    def _inputs(
        self, coords: torch.Tensor, knobs: dict[str, Any], generator: torch.Generator
    ) -> torch.Tensor:
        frequencies = knobs["scale"] * torch.randn(
            self.features // 2, 2, generator=generator
        )
        return fourier_features(coords, frequencies)
