"""Deep plain ReLU MLPs (no normalization, no skips) on real tables: `deep_mlp_...`."""

from __future__ import annotations

import abc
import functools
from typing import Any

import numpy as np
import torch

from hyperpilot.envs.tasks.base import (
    LossFn,
    Range,
    TaskFamily,
    TaskInstance,
    build_model,
    draw,
    draw_int,
    instance_from_splits,
    mlp,
    mse,
    split_rows,
    standardize,
    torch_generator,
)
from hyperpilot.envs.tasks.counts import poisson_nll
from hyperpilot.envs.tasks.registry import register_family


@functools.cache
def load_diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled diabetes data: 442 patients, 10 features, float32.

    Returns:
        Features `[442, 10]` and the disease progression after one year `[442, 1]`;
        callers must not modify them.
    """
    from sklearn.datasets import load_diabetes as sklearn_load_diabetes

    data = sklearn_load_diabetes()
    x = torch.from_numpy(data.data.astype(np.float32))
    return x, torch.from_numpy(data.target.astype(np.float32))[:, None]


@functools.cache
def load_randhie() -> tuple[torch.Tensor, torch.Tensor]:
    """The RAND Health Insurance Experiment (statsmodels' `randhie`, no download).

    Returns:
        9 covariates (coinsurance, deductible, income, disease and health
        measures) as float32 `[20190, 9]`, and the yearly doctor visits `mdvis`
        (counts 0-77, mean 2.9) as float32 `[20190]`. Callers must not modify them.
    """
    from statsmodels import datasets

    data = datasets.randhie.load_pandas().data
    y = data.pop("mdvis").to_numpy(np.float32)
    return torch.from_numpy(data.to_numpy(np.float32)), torch.from_numpy(y)


class _DeepMLPTable(TaskFamily):
    """A deep plain ReLU MLP on one real table; subclasses name data, sizes, loss.

    Each instance draws its own train / val / test rows (`SIZES`); features are
    standardized with the training rows' statistics. Depth without normalization
    layers or skip connections is what makes these hard: at PyTorch's default
    initialization the signal shrinks layer by layer, and a large step kills
    ReLUs for good.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        batch_size: Rows per inner step (shape knob).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (0, 0, 0)
    LOSS: LossFn = staticmethod(mse)

    def __init__(
        self,
        width: int = 64,
        depth: int = 6,
        batch_size: int = 64,
        init_scale: Range = 1.0,
        horizon: Range = 600,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.batch_size = int(batch_size)
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, batch size and data sizes."""
        return (self.width, self.depth, self.batch_size, self.SIZES)

    @abc.abstractmethod
    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The table's features and targets (cached; not to be modified)."""

    def _targets(self, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return targets

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the row subset and order and the initial weights from `rng`."""
        knobs = {
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y = self._data()
        x_train, y_train, x_val, y_val, x_test, y_test = split_rows(
            x, y, self.SIZES, generator
        )
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
        y_train, y_val, y_test = self._targets(y_train, y_val, y_test)
        model = build_model(
            lambda: mlp(x.shape[1], self.width, self.depth, 1),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            loss=self.LOSS,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


@register_family("deep_mlp_diabetes")
class DeepMLPDiabetes(_DeepMLPTable):
    """An 8-layer plain ReLU MLP regresses scikit-learn's diabetes progression.

    442 patients, 10 features; rows per instance 288 / 64 / 90 train / val / test
    (all 442), target standardized with the training rows' statistics: so few
    rows that it overfits soon. The loss is MSE, >= 0. Knobs as `_DeepMLPTable`.
    """

    SIZES = (288, 64, 90)

    def __init__(
        self,
        width: int = 32,
        depth: int = 8,
        batch_size: int = 32,
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        super().__init__(width, depth, batch_size, init_scale, horizon)

    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return load_diabetes()

    def _targets(self, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return standardize(*targets)


@register_family("deep_mlp_randhie")
class DeepMLPRandhie(_DeepMLPTable):
    """A 6-layer plain ReLU MLP predicts yearly doctor visits (RAND HIE, Poisson).

    statsmodels' `randhie`: 20190 person-years, 9 covariates, counts 0-77 with
    mean 2.9 and a long tail; rows per instance 4096 / 512 / 1024 train / val /
    test. The output is the log rate; the loss is `poisson_nll`, >= 0. Knobs as
    `_DeepMLPTable`.
    """

    SIZES = (4096, 512, 1024)
    LOSS = staticmethod(poisson_nll)

    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return load_randhie()
