"""Sequence classifiers on generated token strings: `gru_sequences`, `attention_...`."""

from __future__ import annotations

import abc
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


def majority_sequences(
    generator: torch.Generator, n: int, vocab: int, length: int, signal: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token strings labelled by their most frequent token.

    Each row gets uniform random tokens, then a randomly chosen token is planted at
    `signal` random positions, so most rows have a clear majority. The label is the
    most frequent token of the final row (ties go to the smaller token), so it is
    always a function of the input.

    Args:
        generator: Source of all randomness.
        n: Rows.
        vocab: Distinct tokens (= classes).
        length: Tokens per row.
        signal: Planted copies of the majority token, `0 <= signal <= length`.

    Returns:
        One-hot float32 inputs `[n, length, vocab]` (float, so the engine may cast
        inputs to its dtype) and int64 labels `[n]`.
    """
    tokens = torch.randint(vocab, (n, length), generator=generator)
    planted = torch.randint(vocab, (n, 1), generator=generator)
    positions = torch.rand(n, length, generator=generator).argsort(dim=1)[:, :signal]
    tokens = tokens.scatter(1, positions, planted.expand(-1, signal))
    one_hot = nn.functional.one_hot(tokens, vocab).to(torch.float32)
    # argmax returns the first maximal index, which breaks ties toward small tokens.
    return one_hot, one_hot.sum(1).argmax(-1)


class GRU(nn.Module):
    """A one-layer GRU (PyTorch's gate equations) written from `nn.Linear`.

    `nn.GRU`'s fused kernel does not batch well under `torch.func.vmap` over
    stacked weights; this loop over time steps only calls vmap-able ops. The input
    projection of a one-hot token acts as the token embedding. Reads `[..., time,
    n_in]` and returns the head's output `[..., n_out]` at the last time step.
    """

    def __init__(self, n_in: int, hidden: int, n_out: int | None = None) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.input = nn.Linear(n_in, 3 * hidden)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, n_in if n_out is None else n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output at the last step of `[..., time, n_in]`."""
        h = x.new_zeros(x.shape[0], self.hidden_size)
        # One product for all time steps, then `unbind`: its backward is a single
        # stack, where indexing `[:, t]` would add a full-size zero tensor per step.
        for gates_in in self.input(x).unbind(1):
            in_r, in_z, in_n = gates_in.chunk(3, dim=-1)
            rec_r, rec_z, rec_n = self.recurrent(h).chunk(3, dim=-1)
            reset = torch.sigmoid(in_r + rec_r)
            update = torch.sigmoid(in_z + rec_z)
            candidate = torch.tanh(in_n + reset * rec_n)
            h = (1 - update) * candidate + update * h
        return self.head(h)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, written out.

    On one CPU thread `torch.softmax` over rows as short as a sequence takes about
    four times as long, forward and backward, as these three elementwise ops.
    """
    exp = (scores - scores.amax(-1, keepdim=True).detach()).exp()
    return exp / exp.sum(-1, keepdim=True)


class _AttentionBlock(nn.Module):
    """Single-head self-attention (pre-norm, residual), mean-pooled, linear head.

    No feed-forward sub-block: it added about a quarter to the step time without a
    clear gain on this rule (mean pooling already counts tokens). Layer norms have
    no affine parameters (`build_model` draws every `weight` uniformly, which would
    be wrong for a norm gain).
    """

    def __init__(self, vocab: int, length: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(vocab, width)
        self.position = nn.Embedding(length, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def _norm(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(h, (self.width,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position.weight
        q, k, v = self.qkv(self._norm(h)).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.width)
        h = h + self.mix(softmax(scores) @ v)
        return self.head(self._norm(h.mean(dim=-2)))


class _SequenceFamily(TaskFamily):
    """Shared sampling for the majority-token families; subclasses supply the model."""

    SIZES = (1024, 256, 256)

    def __init__(
        self,
        width: int = 16,
        vocab: int = 8,
        length: int = 12,
        batch_size: int = 32,
        signal: Range = (3, 5),
        label_noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 200,
    ) -> None:
        self.width = int(width)
        self.vocab = int(vocab)
        self.length = int(length)
        self.batch_size = int(batch_size)
        low, high = (signal, signal) if isinstance(signal, int | float) else signal
        if not 0 <= low <= high <= self.length:
            raise ValueError(f"signal must lie in [0, length={length}], got {signal}")
        self.signal = signal
        self.label_noise = label_noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, vocabulary, length, batch size and data sizes."""
        return (self.width, self.vocab, self.length, self.batch_size, self.SIZES)

    @abc.abstractmethod
    def _model(self) -> nn.Module:
        """The uninitialized model; `build_model` draws its weights."""

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the sequences, label flips and the initial weights from `rng`."""
        knobs = {
            "signal": draw_int(rng, self.signal),
            "label_noise": draw(rng, self.label_noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, y = majority_sequences(
            generator, sum(self.SIZES), self.vocab, self.length, knobs["signal"]
        )
        x_train, x_val, x_test = x.split(self.SIZES)
        y_train, y_val, y_test = y.split(self.SIZES)
        return classification_instance(
            self.name,
            self._model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            n_classes=self.vocab,
            knobs=knobs,
            batch_size=self.batch_size,
            generator=generator,
            rng=rng,
        )


@register_family("gru_sequences")
class GRUSequences(_SequenceFamily):
    """A hand-written GRU reads one-hot token strings and names the majority token.

    Each row holds `length` tokens from `vocab`; a random token is planted `signal`
    times, and the label is the most frequent token. Inputs are one-hot float32
    `[n, length, vocab]`. Data: 1024 / 256 / 256 train / val / test rows.

    Args:
        width: Hidden units (shape knob).
        vocab: Distinct tokens, also the classes (shape knob).
        length: Tokens per sequence (shape knob).
        batch_size: Rows per inner step (shape knob).
        signal: Planted copies of the majority token; fewer is harder (free, int).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    def _model(self) -> nn.Module:
        return GRU(self.vocab, self.width)


@register_family("attention_sequences")
class AttentionSequences(_SequenceFamily):
    """One single-head self-attention block names the majority token of a string.

    The same data as `gru_sequences`; the architecture is kept out of
    meta-training, so it tests transfer to an unseen model type.

    Args:
        width: Model width (embedding, attention) (shape knob).
        vocab: Distinct tokens, also the classes (shape knob).
        length: Tokens per sequence (shape knob).
        batch_size: Rows per inner step (shape knob).
        signal: Planted copies of the majority token; fewer is harder (free, int).
        label_noise: Share of training labels replaced by random classes (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    def _model(self) -> nn.Module:
        return _AttentionBlock(self.vocab, self.length, self.width)
