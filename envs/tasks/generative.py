"""Generative losses: `autoencoder_digits` (reconstruction) and VAEs (negative ELBO)."""

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
    build_model,
    draw,
    draw_int,
    instance_from_splits,
    mlp,
    split_rows,
    torch_generator,
)
from hyperpilot.envs.tasks.coordinates import load_image
from hyperpilot.envs.tasks.digits import load_digits
from hyperpilot.envs.tasks.registry import register_family


class Autoencoder(nn.Module):
    """A ReLU MLP encoder to a `code`-unit bottleneck and a mirrored decoder."""

    def __init__(self, n_in: int, width: int, code: int) -> None:
        super().__init__()
        self.encode = mlp(n_in, width, 1, code)
        self.decode = mlp(code, width, 1, n_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `x`."""
        return self.decode(self.encode(x))


def summed_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, averaged over rows; >= 0."""
    return (output - target).pow(2).flatten(1).sum(-1).mean()


@register_family("autoencoder_digits")
class AutoencoderDigits(TaskFamily):
    """An MLP autoencoder reconstructs scikit-learn's 8x8 digits (pixels / 16).

    Each instance draws its own 1024 / 256 / 256 train / val / test digits; the
    target is the clean image and the input a copy with Gaussian `noise` (a
    denoising autoencoder when > 0; validation and test inputs are clean). The
    loss is the squared error summed over the 64 pixels, averaged over rows, >= 0.

    Args:
        width: Units of the encoder's and decoder's hidden layer (shape knob).
        code: Bottleneck units (shape knob).
        batch_size: Rows per inner step (shape knob).
        noise: Standard deviation of the input noise (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (1024, 256, 256)

    def __init__(
        self,
        width: int = 64,
        code: int = 8,
        batch_size: int = 64,
        noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        self.width = int(width)
        self.code = int(code)
        self.batch_size = int(batch_size)
        self.noise = noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, code, batch size and data sizes."""
        return (self.width, self.code, self.batch_size, self.SIZES)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the rows, input noise and initial weights from `rng`."""
        knobs = {
            "noise": draw(rng, self.noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        x, _ = load_digits()
        x_train, _, x_val, _, x_test, _ = split_rows(x, x, self.SIZES, generator)
        noisy = x_train + knobs["noise"] * torch.randn(
            x_train.shape, generator=generator
        )
        model = build_model(
            lambda: Autoencoder(x.shape[1], self.width, self.code),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            (noisy, x_train, x_val, x_val, x_test, x_test),
            loss=summed_squared_error,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


class VAE(nn.Module):
    """A Gaussian-latent variational autoencoder with one-hidden-layer ReLU MLPs.

    Each input row is `[data (n_in) | noise (latent)]`: the reparameterization
    noise comes with the data (see `_VAEFamily`), so the model draws nothing and
    stays vmap-able. The output row is `[decoder output (n_in) | mu | log var]`,
    which the loss (`negative_elbo`) splits again.
    """

    def __init__(self, n_in: int, width: int, latent: int) -> None:
        super().__init__()
        self.n_in, self.latent = n_in, latent
        self.encode = mlp(n_in, width, 1, 2 * latent)
        self.decode = mlp(latent, width, 1, n_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[decoder output | mu | log var]` of rows `[data | noise]`."""
        data, noise = x[..., : self.n_in], x[..., self.n_in :]
        mu, log_var = self.encode(data).chunk(2, dim=-1)
        z = mu + (0.5 * log_var).exp() * noise
        return torch.cat([self.decode(z), mu, log_var], dim=-1)


def negative_elbo(
    output: torch.Tensor, target: torch.Tensor, *, bernoulli: bool, sigma: float = 1.0
) -> torch.Tensor:
    """The negative evidence lower bound, summed over features, mean over rows.

    Reconstruction: Bernoulli cross-entropy of the decoder's logits against
    targets in `[0, 1]` (>= 0), or the Gaussian `(x - mean)^2 / (2 sigma^2)` with
    its constant `0.5 log(2 pi sigma^2)` per feature left out, so it is >= 0 too.
    Plus the KL divergence of `N(mu, var)` from `N(0, I)` (>= 0). So the loss is
    bounded below by 0.
    """
    n_in = target.shape[-1]
    decoded, stats = output[..., :n_in], output[..., n_in:]
    mu, log_var = stats.chunk(2, dim=-1)
    if bernoulli:
        reconstruction = nn.functional.binary_cross_entropy_with_logits(
            decoded, target, reduction="none"
        )
    else:
        reconstruction = (decoded - target).pow(2) / (2 * sigma**2)
    kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var)
    return (reconstruction.sum(-1) + kl.sum(-1)).mean()


