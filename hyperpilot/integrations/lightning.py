"""The pilot in PyTorch Lightning: a `Callback` around the same `Pilot`.

    from hyperpilot.integrations.lightning import PilotCallback

    trainer = L.Trainer(max_steps=2000, callbacks=[PilotCallback("default")])
    trainer.fit(model)

Needs `pip install 'hyperpilot[lightning]'`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from hyperpilot.agents.pilot import Pilot
from hyperpilot.integrations._common import PilotDriver


class PilotCallback(pl.Callback):
    """Lets a pilot steer the lr, beta1 and gradient clipping of a Lightning run.

    It calls the same `Pilot` a plain loop would (see `hyperpilot.agents.pilot`),
    from Lightning's hooks, in automatic optimization with one optimizer:

    - **Where it acts.** `on_before_optimizer_step`: once per optimizer step (after
      the last micro-batch when accumulating), on complete, unscaled gradients,
      before Lightning's own clipping and before the optimizer (or the scaler)
      steps. That is where the pilot decides (every K optimizer steps), records
      and clips.
    - **The loss.** No hook hands over the step's loss whole:
      `on_before_backward` sees each micro-batch's loss divided by
      `accumulate_grad_batches` (and multiplied by the scale under 16-bit AMP,
      which the callback divides out), so their sum is the mean loss of the
      optimizer step, the same value a plain loop passes. No lag. Under several
      processes it is averaged over ranks (`strategy.reduce`), so every rank
      decides alike.
    - **Schedulers.** A scheduler from `configure_optimizers` writes the lr after
      each step; the callback writes the pilot's values back before every
      optimizer step and again after the scheduler's step (`on_train_batch_end`),
      so the pilot's values are in force at every update and loggers such as
      `LearningRateMonitor` read them. It warns once that the scheduler has no
      effect.
    - **Clipping.** The pilot's clip threshold is the only one: a Trainer with
      `gradient_clip_val` is refused.
    - **Non-finite gradients.** Under 16-bit AMP the precision plugin's
      `GradScaler` is handed to the pilot: a step with non-finite gradients is an
      overflow the scaler skips, not a divergence. Without a scaler a non-finite
      loss or gradient is a divergence and its update is dropped (see `Pilot.step`).
    - **Validation.** The pilot takes the metric `monitor` (default `val_loss`) that
      the LightningModule logs in validation, when it is there before the first
      step: the sanity check must cover the whole validation set
      (`num_sanity_val_steps=-1`). Validate at the pilot's decision interval:
      `val_check_interval=K * accumulate_grad_batches` and
      `check_val_every_n_epoch=None` (the callback warns once when a decision finds
      no validation of its own step, and then uses the latest). Otherwise the pilot
      runs without validation and says so.
    - **Stopping.** With `early_stop=True`, a divergence or `patience` decisions
      without a better validation loss set `trainer.should_stop`.
    - **Resume.** The pilot's state (`Pilot.state_dict`: tensors and plain values)
      travels in Lightning's checkpoint through `state_dict` / `load_state_dict`,
      so a resumed run makes the decisions of an uninterrupted one.
    - **Logging.** At each decision `pilot/lr`, `pilot/beta1` and `pilot/clip` go to
      every logger of the Trainer, at the step whose update they govern.

    Args:
        pilot: A `Pilot`, a bundle directory or the name of a shipped pilot.
        total_steps: Optimizer steps of the run; default: the Trainer's
            `estimated_stepping_batches`.
        clip: Starting clip threshold; default: the bundle's.
        monitor: The logged validation metric the pilot reads.
        early_stop: Stop training on divergence or a validation plateau.
        patience: Decisions without improvement before stopping.
        divergence_factor: See `Pilot.attach`.
    """

    def __init__(
        self,
        pilot: str | Path | Pilot = "default",
        total_steps: int | None = None,
        clip: float | None = None,
        monitor: str = "val_loss",
        early_stop: bool = False,
        patience: int = 3,
        divergence_factor: float = 100.0,
    ) -> None:
        self._driver = PilotDriver(
            pilot,
            total_steps,
            clip,
            early_stop,
            patience,
            divergence_factor,
            "validate every K optimizer steps: val_check_interval={k} x "
            "accumulate_grad_batches, check_val_every_n_epoch=None",
        )
        self.monitor = monitor
        self._loss: torch.Tensor | None = None

    @property
    def pilot(self) -> Pilot:
        """The pilot this callback drives."""
        return self._driver.pilot

    # ------------------------------------------------------------------ checks
    def setup(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        """Refuses what would take control from the pilot."""
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                "PilotCallback needs automatic optimization; with manual "
                "optimization call pilot.step(loss) in training_step yourself"
            )
        if trainer.gradient_clip_val:
            raise ValueError(
                f"gradient_clip_val={trainer.gradient_clip_val}: the pilot clips the "
                "gradients itself; leave gradient_clip_val unset"
            )

    # --------------------------------------------------------------- validation
    def on_validation_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Notes the validation loss and the optimizer step it followed."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        if trainer.sanity_checking and (
            sum(trainer.num_sanity_val_batches) < sum(trainer.num_val_batches)
        ):
            return  # a partial validation is no first validation loss
        self._driver.feed.record(float(value), trainer.global_step)

    # ------------------------------------------------------------------ attach
    def on_train_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Attaches the pilot to the Trainer's optimizer (and restores it on resume)."""
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"PilotCallback steers one optimizer, the module has "
                f"{len(trainer.optimizers)}"
            )
        total = trainer.estimated_stepping_batches
        if self._driver.total_steps is None and not math.isfinite(total):
            raise ValueError(
                "the run has no end: set max_steps or max_epochs, or pass "
                "total_steps to PilotCallback"
            )
        with_val = self._driver.attach(
            trainer.optimizers[0],
            int(total) if math.isfinite(total) else 0,
            grad_scaler=getattr(trainer.precision_plugin, "scaler", None),
        )
        if not with_val and is_overridden("validation_step", pl_module):
            warnings.warn(
                f"no whole validation (metric {self.monitor!r}) before the first "
                "step: the pilot runs without validation; log it in validation "
                "and set num_sanity_val_steps=-1",
                UserWarning,
                stacklevel=2,
            )
        if trainer.lr_scheduler_configs:
            names = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
            warnings.warn(
                f"configure_optimizers returns an lr scheduler ({', '.join(names)}): "
                "the pilot writes its own values back before every optimizer step, "
                "so the scheduler has no effect; return only the optimizer",
                UserWarning,
                stacklevel=2,
            )

    # -------------------------------------------------------------------- step
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        """Adds this micro-batch's share of the optimizer step's loss."""
        loss = loss.detach()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            loss = loss / scaler.get_scale()  # the plugin scaled it before this hook
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """The pilot's step: decide (every K steps), record, clip."""
        assert self._loss is not None, "on_before_backward did not run"
        loss = trainer.strategy.reduce(self._loss, reduce_op="mean")
        self._loss = None
        if self._driver.step(loss):
            values = self._driver.logged_values()
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        if self._driver.should_stop():
            trainer.should_stop = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Writes the pilot's values back over the scheduler's, for whoever reads them."""
        if self._driver.attached:
            self.pilot.reapply()

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The pilot's state and the latest validation loss, for the checkpoint."""
        return self._driver.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps a checkpoint's state until the pilot is attached to the optimizer."""
        self._driver.load_state_dict(state_dict)
