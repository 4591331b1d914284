"""The observation: scale-free features of a training run, named once in `OBS_FEATURES`.

The engine and the deployable `Pilot` both build observations with `FeatureTracker`,
so training and deployment cannot disagree on what the policy sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

from hyperpilot.envs.optim import rows_like_vectors

FEATURES_VERSION: Final = 1
"""Bump when a feature's meaning, order or scaling changes: old policies then refuse to load."""


@dataclass(frozen=True)
class Feature:
    """One observation entry: its name, bounds and meaning."""

    name: str
    low: float
    high: float
    doc: str


OBS_FEATURES: Final = (
    Feature("log_loss_ratio", -10, 10, "ln(window mean train loss / first train loss)"),
    Feature("loss_trend_short", -5, 5, "change of ln train loss since the last window"),
    Feature("loss_trend_long", -5, 5, "ln train loss minus its slow moving average"),
    Feature("log_grad_norm_ratio", -10, 10, "ln(window mean grad norm / first norm)"),
    Feature("grad_norm_trend", -5, 5, "change of ln grad norm since the last window"),
    Feature("grad_agreement", -1, 1, "mean cosine of successive minibatch gradients"),
    Feature("log_lr", -1, 1, "log10(lr) mapped from [-6, 0] to [-1, 1]"),
    Feature("log_one_minus_beta1", -1, 1, "log10(1-beta1) from [-3, -0.3] to [-1, 1]"),
    Feature("log_clip", -1, 1, "log10(clip) mapped from [-2, 3] to [-1, 1]"),
    Feature("clip_fraction", 0, 1, "share of the window's steps that were clipped"),
    Feature("log_val_ratio", -10, 10, "ln(val loss / first val loss); 0 without val"),
    Feature("train_val_gap", -10, 10, "ln(val loss / train loss); 0 without val"),
    Feature("val_available", 0, 1, "1 when a validation loss feeds the features"),
    Feature("progress", 0, 1, "inner steps done / horizon"),
)
OBS_NAMES: Final = tuple(f.name for f in OBS_FEATURES)
OBS_LOW: Final = tuple(float(f.low) for f in OBS_FEATURES)
OBS_HIGH: Final = tuple(float(f.high) for f in OBS_FEATURES)
N_FEATURES: Final = len(OBS_FEATURES)

_LONG_EMA = 0.8  # slow average of ln loss: about 5 windows of memory


def floored(loss: torch.Tensor) -> torch.Tensor:
    """`loss`, raised to its dtype's smallest positive normal number where below it.

    Task losses are >= 0 by contract (see `TaskInstance`). Features and rewards take
    logs and ratios of losses through this, so a loss of 0 (or, against the
    contract, below 0) gives finite values, clipped to their bounds, instead of
    -inf or NaN; every positive loss of normal size passes unchanged, NaN too.
    """
    return loss.clamp_min(torch.finfo(loss.dtype).tiny)