@functools.cache
def load_patches(name: str, size: int, count: int) -> torch.Tensor:
    """`count` grey `size` x `size` patches of a photograph, float32 `[count, size^2]`.

    The photograph (`load_image` at 128 pixels a side, grey = channel mean) is cut
    into patches on a regular grid of top-left corners (stride chosen so `count`
    patches fit), values in `[0, 1]`. Callers must not modify them.
    """
    grey = load_image(name, 128).mean(0)
    patches = grey.unfold(0, size, 1).unfold(1, size, 1).reshape(-1, size * size)
    step = max(1, len(patches) // count)
    return patches[::step][:count].contiguous()


class _VAEFamily(TaskFamily):
    """A VAE on one image data set; subclasses name data, likelihood and sizes.

    The reparameterization noise travels in the inputs: the training set holds
    `copies` copies of each training image, each with its own standard normal
    noise `[latent]`, so an image meets fresh noise on each of its first
    `copies` visits; validation and test rows carry one fixed draw each (a
    deterministic one-sample estimate of the negative ELBO). Inputs are
    `[images | noise]`, targets the images. The loss is `negative_elbo`, >= 0.

    Args:
        width: Hidden units of the encoder and the decoder (shape knob).
        latent: Latent dimensions (shape knob).
        copies: Noise draws per training image (shape knob).
        batch_size: Rows per inner step (shape knob).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SIZES = (0, 0, 0)
    """Distinct train / val / test images per instance."""

    def __init__(
        self,
        width: int = 64,
        latent: int = 8,
        copies: int = 8,
        batch_size: int = 64,
        init_scale: Range = 1.0,
        horizon: Range = 600,
    ) -> None:
        self.width = int(width)
        self.latent = int(latent)
        self.copies = int(copies)
        self.batch_size = int(batch_size)
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Width, latent, copies, batch size and data sizes."""
        return (self.width, self.latent, self.copies, self.batch_size, self.SIZES)

    @abc.abstractmethod
    def _images(self) -> torch.Tensor:
        """All images, `[n, pixels]` in `[0, 1]` (cached; not to be modified)."""

    @abc.abstractmethod
    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The negative ELBO of this family's likelihood."""

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the images, their noise and the initial weights from `rng`."""
        knobs = {
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        images = self._images()
        train, _, val, _, test, _ = split_rows(images, images, self.SIZES, generator)
        train = train.repeat(self.copies, 1)
        splits = []
        for part in (train, val, test):
            noise = torch.randn(len(part), self.latent, generator=generator)
            splits += [torch.cat([part, noise], dim=1), part]
        model = build_model(
            lambda: VAE(images.shape[1], self.width, self.latent),
            generator,
            knobs["init_scale"],
        )
        return instance_from_splits(
            self.name,
            model,
            tuple(splits),
            loss=self._loss,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


@register_family("vae_digits")
class VAEDigits(_VAEFamily):
    """A VAE with a Bernoulli decoder on scikit-learn's 8x8 digits (pixels / 16).

    1024 / 256 / 256 train / val / test digits per instance. See `_VAEFamily` for
    the data layout and knobs; the loss is `negative_elbo` with a Bernoulli
    likelihood (about 44 nats at the start, 25-30 when trained).
    """

    SIZES = (1024, 256, 256)

    def _images(self) -> torch.Tensor:
        return load_digits()[0]

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return negative_elbo(output, target, bernoulli=True)


@register_family("vae_china_patches")
class VAEChinaPatches(_VAEFamily):
    """A VAE with a Gaussian decoder on 8x8 grey patches of scikit-learn's china.jpg.

    4096 patches of the photograph at 128 x 128 (`load_patches`); 2048 / 256 / 512
    train / val / test patches per instance. The likelihood is Gaussian with a
    fixed standard deviation of 0.1 (pixel values in `[0, 1]`); see
    `negative_elbo` for its bound and `_VAEFamily` for the data layout and knobs.
    """

    SIZES = (2048, 256, 512)
    SIGMA = 0.1

    def _images(self) -> torch.Tensor:
        return load_patches("china", 8, 4096)

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return negative_elbo(output, target, bernoulli=False, sigma=self.SIGMA)
