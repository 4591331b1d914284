"""Embedding tables on categorical survey data: `fm_fair`, `embedding_mlp_anes96`."""

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


@functools.cache
def load_survey(name: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """A categorical survey data set shipped inside statsmodels (no download).

    Every field is coded as a category index; a field's ids are offset by the
    cardinalities of the fields before it, so one embedding table serves all.

    Args:
        name: `fair` (6366 women in a 1974 magazine survey; 8 fields such as
            marriage rating, religiousness and occupation; target: had an affair,
            2 classes) or `anes96` (944 voters of the 1996 American National
            Election Study; 9 fields such as ideology self-placement, education,
            income and vote; target: party identification, 7 classes).

    Returns:
        Offset ids as float32 `[n, fields]`, int64 targets `[n]`, and the
        cardinality of each field. Callers must not modify them.
    """
    from statsmodels import datasets

    if name == "fair":
        data = datasets.fair.load_pandas().data
        target = (data.pop("affairs") > 0).astype(np.int64)
    elif name == "anes96":
        data = datasets.anes96.load_pandas().data
        target = data.pop("PID").astype(np.int64)
        data = data.drop(columns=["logpopul"])
        # Continuous fields become decade and population-decile categories.
        data["age"] = (data["age"] // 10).astype(int)
        data["popul"] = np.searchsorted(
            np.quantile(data["popul"], np.linspace(0.1, 0.9, 9)), data["popul"]
        )
    else:
        raise ValueError(f"unknown survey {name!r}; choose fair or anes96")
    codes, cardinalities = [], []
    for column in data.columns:
        _, index = np.unique(data[column].to_numpy(), return_inverse=True)
        codes.append(index + sum(cardinalities))
        cardinalities.append(int(index.max()) + 1)
    x = torch.from_numpy(np.stack(codes, axis=1).astype(np.float32))
    return x, torch.tensor(target.to_numpy()), tuple(cardinalities)


class EmbeddingMLP(nn.Module):
    """Per-field embeddings, concatenated, then a ReLU MLP (entity embeddings)."""

    def __init__(
        self,
        cardinalities: tuple[int, ...],
        dim: int,
        width: int,
        depth: int,
        n_out: int,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(sum(cardinalities), dim)
        self.mlp = mlp(len(cardinalities) * dim, width, depth, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[..., n_out]` of offset ids `[..., fields]` (float)."""
        return self.mlp(self.embed(x.long()).flatten(-2))


class FactorizationMachine(nn.Module):
    """A neural factorization machine without hidden layers (He & Chua 2017).

    Logits = a per-category linear term summed over fields, plus a linear map of
    the bi-interaction pooling `0.5 * ((sum_f v_f)^2 - sum_f v_f^2)` of the
    fields' embeddings (every pairwise product, https://arxiv.org/abs/1708.05027).
    """

    def __init__(self, cardinalities: tuple[int, ...], dim: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Embedding(sum(cardinalities), n_out)
        self.embed = nn.Embedding(sum(cardinalities), dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[..., n_out]` of offset ids `[..., fields]` (float)."""
        ids = x.long()
        v = self.embed(ids)
        pairs = 0.5 * (v.sum(-2).pow(2) - v.pow(2).sum(-2))
        return self.linear(ids).sum(-2) + self.head(pairs)


class _SurveyFamily(TaskFamily):
    """A classifier on one categorical survey; subclasses supply data and model.

    Each instance draws its own train / val / test rows (`sizes`) and flips
    `label_noise` of the training labels. Inputs are offset category ids stored as
    float32 `[n, fields]`; the loss is cross-entropy, >= 0.
    """

    SURVEY = ""
    N_CLASSES = 0
    SIZES = (0, 0, 0)

    def __init__(
        self,
        dim: int,
        batch_size: int,
        label_noise: Range,
        init_scale: Range,
        horizon: Range,
    ) -> None:
        self.dim = int(dim)
        self.batch_size = int(batch_size)
        self.label_noise = label_noise
        self.init_scale = init_scale
        self.horizon = horizon

    @abc.abstractmethod
    def _model(self, cardinalities: tuple[int, ...]) -> nn.Module:
        """The uninitialized model; `build_model` draws its weights."""

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the row subset and order, label flips and the initial weights."""
        knobs = {
            "label_noise": draw(rng, self.label_noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y, cardinalities = load_survey(self.SURVEY)
        return classification_instance(
            self.name,
            lambda: self._model(cardinalities),
            split_rows(x, y, self.SIZES, generator),
            n_classes=self.N_CLASSES,
            knobs=knobs,
            batch_size=self.batch_size,
            generator=generator,
            rng=rng,
        )


@register_family("fm_fair")
class FMFair(_SurveyFamily):
    """A factorization machine predicts from the Fair survey who had an affair.

    statsmodels' `fair`: 6366 rows, 8 categorical fields, 2 classes (32% yes).
    Rows per instance: 4096 / 256 / 1024 train / val / test.

    Args:
        dim: Embedding width (shape knob).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SURVEY = "fair"
    N_CLASSES = 2
    SIZES = (4096, 256, 1024)

    def __init__(
        self,
        dim: int = 8,
        batch_size: int = 128,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        super().__init__(dim, batch_size, label_noise, init_scale, horizon)

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Embedding width, batch size and data sizes."""
        return (self.dim, self.batch_size, self.SIZES)

    def _model(self, cardinalities: tuple[int, ...]) -> nn.Module:
        return FactorizationMachine(cardinalities, self.dim, self.N_CLASSES)


@register_family("embedding_mlp_anes96")
class EmbeddingMLPAnes96(_SurveyFamily):
    """Entity embeddings and an MLP predict party identification from a voter survey.

    statsmodels' `anes96`: 944 respondents of the 1996 American National Election
    Study, 9 categorical fields, 7 classes (strong Democrat ... strong
    Republican). Rows per instance: 608 / 160 / 176 train / val / test.

    Args:
        dim: Embedding width per field (shape knob).
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        batch_size: Rows per inner step (shape knob).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SURVEY = "anes96"
    N_CLASSES = 7
    SIZES = (608, 160, 176)

    def __init__(
        self,
        dim: int = 8,
        width: int = 64,
        depth: int = 2,
        batch_size: int = 32,
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 500,
    ) -> None:
        super().__init__(dim, batch_size, label_noise, init_scale, horizon)
        self.width = int(width)
        self.depth = int(depth)

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Embedding width, width, depth, batch size and data sizes."""
        return (self.dim, self.width, self.depth, self.batch_size, self.SIZES)

    def _model(self, cardinalities: tuple[int, ...]) -> nn.Module:
        return EmbeddingMLP(
            cardinalities, self.dim, self.width, self.depth, self.N_CLASSES
        )
