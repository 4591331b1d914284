"""`mlp_digits`, `cnn_digits`, `resmlp_digits`: scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

import abc
import functools
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
    mlp,
    split_rows,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family

N_CLASSES = 10


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as pixels / 16 in `[0, 1]`, `[1797, 64]`, and labels `[1797]`.

    Read once from the copy shipped inside scikit-learn (no download); callers must
    not modify the returned tensors.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    data = sklearn_load_digits()
    x = torch.from_numpy(data.data.astype(np.float32) / 16.0)
    y = torch.from_numpy(data.target.astype(np.int64))
    return x, y


class _DigitsFamily(TaskFamily):
    """Shared sampling for the digits families; subclasses supply the model."""

    SIZES = (1024, 256, 256)

    def __init__(
        self,
        batch_size: int,
        label_noise: Range,
        init_scale: Range,
        horizon: Range,
        weight_decay: Range = 0.0,
    ) -> None:
        self.batch_size = int(batch_size)
        self.label_noise = label_noise
        self.init_scale = init_scale
        self.horizon = horizon
        self.weight_decay = weight_decay

    @abc.abstractmethod
    def _model(self) -> nn.Module:
        """The uninitialized model; `build_model` draws its weights."""

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the row subset and order, label flips and the initial weights."""
        knobs = {
            "label_noise": draw(rng, self.label_noise),
            "init_scale": draw(rng, self.init_scale),
            "weight_decay": draw(rng, self.weight_decay),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y = load_digits()
        return classification_instance(
            self.name,
            self._model,
            split_rows(self._inputs(x), y, self.SIZES, generator),
            n_classes=N_CLASSES,
            knobs=knobs,
            batch_size=self.batch_size,
            generator=generator,
            rng=rng,
        )


@register_family("mlp_digits")
class MLPDigits(_DigitsFamily):
    """A ReLU MLP on the flattened 8x8 digits (64 pixels / 16), 10 classes.

    Each instance draws its own 1024 / 256 / 256 train / val / test rows out of the
    1797 digits.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        dropout: Dropout rate after each hidden layer, 0 for none (shape knob).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        weight_decay: Decoupled (AdamW) weight decay (free).
        horizon: Inner steps per run (free).
    """

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
        batch_size: int = 128,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        weight_decay: Range = 0.0,
        horizon: Range = 200,
    ) -> None:
        super().__init__(batch_size, label_noise, init_scale, horizon, weight_decay)
        self.width = int(width)
        self.depth = int(depth)
        self.dropout = float(dropout)

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, dropout, batch size and data sizes."""
        return (self.width, self.depth, self.dropout, self.batch_size, self.SIZES)

    def _model(self) -> nn.Module:
        return mlp(64, self.width, self.depth, N_CLASSES, dropout=self.dropout)


class _SmallCNN(nn.Module):
    """conv 3x3 stride 2 -> ReLU -> conv 3x3 -> ReLU -> flatten -> linear.

    The strided first convolution works on 4x4 maps from the start: under `vmap`
    over 64 stacked runs on one CPU thread, full-size 8x8 activations (pooled after
    the first convolution) made a step about three times slower. Flattening keeps
    where a stroke is, which a global mean would lose.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(-3))


@register_family("cnn_digits")
class CNNDigits(_DigitsFamily):
    """A two-layer CNN on the digits as `[1, 8, 8]` images (pixels / 16), 10 classes.

    Layers: conv 3x3 stride 2, ReLU, conv 3x3, ReLU, flatten, linear.

    Each instance draws its own 1024 / 256 / 256 train / val / test rows out of the
    1797 digits.

    Args:
        channels: Channels of both convolutions (shape knob).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    def __init__(
        self,
        channels: int = 8,
        batch_size: int = 64,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        super().__init__(batch_size, label_noise, init_scale, horizon)
        self.channels = int(channels)

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Channels, batch size and data sizes."""
        return (self.channels, self.batch_size, self.SIZES)

    def _model(self) -> nn.Module:
        return _SmallCNN(self.channels)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 1, 8, 8)


NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class ResidualBlock(nn.Module):
    """`h + W2 relu(W1 norm(h))`: a pre-norm residual MLP block."""

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        self.norm = NORMS[norm](width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The block's output, same shape as `h`."""
        return h + self.down(torch.relu(self.up(self.norm(h))))


class ResMLP(nn.Module):
    """Linear stem, `depth` residual blocks, a final norm and a linear head."""

    def __init__(self, n_in: int, width: int, depth: int, n_out: int, norm: str):
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, norm) for _ in range(depth)))
        self.norm = NORMS[norm](width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of rows `[..., n_in]`."""
        return self.head(torch.relu(self.norm(self.blocks(self.stem(x)))))


@register_family("resmlp_digits")
class ResMLPDigits(_DigitsFamily):
    """A residual MLP with BatchNorm (or LayerNorm) blocks on the flattened digits.

    Large batches by default. With BatchNorm the engine uses batch statistics for
    the inner steps and running statistics for validation and test. Each instance
    draws its own 1024 / 256 / 256 train / val / test rows; the loss is
    cross-entropy, >= 0.

    Args:
        width: Units of the residual stream (shape knob).
        depth: Residual blocks (shape knob).
        norm: `batch` or `layer` (shape knob).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    def __init__(
        self,
        width: int = 32,
        depth: int = 2,
        norm: str = "batch",
        batch_size: int = 256,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        super().__init__(batch_size, label_noise, init_scale, horizon)
        self.width = int(width)
        self.depth = int(depth)
        self.norm = norm

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, norm, batch size and data sizes."""
        return (self.width, self.depth, self.norm, self.batch_size, self.SIZES)

    def _model(self) -> nn.Module:
        return ResMLP(64, self.width, self.depth, N_CLASSES, self.norm)
