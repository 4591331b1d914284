"""Task instances (one concrete inner problem) and task families (seeded samplers of them)."""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np
import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`loss(output, target) -> scalar mean over the batch`, >= 0; `torch.func.vmap`-able."""

Range = float | int | Sequence[float]
"""A free knob: a fixed value, or `[low, high]` drawn per instance."""


@dataclass(frozen=True)
class TaskInstance:
    """One concrete inner training problem.

    Attributes:
        family: Name of the family that drew it.
        model: An ordinary `torch.nn.Module` on the CPU, already initialized. Its
            parameters and buffers (BatchNorm running statistics, `SeededDropout`
            state) are stacked per run; the engine runs it in `train()` mode for
            the inner steps, where buffers are updated per run, and in `eval()`
            mode for validation and test losses and accuracy. Its randomness must
            come from its buffers (use `SeededDropout`, not `nn.Dropout`).
        x_train: Training inputs `[n_train, ...]`; feeds the inner steps.
        y_train: Training targets `[n_train, ...]`.
        x_val: Validation inputs; feed the observation and the reward.
        y_val: Validation targets.
        x_test: Test inputs; used only by evaluation.
        y_test: Test targets.
        loss: `loss(output, target)`, the mean over the batch; bounded below by
            0 (see `TaskFamily`).
        batch_size: Minibatch size of an inner step.
        horizon: Inner steps in one training run.
        data_seed: Seeds the run's minibatch order.
        accuracy: Optional `accuracy(output, target)` for classification tasks.
        weight_decay: Decoupled weight decay of the inner optimizer (AdamW:
            parameters shrink by `1 - lr * weight_decay` each step, on every
            parameter); 0 gives Adam.
        knobs: The free knobs drawn for this instance (for logs and reports).
    """

    family: str
    model: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    loss: LossFn
    batch_size: int
    horizon: int
    data_seed: int
    accuracy: LossFn | None = None
    weight_decay: float = 0.0
    knobs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(
                f"weight_decay of a {self.family!r} instance must be a finite "
                f"number >= 0, got {self.weight_decay}"
            )


class TaskFamily(abc.ABC):
    """A named, seeded generator of task instances.

    Subclasses take their knobs as constructor kwargs. *Shape knobs* (width, depth,
    batch size, data sizes) fix every tensor shape and are returned by `shape_key`;
    *free knobs* (data subset, label noise, init scale, horizon, weight decay)
    accept a value or a `[low, high]` range and are drawn per instance in `sample`.
    Everything about the model other than its parameter and buffer values (layer
    sizes, dropout rates, norm momentum) is fixed per engine bucket: the engine runs
    every instance with the first one's module structure, so such settings are
    shape knobs.

    The loss contract: a loss is >= 0, ideally with 0 as its best possible value.
    Features, rewards and the divergence rule take logs and ratios of losses
    (`ln(loss / first loss)`, `val loss > 100 x first loss`), which only mean
    something for positive losses. Cross-entropy, MSE, a Poisson NLL with its
    `lgamma(k + 1)` constant and a negative ELBO with a Bernoulli or categorical
    likelihood all are; a Gaussian NLL with a learned variance, or an ELBO with a
    Gaussian likelihood, can go below 0 (a density can exceed 1): fix the variance
    or add a bound. The engine survives a loss of 0 (logs floor it at the smallest
    positive number; a run whose first loss is 0 has no ratio rule), but the
    features then carry little information.
    """

    name: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def shape_key(self) -> tuple[Any, ...]:
        """The shape knobs: instances with equal keys can share one engine bucket."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws one instance; all randomness comes from `rng`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={self.shape_key})"


def draw(rng: np.random.Generator, spec: Range, *, log: bool = False) -> float:
    """Draws a free knob: `spec` itself, or uniform (log-uniform) in `[low, high]`."""
    if isinstance(spec, int | float):
        return float(spec)
    low, high = (float(v) for v in spec)
    if low > high:
        raise ValueError(f"range [{low}, {high}] has low > high")
    if log:
        if low <= 0:
            raise ValueError(f"log-uniform range [{low}, {high}] must be positive")
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return float(rng.uniform(low, high))


def draw_int(rng: np.random.Generator, spec: Range) -> int:
    """Draws an integer knob: `spec` itself, or uniform in `[low, high]` inclusive."""
    if isinstance(spec, int | float):
        return int(spec)
    low, high = (int(v) for v in spec)
    return int(rng.integers(low, high + 1))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU `torch.Generator` seeded from `rng` (never the global torch RNG)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


_NORM_LAYERS: Final = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d and InstanceNorm*d
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)
"""Layers whose own `reset_parameters` draws nothing: gain 1, shift 0, fresh stats."""


