"""Classifiers on generated Gaussian-mixture data: `logreg_blobs`, `mlp_blobs`, ..."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hyperpilot.envs.tasks.base import (
    Range,
    TaskFamily,
    TaskInstance,
    accuracy,
    build_model,
    classification_instance,
    draw,
    draw_int,
    flip_labels,
    instance_from_splits,
    mlp,
    standardize,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family

SIZES = (1024, 256, 256)
"""Train / val / test rows of every generated data set in this module."""


def gaussian_mixture(
    generator: torch.Generator,
    n: int,
    n_features: int,
    n_classes: int,
    clusters: int,
    separation: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows from `clusters` unit-variance Gaussian blobs per class.

    Centres are drawn `N(0, separation^2 / n_features)` per coordinate, so a centre
    lies about `separation` from the origin whatever the dimension. With more than
    one cluster per class the classes are not linearly separable.

    Args:
        generator: Source of all randomness.
        n: Rows to draw (all splits at once, so they share the centres).
        n_features: Input dimension.
        n_classes: Classes; labels are balanced in expectation.
        clusters: Blobs per class.
        separation: Typical distance of a centre from the origin.

    Returns:
        Inputs `[n, n_features]` (float32) and labels `[n]` (int64).
    """
    scale = separation / float(np.sqrt(n_features))
    centres = scale * torch.randn(n_classes * clusters, n_features, generator=generator)
    blob = torch.randint(n_classes * clusters, (n,), generator=generator)
    x = centres[blob] + torch.randn(n, n_features, generator=generator)
    return x, blob % n_classes