def _scaled(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (value - (low + high) / 2) / ((high - low) / 2)


class FeatureTracker:
    """Accumulates per-step signals of N runs and turns them into observations.

    Call `reset` when runs start, `record_step` after every inner step and
    `observe` at every decision (every K steps). All tensors are `[N]`.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        kw = {"device": device, "dtype": torch.float64}
        self.first_loss = torch.full((n,), torch.nan, **kw)
        self.first_grad_norm = torch.full((n,), torch.nan, **kw)
        self.first_val_loss = torch.full((n,), torch.nan, **kw)
        self.val_available = torch.zeros(n, dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros(n, **kw)
        self.grad_norm_log_sum = torch.zeros(n, **kw)
        self.agreement_sum = torch.zeros(n, **kw)
        self.clipped = torch.zeros(n, **kw)
        self.count = torch.zeros(n, **kw)
        self.prev_log_loss = torch.full((n,), torch.nan, **kw)
        self.prev_log_grad_norm = torch.full((n,), torch.nan, **kw)
        self.slow_log_loss = torch.full((n,), torch.nan, **kw)

    def reset(
        self,
        runs: torch.Tensor,
        first_val_loss: torch.Tensor,
        val_available: torch.Tensor,
    ) -> None:
        """Starts the runs in `runs` (`[N]` bool) afresh."""
        for t in (self.first_loss, self.first_grad_norm, self.prev_log_loss):
            t[runs] = torch.nan
        for t in (self.prev_log_grad_norm, self.slow_log_loss):
            t[runs] = torch.nan
        self.first_val_loss[runs] = first_val_loss[runs].to(torch.float64)
        self.val_available[runs] = val_available[runs]
        self._clear_window(runs)

    def _clear_window(self, runs: torch.Tensor) -> None:
        for t in (
            self.loss_sum,
            self.grad_norm_log_sum,
            self.agreement_sum,
            self.clipped,
            self.count,
        ):
            t[runs] = 0.0

    def record_step(
        self,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        clipped: torch.Tensor,
        agreement: torch.Tensor,
    ) -> None:
        """Adds one inner step.

        Args:
            loss: Minibatch loss.
            grad_norm: Gradient norm before clipping.
            clipped: Whether the step was clipped.
            agreement: Cosine between this and the previous minibatch gradient
                (0 at the first step).
        """
        loss = loss.detach().to(torch.float64)
        grad_norm = grad_norm.detach().to(torch.float64)
        first = torch.isnan(self.first_loss)
        self.first_loss.copy_(torch.where(first, loss, self.first_loss))
        self.first_grad_norm.copy_(torch.where(first, grad_norm, self.first_grad_norm))
        self.loss_sum += loss
        self.grad_norm_log_sum += torch.log(grad_norm.clamp_min(1e-30))
        self.agreement_sum += agreement.detach().to(torch.float64)
        self.clipped += clipped.to(torch.float64)
        self.count += 1.0

    def record_window(
        self,
        losses: torch.Tensor,
        grad_norms: torch.Tensor,
        clipped: torch.Tensor,
        agreements: torch.Tensor,
    ) -> None:
        """Adds K inner steps at once: the same numbers as K `record_step` calls.

        Every tensor is `[K, N]`, one row per step. The sums are taken one step
        after the other (a cumulative sum from the running totals), so they round
        exactly as K calls would; the state is updated in place.
        """
        losses = losses.to(torch.float64)
        grad_norms = grad_norms.to(torch.float64)
        # `first_loss` takes the first non-NaN loss (the last one if all are NaN),
        # `first_grad_norm` the norm of that same step, as K calls would.
        valid = ~torch.isnan(losses)
        last = torch.full_like(self.count, len(losses) - 1, dtype=torch.long)
        step = torch.where(valid.any(0), valid.byte().argmax(0), last)[None]
        first = torch.isnan(self.first_loss)
        self.first_grad_norm.copy_(
            torch.where(first, grad_norms.gather(0, step)[0], self.first_grad_norm)
        )
        self.first_loss.copy_(
            torch.where(first, losses.gather(0, step)[0], self.first_loss)
        )
        sums = (
            self.loss_sum,
            self.grad_norm_log_sum,
            self.agreement_sum,
            self.clipped,
            self.count,
        )
        steps = torch.stack(
            [
                losses,
                rows_like_vectors(torch.log, grad_norms.clamp_min(1e-30)),
                agreements.to(torch.float64),
                clipped.to(torch.float64),
                torch.ones_like(losses),
            ]
        )
        totals = torch.cat([torch.stack(sums)[:, None], steps], 1).cumsum(1)[:, -1]
        for total, new in zip(sums, totals):
            total.copy_(new)

    def window_train_loss(self) -> torch.Tensor:
        """Mean minibatch loss over the current window (NaN before any step)."""
        return self.loss_sum / self.count

    def observe(
        self,
        lr: torch.Tensor,
        beta1: torch.Tensor,
        clip: torch.Tensor,
        progress: torch.Tensor,
        val_loss: torch.Tensor,
    ) -> torch.Tensor:
        """Builds `[N, N_FEATURES]` float32 observations and starts a new window.

        Args:
            lr: Learning rates now in force (after the decision).
            beta1: Adam beta1 values now in force.
            clip: Clipping thresholds now in force.
            progress: Inner steps done / horizon.
            val_loss: Validation loss now; ignored where `val_available` is false.
        """
        with torch.no_grad():
            seen = self.count > 0
            count = self.count.clamp_min(1.0)
            log_loss = torch.log(floored(self.loss_sum / count))
            log_grad = self.grad_norm_log_sum / count
            zero = torch.zeros_like(log_loss)

            def since(previous: torch.Tensor, now: torch.Tensor) -> torch.Tensor:
                return torch.where(seen & ~torch.isnan(previous), now - previous, zero)

            val = floored(val_loss.detach().to(torch.float64))
            has_val = self.val_available
            columns = [
                torch.where(seen, log_loss - torch.log(floored(self.first_loss)), zero),
                since(self.prev_log_loss, log_loss),
                since(self.slow_log_loss, log_loss),
                torch.where(seen, log_grad - torch.log(self.first_grad_norm), zero),
                since(self.prev_log_grad_norm, log_grad),
                torch.where(seen, self.agreement_sum / count, zero),
                _scaled(lr.to(torch.float64).log10(), -6.0, 0.0),
                _scaled((1.0 - beta1.to(torch.float64)).log10(), -3.0, -0.30103),
                _scaled(clip.to(torch.float64).log10(), -2.0, 3.0),
                self.clipped / count,
                torch.where(
                    has_val, torch.log(val / floored(self.first_val_loss)), zero
                ),
                torch.where(has_val & seen, torch.log(val) - log_loss, zero),
                has_val.to(torch.float64),
                progress.to(torch.float64),
            ]
            obs = torch.stack(columns, dim=-1)
            low = obs.new_tensor(OBS_LOW)
            high = obs.new_tensor(OBS_HIGH)
            # A diverged run gives inf or NaN; the observation stays inside its box.
            obs = torch.nan_to_num(obs, nan=0.0, posinf=1e9, neginf=-1e9)
            obs = torch.minimum(torch.maximum(obs, low), high)

            self.prev_log_loss = torch.where(seen, log_loss, self.prev_log_loss)
            self.prev_log_grad_norm = torch.where(
                seen, log_grad, self.prev_log_grad_norm
            )
            slow = torch.where(
                torch.isnan(self.slow_log_loss),
                log_loss,
                _LONG_EMA * self.slow_log_loss + (1 - _LONG_EMA) * log_loss,
            )
            self.slow_log_loss = torch.where(seen, slow, self.slow_log_loss)
            self._clear_window(torch.ones_like(seen))
        return obs.to(torch.float32)