def build_model(
    factory: Callable[[], nn.Module],
    generator: torch.Generator,
    init_scale: float = 1.0,
) -> nn.Module:
    """Builds `factory()` and initializes it from `generator`, leaving global RNG alone.

    The module is constructed on the meta device (no random draws), then every
    module's `weight` and `bias` are drawn uniform in `+-init_scale / sqrt(fan_in)`,
    PyTorch's default scale for linear and convolution layers. Normalization layers
    (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm) get their PyTorch
    defaults instead: gain 1, shift 0 and fresh running statistics. Last, every
    module with a `reset_buffers(generator)` method (such as `SeededDropout`) sets
    its buffers, in module order.

    Raises:
        ValueError: If a buffer belongs to a module that cannot initialize it (a
            meta-built buffer holds no values): compute such constants in
            `forward`, or give the module a `reset_buffers(generator)` method.
    """
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORM_LAYERS):
                module.reset_parameters()
                continue
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter):
                continue
            bound = init_scale / float(np.sqrt(weight[0].numel()))
            weight.uniform_(-bound, bound, generator=generator)
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.uniform_(-bound, bound, generator=generator)
        # Buffers come last, so that a model without them draws what it always drew.
        for name, module in model.named_modules():
            if hasattr(module, "reset_buffers"):
                module.reset_buffers(generator)
            elif not isinstance(module, _NORM_LAYERS):
                for buffer, _ in module.named_buffers(recurse=False):
                    raise ValueError(
                        f"buffer {'.'.join(filter(None, (name, buffer)))!r} of "
                        f"{type(module).__name__} cannot be initialized by build_model:"
                        " compute the constant in forward(), or give the module a "
                        "reset_buffers(generator) method"
                    )
    return model


_MASK32: Final = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mix (xorshift-multiply), on int64 in `[0, 2**32)`.

    Its odd multipliers stay below 2**31, so no int64 product overflows and every
    device computes the same bits.
    """
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x27D4EB2F) & _MASK32
    return h ^ (h >> 16)


def counter_bytes(
    seed: torch.Tensor, counter: torch.Tensor, shape: torch.Size
) -> torch.Tensor:
    """Uniform random bytes for every element of `shape`, from a seed and a counter.

    A counter-based generator: a key hashed from `(seed, counter)`, then word `i`
    is `mix(i ^ key)`, whose four bytes serve four elements. Integer tensor ops
    only, so it is deterministic on every device, works under `vmap` (one seed and
    counter per run) and draws nothing from torch's RNGs. Four bytes per hash keep
    it about as fast as `torch.rand` on the CPU.

    Args:
        seed: int64 scalar tensor (its low 62 bits are used).
        counter: int64 scalar tensor, e.g. the number of draws so far (its low 32
            bits are used).
        shape: The shape of the result (fewer than 2**34 elements).

    Returns:
        uint8 tensor of `shape` on `seed`'s device.
    """
    numel = math.prod(shape)
    key = _mix32((seed & _MASK32) ^ _mix32((seed >> 32) & _MASK32))
    key = _mix32(key ^ _mix32(counter & _MASK32))
    words = _mix32(torch.arange((numel + 3) // 4, device=seed.device) ^ key)
    lanes = [((words >> shift) & 0xFF).to(torch.uint8) for shift in (0, 8, 16, 24)]
    return torch.stack(lanes, -1).flatten()[:numel].view(shape)


class SeededDropout(nn.Module):
    """Dropout that draws its masks from its own buffers, never from a global RNG.

    Use it in task models instead of `nn.Dropout`. In train mode each call drops
    each element with probability `p` and scales the others by `1 / (1 - p)`, as
    `nn.Dropout` does, with masks from `counter_bytes(seed, counter)`, then adds 1
    to `counter`; in eval mode it is the identity. The buffers `seed` and `counter`
    (int64 scalars) are stacked per run by the engine like any other buffer, so a
    run's masks depend only on its own seed and step, never on the other runs in
    its bucket; a plain `model(x)` call outside the engine draws the same masks.
    `build_model` draws the seed from the instance's generator (`reset_buffers`).

    The masks come from random bytes, so `p` is rounded to a multiple of 1/256
    (0.1 drops 26/256 = 10.2%; the scaling uses the rounded rate). `p` is part of
    the model's structure, fixed per engine bucket: make it a shape knob.

    Args:
        p: Probability of dropping an element, in `[0, 0.998)`.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self._drop_bytes = round(p * 256)
        if not (0.0 <= p < 1.0 and self._drop_bytes < 256):
            raise ValueError(f"dropout p must lie in [0, 0.998), got {p}")
        self.p = float(p)
        self.register_buffer("seed", torch.zeros((), dtype=torch.int64))
        self.register_buffer("counter", torch.zeros((), dtype=torch.int64))

    def reset_buffers(self, generator: torch.Generator) -> None:
        """Draws a new seed from `generator` and sets the counter to 0."""
        self.seed.fill_(int(torch.randint(2**62, (), generator=generator)))
        self.counter.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drops elements of `x` in train mode; returns `x` itself in eval mode."""
        if not self.training or self._drop_bytes == 0:
            return x
        keep = counter_bytes(self.seed, self.counter, x.shape) >= self._drop_bytes
        self.counter.add_(1)
        return x * (keep.to(x.dtype) * (256 / (256 - self._drop_bytes)))

    def extra_repr(self) -> str:
        """Shows `p` in the module's repr."""
        return f"p={self.p}"


