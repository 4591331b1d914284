"""Character-level causal transformer language models on text shipped with Python."""

from __future__ import annotations

import functools
import itertools
import math
import sysconfig
from pathlib import Path
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
    cross_entropy,
    draw,
    draw_int,
    instance_from_splits,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family
from hyperpilot.envs.tasks.sequences import softmax

REGIONS = (0.8, 0.1, 0.1)
"""Train / val / test windows come from consecutive stretches of the text, in order,
so validation and test measure how well the model predicts text it never read."""

STDLIB_MODULES = (
    "argparse.py",
    "textwrap.py",
    "string.py",
    "fractions.py",
    "heapq.py",
    "bisect.py",
    "shlex.py",
    "calendar.py",
)
"""Standard-library modules whose source makes the `stdlib_source` text."""


@functools.cache
def load_text(name: str) -> tuple[torch.Tensor, int]:
    """A text shipped with Python or scikit-learn, as character ids.

    A character is a UTF-8 byte; the ids number the distinct bytes of the text in
    byte order, so the vocabulary is as small as the text allows (about 100).

    Args:
        name: `pydoc` (the Python reference manual's topics in `pydoc_data`, about
            466 KB), `sklearn_docs` (the descriptions of scikit-learn's bundled data
            sets, `sklearn/datasets/descr/*.rst`, about 43 KB) or `stdlib_source`
            (the source of eight standard-library modules, about 200 KB).

    Returns:
        The ids, int64 `[n]` (callers must not modify them), and the vocabulary
        size. Read once, never downloaded.
    """
    if name == "pydoc":
        from pydoc_data.topics import topics

        text = "\n".join(topics[key] for key in sorted(topics))
    elif name == "sklearn_docs":
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "descr"
        text = "\n".join(p.read_text() for p in sorted(folder.glob("*.rst")))
    elif name == "stdlib_source":
        folder = Path(sysconfig.get_paths()["stdlib"])
        text = "\n".join((folder / m).read_text() for m in STDLIB_MODULES)
    else:
        raise ValueError(
            f"unknown text {name!r}; choose pydoc, sklearn_docs or stdlib_source"
        )
    data = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).long()
    present, ids = torch.unique(data, return_inverse=True)
    return ids, len(present)


class _Block(nn.Module):
    """A pre-norm transformer block: causal multi-head attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.mix = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        *batch, length, width = h.shape
        q, k, v = (
            t.view(*batch, length, self.heads, -1).transpose(-3, -2)
            for t in self.qkv(self.norm1(h)).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        # The mask is built here, not stored: task models may hold no buffers.
        future = torch.ones(length, length, dtype=torch.bool, device=h.device).triu(1)
        attention = softmax(scores.masked_fill(future, -math.inf)) @ v
        h = h + self.mix(attention.transpose(-3, -2).reshape(*batch, length, width))
        return h + self.down(nn.functional.gelu(self.up(self.norm2(h))))


class CausalTransformer(nn.Module):
    """A GPT-style character-level language model (learned positions, pre-norm).

    Inputs are character ids stored as floats `[..., context]` (task inputs are
    float tensors); outputs are next-character logits `[..., context, vocab]`.
    Position `t` sees characters `0..t` only.
    """

    def __init__(
        self, vocab: int, context: int, width: int, depth: int, heads: int
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-character logits `[..., context, vocab]`."""
        h = self.embed(x.long()) + self.position.weight
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def sequence_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over every position; bounded below by 0."""
    return cross_entropy(output.flatten(0, -2), target.flatten())


class _TransformerText(TaskFamily):
    """A causal transformer LM on one text; subclasses name the text (`TEXT`).

    Each instance draws its own windows of `context + 1` characters: train windows
    from the first 80% of the text, validation from the next 10%, test from the
    last 10% (`REGIONS`). Inputs are a window's first `context` characters (as
    float ids), targets its last `context` (int64): every position predicts the
    next character. The loss is the mean cross-entropy in nats, >= 0 (about
    ln(vocab) = 4.6 at the start).

    Args:
        width: Model width (shape knob).
        depth: Transformer blocks (shape knob).
        heads: Attention heads (shape knob).
        context: Characters per input window (shape knob).
        batch_size: Windows per inner step (shape knob).
        sizes: Train / val / test windows (shape knob).
        init_scale: Multiplier on the default initialization bound (free).
        weight_decay: Decoupled (AdamW) weight decay (free).
        horizon: Inner steps per run (free).
    """

    TEXT = ""

    def __init__(
        self,
        width: int = 32,
        depth: int = 1,
        heads: int = 2,
        context: int = 16,
        batch_size: int = 8,
        sizes: tuple[int, int, int] = (2048, 64, 256),
        init_scale: Range = 1.0,
        weight_decay: Range = 0.0,
        horizon: Range = 500,
    ) -> None:
        self.width = int(width)
        self.depth = int(depth)
        self.heads = int(heads)
        self.context = int(context)
        self.batch_size = int(batch_size)
        self.sizes = tuple(int(s) for s in sizes)
        if self.width % self.heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.init_scale = init_scale
        self.weight_decay = weight_decay
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, depth, heads, context, batch size and window counts."""
        return (
            self.width,
            self.depth,
            self.heads,
            self.context,
            self.batch_size,
            self.sizes,
        )

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the windows of each region and the initial weights from `rng`."""
        knobs = {
            "init_scale": draw(rng, self.init_scale),
            "weight_decay": draw(rng, self.weight_decay),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        text, vocab = load_text(self.TEXT)
        span = self.context + 1
        bounds = np.cumsum([0, *REGIONS]) * len(text)
        splits: list[torch.Tensor] = []
        for (start, end), n in zip(itertools.pairwise(bounds), self.sizes):
            starts = torch.randint(
                int(start), int(end) - span, (n,), generator=generator
            )
            windows = text[starts[:, None] + torch.arange(span)]
            splits += [windows[:, :-1].to(torch.float32), windows[:, 1:]]
        model = build_model(
            lambda: CausalTransformer(
                vocab, self.context, self.width, self.depth, self.heads
            ),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            tuple(splits),
            loss=sequence_cross_entropy,
            accuracy=accuracy,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


@register_family("transformer_pydoc")
class TransformerPydoc(_TransformerText):
    """A character-level causal transformer on Python's reference manual (`pydoc_data`).

    466 KB of English prose with code samples. See `_TransformerText` for the data
    layout, loss and knobs.
    """

    TEXT = "pydoc"


@register_family("transformer_sklearn_docs")
class TransformerSklearnDocs(_TransformerText):
    """A character-level causal transformer on scikit-learn's data-set descriptions.

    43 KB of reStructuredText (tables, citations, prose), small enough that a model
    starts to memorize its 34 KB training stretch within a few thousand steps. See
    `_TransformerText` for the data layout, loss and knobs.
    """

    TEXT = "sklearn_docs"


@register_family("transformer_stdlib_source")
class TransformerStdlibSource(_TransformerText):
    """A character-level causal transformer on Python standard-library source code.

    About 200 KB of code and docstrings (`STDLIB_MODULES`). See `_TransformerText`
    for the data layout, loss and knobs.
    """

    TEXT = "stdlib_source"
