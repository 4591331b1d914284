"""Small real tabular data sets bundled with scikit-learn (held-out splits only)."""

from __future__ import annotations

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
    standardize,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family


@functools.cache
def load_table(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A data set shipped inside scikit-learn (no download), as float32 / int64.

    Args:
        name: `wine` or `breast_cancer`.

    Returns:
        Raw features `[n, d]` and labels `[n]`; callers must not modify them.
    """
    from sklearn import datasets

    loaders = {
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }
    data = loaders[name]()
    x = torch.from_numpy(data.data.astype(np.float32))
    y = torch.from_numpy(data.target.astype(np.int64))
    return x, y


class _TableFamily(TaskFamily):
    """An MLP (depth 0: logistic regression) on one bundled table.

    Each instance draws its own rows for train / val / test, standardizes the
    features with the training rows' statistics, and flips a share of the
    training labels.
    """

    DATASET = ""
    N_FEATURES = 0
    N_CLASSES = 0
    SIZES = (0, 0, 0)
    weight_decay: Range = 0.0
    """Decoupled weight decay; a free knob of the subclasses that take it."""

    def __init__(
        self,
        width: int,
        depth: int,
        batch_size: int,
        label_noise: Range,
        init_scale: Range,
        horizon: Range,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.batch_size = int(batch_size)
        self.label_noise = label_noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, batch size and data sizes."""
        return (self.width, self.depth, self.batch_size, self.SIZES)

    def _model(self) -> nn.Module:
        return mlp(self.N_FEATURES, self.width, self.depth, self.N_CLASSES)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the row subset and order, label flips and the initial weights."""
        knobs = {
            "label_noise": draw(rng, self.label_noise),
            "init_scale": draw(rng, self.init_scale),
            "weight_decay": draw(rng, self.weight_decay),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y = load_table(self.DATASET)
        x_train, y_train, x_val, y_val, x_test, y_test = split_rows(
            x, y, self.SIZES, generator
        )
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
        return classification_instance(
            self.name,
            self._model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            n_classes=self.N_CLASSES,
            knobs=knobs,
            batch_size=self.batch_size,
            generator=generator,
            rng=rng,
        )


@register_family("mlp_wine")
class MLPWine(_TableFamily):
    """A ReLU MLP on scikit-learn's wine data (178 rows, 13 features, 3 cultivars).

    Rows per instance: 96 / 40 / 42 train / val / test (all 178), features
    standardized with the training rows' statistics.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    DATASET = "wine"
    N_FEATURES = 13
    N_CLASSES = 3
    SIZES = (96, 40, 42)

    def __init__(
        self,
        width: int = 32,
        depth: int = 2,
        batch_size: int = 32,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        super().__init__(width, depth, batch_size, label_noise, init_scale, horizon)


@register_family("logreg_breast_cancer")
class LogregBreastCancer(_TableFamily):
    """Logistic regression (2-way softmax) on scikit-learn's breast-cancer data.

    569 rows, 30 features; rows per instance: 320 / 120 / 129 train / val / test
    (all 569), features standardized with the training rows' statistics.

    Args:
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    DATASET = "breast_cancer"
    N_FEATURES = 30
    N_CLASSES = 2
    SIZES = (320, 120, 129)

    def __init__(
        self,
        batch_size: int = 64,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        super().__init__(0, 0, batch_size, label_noise, init_scale, horizon)


@register_family("mlp_dropout_breast_cancer")
class MLPDropoutBreastCancer(_TableFamily):
    """A ReLU MLP with dropout on breast-cancer data with noisy training labels.

    scikit-learn's breast-cancer data, 569 rows, 30 features; rows per instance
    320 / 120 / 129 train / val / test, features standardized with the training
    rows' statistics. By default a fifth of the training labels are flipped at
    random, so a long run memorizes noise unless something holds it back. The
    loss is cross-entropy, >= 0.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        dropout: Dropout rate after each hidden layer (shape knob: it is part of
            the model's structure).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        weight_decay: Decoupled (AdamW) weight decay (free).
        horizon: Inner steps per run (free).
    """

    DATASET = "breast_cancer"
    N_FEATURES = 30
    N_CLASSES = 2
    SIZES = (320, 120, 129)

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        dropout: float = 0.2,
        batch_size: int = 32,
        label_noise: Range = 0.2,
        init_scale: Range = 1.0,
        weight_decay: Range = 0.01,
        horizon: Range = 800,
    ) -> None:
        super().__init__(width, depth, batch_size, label_noise, init_scale, horizon)
        self.dropout = float(dropout)
        self.weight_decay = weight_decay

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, dropout, batch size and data sizes."""
        return (self.width, self.depth, self.dropout, self.batch_size, self.SIZES)

    def _model(self) -> nn.Module:
        return mlp(
            self.N_FEATURES,
            self.width,
            self.depth,
            self.N_CLASSES,
            dropout=self.dropout,
        )
