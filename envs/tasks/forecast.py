"""Recurrent forecasters on real time series: `gru_co2`, `lstm_sunspots`, ..."""

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
    mse,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family
from hyperpilot.envs.tasks.sequences import GRU

REGIONS = (0.7, 0.15, 0.15)
"""Train / val / test windows end in consecutive stretches of the series, in time
order, as a forecaster is judged on the future."""


@functools.cache
def load_series(name: str) -> torch.Tensor:
    """A real series shipped inside statsmodels, as float32 `[n]`; never downloaded.

    Args:
        name: `co2` (monthly means of the weekly Mauna Loa CO2 in ppm, 1958-2001,
            526 months; a month without readings is interpolated), `sunspots` (yearly
            mean sunspot number, 1700-2008, 309 years) or `elnino` (monthly sea
            surface temperature of the Pacific's El Nino region, 1950-2010, 732
            months).

    Returns:
        The series; callers must not modify it.
    """
    from statsmodels import datasets

    if name == "co2":
        weekly = datasets.co2.load_pandas().data["co2"]
        values = weekly.resample("MS").mean().interpolate().to_numpy()
    elif name == "sunspots":
        values = datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    elif name == "elnino":
        values = datasets.elnino.load_pandas().data.iloc[:, 1:].to_numpy().ravel()
    else:
        raise ValueError(f"unknown series {name!r}; choose co2, sunspots or elnino")
    return torch.from_numpy(values.astype(np.float32))


def forecast_windows(
    series: torch.Tensor, window: int, ahead: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Cuts a series into (past `window` values, next `ahead` values) pairs.

    Both are expressed relative to the window's last value and divided by the
    standard deviation of the training targets, so a model forecasts the change
    (a trend does not push later windows out of the training range) and a zero
    forecast has a training MSE near 1. Windows are assigned to train / val / test
    by where their last target falls (`REGIONS`), so later windows test.

    Args:
        series: The values `[n]`.
        window: Past values a model reads.
        ahead: Future values it forecasts.

    Returns:
        `((x, y), (x, y), (x, y))` for train / val / test, with `x` `[m, window, 1]`
        and `y` `[m, ahead]`, float32.
    """
    span = window + ahead
    segments = series.unfold(0, span, 1)
    last = segments[:, window - 1 : window]
    segments = segments - last
    x, y = segments[:, :window, None], segments[:, window:]
    ends = torch.arange(len(segments)) + span
    cuts = np.cumsum(REGIONS)[:-1] * len(series)
    region = torch.bucketize(ends.to(torch.float64), torch.tensor(cuts), right=True)
    scale = y[region == 0].std().clamp_min(1e-6)
    return tuple((x[region == r] / scale, y[region == r] / scale) for r in range(3))


class LSTM(nn.Module):
    """A one-layer LSTM (PyTorch's gate equations) written from `nn.Linear`.

    Like `GRU`, a loop over time steps of vmap-able ops. Reads `[..., time, n_in]`
    and returns the head's output `[..., n_out]` at the last time step.
    """

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.input = nn.Linear(n_in, 4 * hidden)
        self.recurrent = nn.Linear(hidden, 4 * hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output at the last step of `[..., time, n_in]`."""
        h = x.new_zeros(*x.shape[:-2], self.hidden_size)
        c = h
        for gates_in in self.input(x).unbind(-2):
            gates = gates_in + self.recurrent(h)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


class _Forecaster(TaskFamily):
    """A recurrent forecaster on one series; subclasses name the series and cell.

    Data (`forecast_windows`): every window of the series, in three time-ordered
    regions; an instance keeps all training windows and draws `sizes[1]` /
    `sizes[2]` of the validation / test windows. Inputs `[n, window, 1]`, targets
    `[n, ahead]`, float32, relative to the window's last value. The loss is MSE,
    >= 0. Free `noise` adds Gaussian noise of that standard deviation to the
    training inputs (a common augmentation for short series).

    Args:
        hidden: Recurrent units (shape knob).
        window: Past values read (shape knob).
        ahead: Future values forecast (shape knob).
        batch_size: Windows per inner step (shape knob).
        noise: Input-noise standard deviation, in units of the targets' (free).
        init_scale: Multiplier on the default initialization bound (free).
        horizon: Inner steps per run (free).
    """

    SERIES = ""
    EVAL_ROWS = (128, 256)
    """At most this many validation / test windows per instance."""

    def __init__(
        self,
        hidden: int = 32,
        window: int = 16,
        ahead: int = 1,
        batch_size: int = 32,
        noise: Range = 0.0,
        init_scale: Range = 1.0,
        horizon: Range = 300,
    ) -> None:
        self.hidden = int(hidden)
        self.window = int(window)
        self.ahead = int(ahead)
        self.batch_size = int(batch_size)
        self.noise = noise
        self.init_scale = init_scale
        self.horizon = horizon

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Train / val / test windows of one instance (fixed by the shape knobs)."""
        regions = forecast_windows(load_series(self.SERIES), self.window, self.ahead)
        n_train, n_val, n_test = (len(x) for x, _ in regions)
        return n_train, min(n_val, self.EVAL_ROWS[0]), min(n_test, self.EVAL_ROWS[1])

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Hidden units, window, steps ahead, batch size and data sizes."""
        return (self.hidden, self.window, self.ahead, self.batch_size, self.sizes)

    @abc.abstractmethod
    def _model(self) -> nn.Module:
        """The uninitialized model; `build_model` draws its weights."""

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the evaluation windows, input noise and initial weights from `rng`."""
        knobs = {
            "noise": draw(rng, self.noise),
            "init_scale": draw(rng, self.init_scale),
            "horizon": draw_int(rng, self.horizon),
        }
        generator = torch_generator(rng)
        (x_train, y_train), *evaluation = forecast_windows(
            load_series(self.SERIES), self.window, self.ahead
        )
        splits = [
            x_train + knobs["noise"] * torch.randn(x_train.shape, generator=generator),
            y_train,
        ]
        for (x, y), n in zip(evaluation, self.sizes[1:]):
            rows = torch.randperm(len(x), generator=generator)[:n]
            splits += [x[rows], y[rows]]
        model = build_model(self._model, generator, knobs["init_scale"])
        return instance_from_splits(
            self.name,
            model,
            tuple(splits),
            loss=mse,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


@register_family("gru_co2")
class GRUCO2(_Forecaster):
    """A GRU forecasts monthly Mauna Loa CO2 (statsmodels' `co2`, 1958-2001).

    A trend with a strong yearly cycle and little noise. See `_Forecaster` for the
    data layout, loss and knobs.
    """

    SERIES = "co2"

    def _model(self) -> nn.Module:
        return GRU(1, self.hidden, self.ahead)


@register_family("lstm_sunspots")
class LSTMSunspots(_Forecaster):
    """An LSTM forecasts the yearly sunspot number (statsmodels' `sunspots`).

    309 years with an irregular 11-year cycle: few windows, so it overfits. See
    `_Forecaster` for the data layout, loss and knobs.
    """

    SERIES = "sunspots"

    def _model(self) -> nn.Module:
        return LSTM(1, self.hidden, self.ahead)


@register_family("gru_elnino")
class GRUElNino(_Forecaster):
    """A GRU forecasts monthly El Nino sea surface temperatures (statsmodels').

    732 months of a noisy yearly cycle. See `_Forecaster` for the data layout,
    loss and knobs.
    """

    SERIES = "elnino"

    def _model(self) -> nn.Module:
        return GRU(1, self.hidden, self.ahead)