def _split(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Cuts row-aligned tensors into the train / val / test parts of `SIZES`."""
    n_train, n_val, _ = SIZES
    return [
        tuple(t[a:b] for t in tensors)
        for a, b in ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, None))
    ]


class _BlobsFamily(TaskFamily):
    """Shared knobs and sampling of the blob families; see the subclasses.

    `sample` draws a single-head classifier; `MultitaskBlobs` overrides it.
    """

    CLUSTERS = 1

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        n_features: int,
        n_classes: int,
        batch_size: int,
        separation: Range,
        label_noise: Range,
        init_scale: Range,
        horizon: Range,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.batch_size = int(batch_size)
        self.separation = separation
        self.label_noise = label_noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, features, classes, batch size and data sizes."""
        return (
            self.width,
            self.depth,
            self.n_features,
            self.n_classes,
            self.batch_size,
            SIZES,
        )

    def _draw_blobs(
        self, rng: np.random.Generator
    ) -> tuple[dict[str, Any], torch.Generator, torch.Tensor, torch.Tensor]:
        """Draws the free knobs, a torch generator, then all rows of the mixture.

        Args:
            rng: Source of the knobs and of the generator's seed.

        Returns:
            The knobs, the generator (for the draws that follow), the inputs
            `[sum(SIZES), n_features]` and the labels `[sum(SIZES)]`.
        """
        knobs = {
            "separation": draw(rng, self.separation),
            "label_noise": draw(rng, self.label_noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y = gaussian_mixture(
            generator,
            sum(SIZES),
            self.n_features,
            self.n_classes,
            self.CLUSTERS,
            knobs["separation"],
        )
        return knobs, generator, x, y

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws centres, rows, label flips and the initial weights from `rng`."""
        knobs, generator, x, y = self._draw_blobs(rng)
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = _split(x, y)
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
        return classification_instance(
            self.name,
            lambda: mlp(self.n_features, self.width, self.depth, self.n_classes),
            (x_train, y_train, x_val, y_val, x_test, y_test),
            n_classes=self.n_classes,
            knobs=knobs,
            batch_size=self.batch_size,
            generator=generator,
            rng=rng,
        )


@register_family("logreg_blobs")
class LogregBlobs(_BlobsFamily):
    """Multinomial logistic regression on one Gaussian blob per class.

    Convex, so it isolates the optimizer's behaviour from architecture effects.
    Data: 1024 / 256 / 256 train / val / test rows, standardized.

    Args:
        n_features: Input dimension (shape knob).
        n_classes: Classes (shape knob).
        batch_size: Rows per inner step (shape knob).
        separation: Typical distance of a class centre from the origin, in units of
            the within-class standard deviation (free).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    def __init__(
        self,
        n_features: int = 16,
        n_classes: int = 4,
        batch_size: int = 64,
        separation: Range = (1.0, 3.0),
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        super().__init__(
            width=0,
            depth=0,
            n_features=n_features,
            n_classes=n_classes,
            batch_size=batch_size,
            separation=separation,
            label_noise=label_noise,
            init_scale=init_scale,
            horizon=horizon,
        )


@register_family("mlp_blobs")
class MLPBlobs(_BlobsFamily):
    """A ReLU MLP classifier on three Gaussian blobs per class (not linearly separable).

    Data: 1024 / 256 / 256 train / val / test rows, standardized.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers (shape knob).
        n_features: Input dimension (shape knob).
        n_classes: Classes (shape knob).
        batch_size: Rows per inner step (shape knob).
        separation: Typical distance of a blob centre from the origin, in units of
            the within-blob standard deviation (free).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    CLUSTERS = 3

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        n_features: int = 16,
        n_classes: int = 4,
        batch_size: int = 64,
        separation: Range = (2.0, 4.0),
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        super().__init__(
            width=width,
            depth=depth,
            n_features=n_features,
            n_classes=n_classes,
            batch_size=batch_size,
            separation=separation,
            label_noise=label_noise,
            init_scale=init_scale,
            horizon=horizon,
        )


class _TwoHeads(nn.Module):
    """A shared MLP trunk feeding a classification head and a regression head.

    The output row is `[class logits | regression prediction]`, so one tensor
    carries both heads through the engine's `functional_call`.
    """

    def __init__(self, n_features: int, width: int, depth: int, n_classes: int) -> None:
        super().__init__()
        self.trunk = mlp(n_features, width, depth - 1, width)
        self.classify = nn.Linear(width, n_classes)
        self.regress = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.trunk(x))
        return torch.cat([self.classify(features), self.regress(features)], dim=-1)


def multitask_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the class head plus MSE of the regression head.

    Args:
        output: `[n, n_classes + 1]`: class logits, then the regression prediction.
        target: `[n, 2]` float: the class index, then the regression target.

    Returns:
        The summed mean losses.
    """
    labels = target[..., 0].long()
    classification = nn.functional.cross_entropy(output[..., :-1], labels)
    regression = nn.functional.mse_loss(output[..., -1], target[..., 1])
    return classification + regression


def multitask_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Accuracy of the classification head (see `multitask_loss` for the layout)."""
    return accuracy(output[..., :-1], target[..., 0].long())


@register_family("multitask_blobs")
class MultitaskBlobs(_BlobsFamily):
    """Two heads on one MLP trunk: classify Gaussian blobs and regress a smooth target.

    The regression target is a random tanh teacher of the inputs, standardized; the
    loss sums cross-entropy and MSE, so the two heads compete for the trunk's
    capacity and their gradients have different scales. The target is a float
    tensor `[n, 2]` of (class index, regression target). Data: 1024 / 256 / 256
    train / val / test rows, inputs standardized.

    Args:
        width: Units per hidden layer (shape knob).
        depth: Hidden layers of the trunk, at least 1 (shape knob).
        n_features: Input dimension (shape knob).
        n_classes: Classes (shape knob).
        batch_size: Rows per inner step (shape knob).
        separation: Typical distance of a blob centre from the origin (free).
        label_noise: Share of training labels replaced by random classes; the same
            number times the target's standard deviation is added to the training
            regression targets as Gaussian noise (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    CLUSTERS = 2
    TEACHER_WIDTH = 16

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        n_features: int = 16,
        n_classes: int = 4,
        batch_size: int = 64,
        separation: Range = (2.0, 4.0),
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        if int(depth) < 1:
            raise ValueError(f"multitask_blobs needs depth >= 1, got {depth}")
        super().__init__(
            width=width,
            depth=depth,
            n_features=n_features,
            n_classes=n_classes,
            batch_size=batch_size,
            separation=separation,
            label_noise=label_noise,
            init_scale=init_scale,
            horizon=horizon,
        )

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws blobs, the regression teacher, noise and the initial weights."""
        knobs, generator, x, labels = self._draw_blobs(rng)
        teacher = build_model(
            lambda: mlp(self.n_features, self.TEACHER_WIDTH, 1, 1, nn.Tanh),
            generator,
            2.0,  # a larger scale than default puts the tanh units in their bends
        )
        with torch.no_grad():
            values = teacher(x)[:, 0]
        (x_train, l_train, v_train), (x_val, l_val, v_val), (x_test, l_test, v_test) = (
            _split(x, labels, values)
        )
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
        mean, std = v_train.mean(), v_train.std().clamp_min(1e-6)
        v_train, v_val, v_test = ((v - mean) / std for v in (v_train, v_val, v_test))
        # Noise on the training targets only: validation and test measure how well
        # the true rule was learned (as in `classification_instance`).
        l_train = flip_labels(l_train, knobs["label_noise"], self.n_classes, generator)
        v_train = v_train + knobs["label_noise"] * torch.randn(
            v_train.shape, generator=generator
        )
        model = build_model(
            lambda: _TwoHeads(self.n_features, self.width, self.depth, self.n_classes),
            generator,
            knobs["init_scale"],
        )

        def target(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            return torch.stack([labels.to(torch.float32), values], dim=1)

        return instance_from_splits(
            self.name,
            model,
            (
                x_train,
                target(l_train, v_train),
                x_val,
                target(l_val, v_val),
                x_test,
                target(l_test, v_test),
            ),
            loss=multitask_loss,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
            accuracy=multitask_accuracy,
        )
