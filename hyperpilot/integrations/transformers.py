"""The pilot in the Hugging Face `Trainer`: a `TrainerCallback` around the same `Pilot`.

    from hyperpilot.integrations.transformers import PilotCallback

    args = TrainingArguments(..., max_grad_norm=0, lr_scheduler_type="constant")
    trainer = Trainer(model, args, ..., callbacks=[PilotCallback("default")])
    trainer.train()

Needs `pip install 'hyperpilot[transformers]'`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import torch
from accelerate.utils import reduce
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hyperpilot.agents.pilot import Pilot
from hyperpilot.integrations._common import PilotDriver

STATE_FILE: Final = "hyperpilot_pilot.pt"
"""The pilot's state inside each `checkpoint-N/` folder (read with `weights_only`)."""


class PilotCallback(TrainerCallback):
    """Lets a pilot steer the lr, beta1 and gradient clipping of a `Trainer` run.

    It calls the same `Pilot` a plain loop would (see `hyperpilot.agents.pilot`),
    from the Trainer's events:

    - **Where it acts.** `on_pre_optimizer_step`: once per optimizer step (after
      the last micro-batch when accumulating), on complete gradients, before the
      optimizer steps. The Trainer has measured the gradient norm by then, which
      unscales them under fp16 AMP, and with `max_grad_norm=0` it has clipped
      nothing. That is where the pilot decides (every K optimizer steps), records
      and clips.
    - **The loss.** No event receives it. The callback reads the `loss` the model
      returns in training (a forward hook on the model, from `on_step_begin` to the
      optimizer step), so there is no lag; over accumulated micro-batches it takes
      their mean, or their sum when the Trainer passes `num_items_in_batch` (the
      model then divides by the whole step's token count). A Trainer that computes
      the loss itself (`compute_loss_func`, label smoothing) leaves no loss in the
      outputs, and the callback says so. Under several processes the loss is
      averaged over ranks, so every rank decides alike.
    - **Schedulers.** The Trainer always runs one (a `LambdaLR` even for
      "constant") and steps it after every optimizer step. The callback writes the
      pilot's values back before every optimizer step and after the scheduler's
      step, so they are in force at every update, and sets the scheduler's record
      of the last lr to the lr in force, so the Trainer logs the lr actually used.
      It warns once when `lr_scheduler_type` is not constant.
    - **Clipping.** The pilot's clip threshold is the only one: `max_grad_norm`
      must be 0 (the Trainer's default is 1.0); anything else is refused.
    - **Non-finite gradients.** Under fp16 AMP the accelerator's `GradScaler` is
      handed to the pilot: a step with non-finite gradients is an overflow the
      scaler skips (the Trainer then skips the scheduler too), not a divergence.
      Without one a non-finite loss or gradient is a divergence and its update is
      dropped (see `Pilot.step`).
    - **Validation.** The pilot takes the Trainer's `eval_loss` when an evaluation
      ran before the first step (`eval_on_start=True`). Evaluate at the pilot's
      decision interval: `eval_strategy="steps"`, `eval_steps=K` (the callback
      warns once when a decision finds no evaluation of its own step, and then
      uses the latest). Otherwise the pilot runs without validation.
    - **Stopping.** With `early_stop=True`, a divergence or `patience` decisions
      without a better validation loss set `control.should_training_stop`.
    - **Resume.** Callback state in `trainer_state.json` is JSON only, so the
      pilot's state goes to a file of its own, `checkpoint-N/hyperpilot_pilot.pt`,
      read back with `torch.load(weights_only=True)` when training resumes from
      `checkpoint-N` of the run's `output_dir`; a resumed run makes the decisions
      of an uninterrupted one.
    - **Logging.** At each decision the callback asks the Trainer to log
      (`control.should_log`): its `learning_rate` is the lr in force, and
      `pilot/lr`, `pilot/beta1` and `pilot/clip` are added to that record in
      `state.log_history` and for the callbacks after this one. The Trainer calls
      its `report_to` integrations before the callbacks it is given, so to see
      beta1 and clip in TensorBoard, add `TensorBoardCallback()` after this one
      (with `report_to="none"`).

    Args:
        pilot: A `Pilot`, a bundle directory or the name of a shipped pilot.
        total_steps: Optimizer steps of the run; default: the Trainer's
            `max_steps`.
        clip: Starting clip threshold; default: the bundle's.
        early_stop: Stop training on divergence or a validation plateau.
        patience: Decisions without improvement before stopping.
        divergence_factor: See `Pilot.attach`.
    """

    def __init__(
        self,
        pilot: str | Path | Pilot = "default",
        total_steps: int | None = None,
        clip: float | None = None,
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
            'validate every K optimizer steps: eval_strategy="steps", eval_steps={k}',
        )
        self._losses: list[tuple[torch.Tensor, bool]] | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._optimizer: Any = None
        self._scheduler: Any = None

    @property
    def pilot(self) -> Pilot:
        """The pilot this callback drives."""
        return self._driver.pilot

    # ------------------------------------------------------------------ checks
    def on_init_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Refuses a Trainer that clips the gradients itself."""
        _check_args(args)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        """Hooks the model's outputs; on resume, reads the checkpoint's pilot state."""
        _check_args(args)
        assert model is not None and optimizer is not None
        self._optimizer = optimizer
        self._scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
        self._driver.attached = False
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)
        if state.global_step > 0:
            path = os.path.join(
                args.output_dir,
                f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}",
                STATE_FILE,
            )
            if not os.path.isfile(path):
                raise ValueError(
                    f"resuming at step {state.global_step}, but {path} does not exist: "
                    "resume from a checkpoint of this run's output_dir, saved with "
                    "PilotCallback"
                )
            self._driver.load_state_dict(torch.load(path, weights_only=True))
        scheduler_type = str(
            getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        )
        constant = scheduler_type == "constant" or (
            scheduler_type == "constant_with_warmup"
            and args.get_warmup_steps(state.max_steps) == 0
        )
        if not constant:
            warnings.warn(
                f"lr_scheduler_type={scheduler_type!r}: the pilot writes its own "
                "values back before every optimizer step, so the schedule has no "
                "effect; set lr_scheduler_type='constant'",
                UserWarning,
                stacklevel=2,
            )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Notes `eval_loss` and the optimizer step it followed."""
        if metrics and "eval_loss" in metrics:
            self._driver.feed.record(metrics["eval_loss"], state.global_step)

    # -------------------------------------------------------------------- step
    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Attaches the pilot on the first step (after `eval_on_start`); opens a step."""
        if not self._driver.attached:
            self._driver.attach(
                getattr(self._optimizer, "optimizer", self._optimizer),
                state.max_steps,
                grad_scaler=getattr(self._optimizer, "scaler", None),
            )
        self._losses = []

    def _on_forward(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        """Keeps the loss of each training forward pass of the current step."""
        if self._losses is None or not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if loss is not None:
            self._losses.append((loss.detach(), "num_items_in_batch" in kwargs))

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """The pilot's step: decide (every K steps), record, clip."""
        losses, self._losses = self._losses, None
        if not losses:
            raise RuntimeError(
                "the model returned no `loss` in training: PilotCallback reads the "
                "loss from the model's outputs (pass `labels`; a compute_loss_func "
                "or label smoothing computes it outside the model)"
            )
        total = torch.stack([loss.float() for loss, _ in losses]).sum()
        # With num_items_in_batch the model already divides by the whole step's
        # count, so the micro-batch losses add up; without, each is a mean.
        loss = total if losses[0][1] else total / len(losses)
        if self._driver.step(reduce(loss)):
            control.should_log = True
        self._record_lr()
        if self._driver.should_stop():
            control.should_training_stop = True

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Writes the pilot's values back over the scheduler's step."""
        self.pilot.reapply()
        self._record_lr()

    def _record_lr(self) -> None:
        """Makes the scheduler's `get_last_lr()`, which the Trainer logs, the lr in force.

        `LRScheduler.get_last_lr` returns its `_last_lr`; there is no public setter.
        """
        if hasattr(self._scheduler, "_last_lr"):
            groups = self._optimizer.param_groups
            self._scheduler._last_lr = [group["lr"] for group in groups]

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Adds the pilot's values to a training log record."""
        if not self._driver.attached or logs is None or "loss" not in logs:
            return
        values = self._driver.logged_values()
        logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Writes the pilot's state into the checkpoint folder just saved."""
        if not (self._driver.attached and args.should_save):
            return
        folder = os.path.join(
            args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        torch.save(self._driver.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Removes the forward hook from the model."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _check_args(args: TrainingArguments) -> None:
    if args.max_grad_norm:
        raise ValueError(
            f"max_grad_norm={args.max_grad_norm}: the pilot clips the gradients "
            "itself; pass TrainingArguments(max_grad_norm=0)"
        )