def mlp(
    n_in: int,
    width: int,
    depth: int,
    n_out: int,
    activation: type[nn.Module] = nn.ReLU,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A plain MLP: `depth` hidden layers of `width` units, then a linear output.

    Args:
        n_in: Input features.
        width: Units per hidden layer.
        depth: Hidden layers; 0 gives a linear model.
        n_out: Outputs.
        activation: Parameter-free activation module class.
        dropout: If > 0, a `SeededDropout(dropout)` follows every hidden layer.

    Returns:
        The (uninitialized) module; build it through `build_model`.
    """
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [nn.Linear(n_in if index == 0 else width, width), activation()]
        if dropout > 0:
            layers.append(SeededDropout(dropout))
    layers.append(nn.Linear(width if depth else n_in, n_out))
    return nn.Sequential(*layers)


def split_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: tuple[int, int, int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    """Shuffles rows and cuts them into train / val / test of exactly `sizes` rows."""
    needed = sum(sizes)
    if needed > len(x):
        raise ValueError(f"need {needed} rows for train/val/test, data has {len(x)}")
    order = torch.randperm(len(x), generator=generator)[:needed]
    x, y = x[order], y[order]
    n_train, n_val, _ = sizes
    cuts = (0, n_train, n_train + n_val, needed)
    return tuple(t[a:b] for a, b in itertools.pairwise(cuts) for t in (x, y))


def flip_labels(
    y: torch.Tensor, noise: float, n_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Replaces a `noise` share of integer labels by uniformly drawn classes."""
    if noise <= 0:
        return y
    flip = torch.rand(y.shape, generator=generator) < noise
    random_labels = torch.randint(n_classes, y.shape, generator=generator)
    return torch.where(flip, random_labels, y)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scales features to zero mean, unit variance using the training rows' statistics."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return tuple((t - mean) / std for t in (train, *others))


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits against integer class targets."""
    return nn.functional.cross_entropy(output, target)


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return nn.functional.mse_loss(output, target)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of rows whose arg-max logit equals the integer target."""
    return (output.argmax(-1) == target).to(output.dtype).mean()


def classification_instance(
    family: str,
    model_factory: Callable[[], nn.Module],
    splits: tuple[torch.Tensor, ...],
    *,
    n_classes: int,
    knobs: dict[str, Any],
    batch_size: int,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> TaskInstance:
    """The common tail of a classifier family's `sample`: noise, weights, instance.

    Draws, in this order, the training-label flips and the initial weights from
    `generator`, then the data seed from `rng`; a family that calls it last keeps
    its draws in that order, so equal seeds still give equal instances.

    Args:
        family: Name of the family that draws the instance.
        model_factory: Builds the uninitialized model (see `build_model`).
        splits: `(x_train, y_train, x_val, y_val, x_test, y_test)`, clean integer
            labels.
        n_classes: Classes a flipped label is drawn from.
        knobs: The drawn free knobs; reads `label_noise`, `init_scale`,
            `horizon` and `weight_decay` (optional), and is stored on the instance.
        batch_size: Rows per inner step.
        generator: Source of the label flips and the initial weights.
        rng: Source of the data seed.

    Returns:
        The instance, with cross-entropy loss and accuracy.
    """
    x_train, y_train, x_val, y_val, x_test, y_test = splits
    # Only the training labels are corrupted: validation and test measure how well
    # the true rule was learned, so fitting the noise shows up there.
    y_train = flip_labels(y_train, knobs["label_noise"], n_classes, generator)
    model = build_model(model_factory, generator, knobs["init_scale"])
    return instance_from_splits(
        family,
        model,
        (x_train, y_train, x_val, y_val, x_test, y_test),
        loss=cross_entropy,
        accuracy=accuracy,
        batch_size=batch_size,
        knobs=knobs,
        rng=rng,
    )


def instance_from_splits(
    family: str,
    model: nn.Module,
    splits: tuple[torch.Tensor, ...],
    *,
    loss: LossFn,
    batch_size: int,
    knobs: dict[str, Any],
    rng: np.random.Generator,
    accuracy: LossFn | None = None,
) -> TaskInstance:
    """Wraps a built model and `(x_train, y_train, x_val, y_val, x_test, y_test)`.

    The horizon comes from `knobs["horizon"]`, the weight decay from
    `knobs["weight_decay"]` (0 when absent); the data seed is the last draw from
    `rng`, so families that call this last keep their draw order.
    """
    x_train, y_train, x_val, y_val, x_test, y_test = splits
    return TaskInstance(
        family=family,
        model=model,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        loss=loss,
        batch_size=batch_size,
        horizon=knobs["horizon"],
        data_seed=int(rng.integers(2**62)),
        accuracy=accuracy,
        weight_decay=knobs.get("weight_decay", 0.0),
        knobs=knobs,
    )
