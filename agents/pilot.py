"""The deployable pilot: a trained policy, loaded from a bundle, that steers an optimizer.

`Pilot.load` reads a policy bundle (see `hyperpilot.bundle`) without unpickling
anything. `attach` hands it a real `torch.optim` optimizer; from then on `step(loss)`,
called once per optimizer step, builds the same features as the training engine
(with the same `FeatureTracker`), asks the policy every K steps, writes the new
learning rate (and Adam's beta1) into the optimizer and clips the gradients::

    pilot = Pilot.load("runs/x/pilot")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot.attach(opt, total_steps=2000, val_fn=validation_loss)
    for step in range(2000):
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        pilot.step(loss)  # after backward, before opt.step()
        opt.step()
        if pilot.should_stop():
            break

Rules for real loops:

- **Order.** `pilot.step(loss)` goes after `backward()` and before `opt.step()`: it
  reads the gradients and clips them in place (like `clip_grad_norm_`, which you
  then leave out).
- **Gradient accumulation.** Call `step` once per optimizer step, after the last
  micro-batch's `backward()`, with the mean loss of the micro-batches.
  `total_steps` counts optimizer steps.
- **AMP.** With a `GradScaler`: `attach(..., grad_scaler=scaler)`, then
  `scaler.scale(loss).backward()`, `scaler.unscale_(opt)`, `pilot.step(loss)` (the
  unscaled loss), `scaler.step(opt)`, `scaler.update()`. A step with non-finite
  gradients is an overflow the scaler skips: it counts toward `total_steps` but is
  neither recorded, clipped nor a divergence.
- **Schedulers.** The pilot owns the learning rate: it overwrites every group's lr
  at each decision, so do not also use a `torch.optim.lr_scheduler`. It warns once
  when it sees one: at `attach` and at each decision it looks for the mark
  `LRScheduler` leaves on `optimizer.step` (`_wrapped_by_lr_sched`), and at each
  decision it checks whether the first group's lr still is what it wrote (this also
  catches `ReduceLROnPlateau` and hand-written changes, once they happen). Where a
  scheduler cannot be removed (the Hugging Face `Trainer` always runs one), call
  `reapply()` before every `step` and attach with `warn_scheduler=False`, as the
  callbacks in `hyperpilot.integrations` do.
- **Param groups.** Each group's lr is the pilot's lr times the group's starting lr
  over the first group's, so per-group ratios survive.
- **Optimizers without betas** (SGD, RMSprop, ...): only lr and clip are
  controlled; the beta1 feature stays at 0.9, and `attach` warns once.
- **Validation.** `val_fn` is a zero-argument callable returning a float, called
  under `torch.no_grad()` at `attach` and at every decision after the first; it
  should leave the model as it found it (e.g. switch back to `train()`). A
  non-finite value counts as divergence. It runs inside `step`, after that step's
  forward pass, so a BatchNorm model's running statistics already hold that
  batch (the engine validates just before it: about 0.5% apart in the features
  of the parity test).
- **Divergence.** A non-finite loss, a non-finite gradient (without a scaler), a
  loss above `divergence_factor` times the first one, or a non-finite validation
  loss is a divergence. The step that finds it sets every parameter's `grad` to
  None, so the `opt.step()` that follows moves neither the parameters nor the
  optimizer's state (Adam's moments, SGD's momentum; as the engine masks a diverged
  run's update), and `should_stop()` is True from then on. The pilot's control ends
  there (no more decisions or clipping), but its guard stays: a later step with a
  non-finite loss or gradient (an overflow, with a scaler) again leaves
  `opt.step()` nothing to apply.
- **Past `total_steps`** the last values stay in force (the pilot warns once).
- **Distributed data parallel.** Every rank must decide alike: pass a loss averaged
  over ranks and a `val_fn` that returns the same value on every rank.
- **Cost.** One host synchronization per step, and one copy of the gradients (the
  previous step's, for the gradient-agreement feature).
- **Resuming.** Save `pilot.state_dict()` with the model and optimizer; to resume,
  restore both, `attach` the pilot to the restored optimizer, then
  `load_state_dict`. The state holds tensors and plain values only, so
  `torch.load(..., weights_only=True)` reads it.

Importing this module, loading a pilot or running it changes no process-wide torch
setting (threads, RNG state, default dtype).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch.amp.grad_scaler import OptState

from hyperpilot.bundle import PolicyBundle, load_bundle
from hyperpilot.envs.actions import Hyperparams, decode_in_run
from hyperpilot.envs.engine import is_divergence
from hyperpilot.envs.features import FeatureTracker
from hyperpilot.envs.optim import CLIP_EPS

STATE_VERSION: Final = 1
"""Version of `Pilot.state_dict()`; `load_state_dict` refuses others."""

_IMPROVEMENT: Final = 1e-4  # relative validation improvement that resets patience
_NO_BETAS_BETA1: Final = 0.9  # the beta1 feature of optimizers without betas
_F64: Final = torch.float64


class Pilot:
    """A trained pilot: K, the controlled hyperparameters and a deterministic policy.

    Load one with `Pilot.load`, `attach` it to an optimizer, then call `step(loss)`
    once per optimizer step (see the module docstring for the rules).

    Args:
        bundle: A loaded policy bundle.
    """

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle
        self._optimizer: torch.optim.Optimizer | None = None
        self._warned: set[str] = set()

    @classmethod
    def load(cls, path_or_name: str | Path) -> Pilot:
        """Loads a bundle directory, or a pilot shipped with the package by name.

        Args:
            path_or_name: A bundle directory, or a name such as `"default"`.

        Returns:
            The pilot.

        Raises:
            BundleError: If the bundle is missing, incompatible or unsafe to load.
        """
        return cls(load_bundle(path_or_name))

    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Deterministic actions in `[-1, 1]`, one column per controlled hyperparameter.

        Args:
            obs: `[F]` or `[N, F]` raw observations (features, unnormalized).

        Returns:
            `[A]` or `[N, A]` float32 actions.
        """
        return self.bundle.act(obs).cpu().numpy()

    @property
    def decision_interval(self) -> int:
        """K: inner steps between two decisions."""
        return self.bundle.decision_interval

    @property
    def controlled(self) -> tuple[str, ...]:
        """The hyperparameters the pilot moves, in action-column order."""
        return self.bundle.controlled

    @property
    def action_mode(self) -> str:
        """`compound` or `residual`."""
        return self.bundle.action_mode

    @property
    def default_clip(self) -> float:
        """The clip threshold a run starts from when none is given."""
        return self.bundle.default_clip

    # ------------------------------------------------------------------ attach
    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        val_fn: Callable[[], float] | None = None,
        clip: float | None = None,
        divergence_factor: float = 100.0,
        grad_scaler: torch.amp.GradScaler | None = None,
        warn_scheduler: bool = True,
    ) -> Pilot:
        """Takes control of `optimizer` for a run of `total_steps` optimizer steps.

        The run starts from the optimizer's own lr (the first group's feeds the
        features) and beta1 (0.9 for the features when it has no `betas`), and
        from `clip`, or else the bundle's default starting clip. Attaching again
        starts afresh.

        Args:
            optimizer: A `torch.optim` optimizer; Adam-like ones (with `betas`) get
                lr, beta1 and clip control, others lr and clip.
            total_steps: Optimizer steps the run will take (the horizon).
            val_fn: Optional zero-argument callable returning the validation loss;
                called once now (the run's first validation loss) and at every
                later decision.
            clip: Starting gradient-norm clipping threshold.
            divergence_factor: The run diverges when a loss exceeds this times the
                first recorded loss.
            grad_scaler: The `torch.amp.GradScaler` that steps this optimizer, if
                any: non-finite gradients are then an overflow it skips, not a
                divergence, and `step` checks that the gradients were unscaled.
            warn_scheduler: Warn when an lr scheduler or another hand changes the
                lr. A framework callback that calls `reapply` before every step
                turns this off and warns in its framework's terms.

        Returns:
            The pilot itself.

        Warns:
            UserWarning: Once, if the optimizer has no `betas`, or (with
                `warn_scheduler`) an lr scheduler is attached to it (see the module
                docstring).

        Raises:
            ValueError: If an argument is invalid, a group's lr is not a positive
                finite number, or the first validation loss is not finite.
        """
        groups = optimizer.param_groups
        if not groups:
            raise ValueError("the optimizer has no parameter groups")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise ValueError(f"total_steps must be an integer, got {total_steps!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not divergence_factor > 1.0:
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor}")
        clip = self.default_clip if clip is None else float(clip)
        if not 0.0 < clip < math.inf:
            raise ValueError(f"clip must be a positive finite number, got {clip}")
        start_lrs = [float(group["lr"]) for group in groups]
        if not all(0.0 < lr < math.inf for lr in start_lrs):
            raise ValueError(
                f"the optimizer's learning rates {start_lrs} must be positive and "
                "finite"
            )

        self._optimizer = optimizer
        # A disabled scaler steps like a plain optimizer: nothing would skip an
        # overflow, so non-finite gradients stay a divergence.
        self._scaler = (
            grad_scaler
            if grad_scaler is not None and grad_scaler.is_enabled()
            else None
        )
        self._val_fn = val_fn
        self._total = total_steps
        self._factor = float(divergence_factor)
        self._warn_scheduler = warn_scheduler
        self._warned = set()
        self._has_betas = all("betas" in group for group in groups)
        beta1 = float(groups[0]["betas"][0]) if self._has_betas else _NO_BETAS_BETA1
        if not self._has_betas:
            self._warn_once(
                "betas",
                f"{type(optimizer).__name__} has no `betas`: the pilot controls only "
                "its lr and the gradient clipping (the beta1 feature stays at 0.9)",
            )
        self._start_lrs = start_lrs
        self._initial = _hparams(start_lrs[0], beta1, clip)
        self._hparams = self._initial
        self._steps = 0
        self._diverged = False
        self._prev_grads: dict[int, torch.Tensor] = {}
        self._prev_norm = 0.0

        val = math.nan
        if val_fn is not None:
            val = self._measure_val()
            if not math.isfinite(val):
                raise ValueError(
                    f"val_fn() returned {val} at attach; it must return a finite "
                    "validation loss"
                )
        self._val = val
        self._best_val = val
        self._stale = 0
        self._tracker = FeatureTracker(1)
        self._tracker.reset(
            torch.ones(1, dtype=torch.bool),
            torch.tensor([val], dtype=_F64),
            torch.tensor([val_fn is not None]),
        )
        self._check_scheduler()
        return self

    # -------------------------------------------------------------------- step
    def step(self, loss: torch.Tensor | float) -> None:
        """One optimizer step: decide (every K steps), record, then clip in place.

        Call it after `loss.backward()` and before `optimizer.step()`. On a
        divergence (a non-finite loss or gradient, or a loss above the divergence
        factor; see the module docstring) it sets every parameter's `grad` to None
        instead, so that `optimizer.step()` changes nothing, and marks the run
        diverged.

        Args:
            loss: This step's (unscaled, scalar) training loss.

        Raises:
            RuntimeError: If the pilot is not attached, no parameter has a
                gradient, or a `grad_scaler` has not unscaled them yet.
            ValueError: If `loss` is not a scalar.
        """
        self._require_attached()
        loss = _scalar(loss)
        grads = self._gradients()
        self._require_unscaled()
        if self._diverged:
            self._guard(loss, grads)
            return
        if self._steps < self._total:
            if self._decision_due():
                self._decide()
                if self._diverged:
                    self._drop_gradients()
                    return
        else:
            self._warn_once(
                "past_total",
                f"step {self._steps + 1} is past total_steps={self._total}: the "
                "pilot keeps its last values",
            )
        loss_value, norm, agreement, coefficient = self._measure(loss, grads)
        self._steps += 1
        if self._is_overflow(loss_value, norm):
            return  # the GradScaler skips this step: nothing to learn from
        diverged = self._is_divergence(loss_value) or not math.isfinite(norm)
        clipped = coefficient < 1.0
        self._tracker.record_step(
            torch.tensor([loss_value], dtype=_F64),
            torch.tensor([norm], dtype=_F64),
            torch.tensor([clipped and not diverged]),
            torch.tensor([agreement], dtype=_F64),
        )
        if diverged:
            self._diverged = True
            self._drop_gradients()
            return
        if clipped:
            factor = torch.tensor(coefficient, dtype=_F64)
            for _, grad in grads:
                grad.mul_(factor.to(grad.device, grad.dtype))
        # As the engine: the clipped gradient serves as the previous one (a cosine
        # ignores the clipping factor), with its norm.
        self._prev_grads = {i: self._copy_grad(i, g) for i, g in grads}
        self._prev_norm = norm * coefficient

    def reapply(self) -> None:
        """Writes the values in force (lr per group, beta1) into the optimizer again.

        For loops where something else writes the lr between optimizer steps, such
        as a framework's lr scheduler that cannot be removed: calling this before
        every `step` keeps the pilot's values in force at every update.

        Raises:
            RuntimeError: If the pilot is not attached.
        """
        self._require_attached()
        self._write()

    # ------------------------------------------------------------------ status
    @property
    def hyperparameters(self) -> dict[str, float | None]:
        """The values in force: `lr` (first group), `beta1` (None without betas), `clip`."""
        self._require_attached()
        return {
            "lr": float(self._hparams.lr[0]),
            "beta1": float(self._hparams.beta1[0]) if self._has_betas else None,
            "clip": float(self._hparams.clip[0]),
        }

    @property
    def diverged(self) -> bool:
        """Whether the run diverged (the pilot then changes nothing any more)."""
        return self._optimizer is not None and self._diverged

    @property
    def next_step_decides(self) -> bool:
        """Whether the next `step` asks the policy (steps 0, K, 2K, ... before the end)."""
        self._require_attached()
        return not self._diverged and self._steps < self._total and self._decision_due()

    @property
    def steps_done(self) -> int:
        """Calls of `step` since `attach`."""
        self._require_attached()
        return self._steps

    def should_stop(self, patience: int = 3) -> bool:
        """Whether to stop: the run diverged, or validation stopped improving.

        Args:
            patience: Consecutive decisions without a validation loss better than
                the best so far (by a relative 1e-4) before stopping. Only counts
                with a `val_fn`.

        Returns:
            True when diverged, or when `val_fn` is given and the validation loss
            has not improved for `patience` decisions.
        """
        self._require_attached()
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if self._diverged:
            return True
        return self._val_fn is not None and self._stale >= patience

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue warm: tensors and plain values."""
        self._require_attached()
        return {
            "version": STATE_VERSION,
            "decision_interval": self.decision_interval,
            "total_steps": self._total,
            "divergence_factor": self._factor,
            "steps_done": self._steps,
            "hparams": _hparams_state(self._hparams),
            "initial": _hparams_state(self._initial),
            "start_lrs": list(self._start_lrs),
            "val_loss": self._val,
            "best_val_loss": self._best_val,
            "stale_decisions": self._stale,
            "diverged": self._diverged,
            "prev_grad_norm": self._prev_norm,
            "prev_grads": {i: g.clone() for i, g in self._prev_grads.items()},
            "tracker": {
                name: value.clone()
                for name, value in vars(self._tracker).items()
                if isinstance(value, torch.Tensor)
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()` into this attached pilot and its optimizer.

        Attach first (to the restored optimizer, with the same `val_fn`); the
        state then replaces everything else, and the restored lr and beta1 are
        written into the optimizer.

        Raises:
            RuntimeError: If the pilot is not attached.
            ValueError: If the state is of another version or pilot (K differs).
        """
        self._require_attached()
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"pilot state version {state.get('version')!r} is not "
                f"{STATE_VERSION}; it was saved by another hyperpilot version"
            )
        if state["decision_interval"] != self.decision_interval:
            raise ValueError(
                f"the state was saved by a pilot with K={state['decision_interval']}, "
                f"this one has K={self.decision_interval}"
            )
        tensors = {
            n for n, v in vars(self._tracker).items() if isinstance(v, torch.Tensor)
        }
        if set(state["tracker"]) != tensors:
            raise ValueError(
                f"the state's feature tracker holds {sorted(state['tracker'])}, "
                f"expected {sorted(tensors)}"
            )
        for name, value in state["tracker"].items():
            setattr(self._tracker, name, value.detach().to("cpu").clone())
        self._total = int(state["total_steps"])
        self._factor = float(state["divergence_factor"])
        self._steps = int(state["steps_done"])
        self._hparams = _hparams(**state["hparams"])
        self._initial = _hparams(**state["initial"])
        self._start_lrs = [float(lr) for lr in state["start_lrs"]]
        self._val = float(state["val_loss"])
        self._best_val = float(state["best_val_loss"])
        self._stale = int(state["stale_decisions"])
        self._diverged = bool(state["diverged"])
        self._prev_norm = float(state["prev_grad_norm"])
        self._prev_grads = {
            int(i): g.detach().clone() for i, g in state["prev_grads"].items()
        }
        self._write()

    def __repr__(self) -> str:
        return (
            f"Pilot(K={self.decision_interval}, controlled={list(self.controlled)}, "
            f"mode={self.action_mode!r})"
        )

    # ----------------------------------------------------------------- helpers
    def _require_attached(self) -> None:
        if self._optimizer is None:
            raise RuntimeError(
                "the pilot is not attached: call pilot.attach(optimizer, total_steps)"
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _measure_val(self) -> float:
        assert self._val_fn is not None
        with torch.no_grad():
            return float(self._val_fn())

    def _decision_due(self) -> bool:
        """A decision comes at steps 0, K, 2K, ... (before that step's update)."""
        return self._steps % self.decision_interval == 0

    def _decide(self) -> None:
        """Observes the window that just ended, asks the policy, applies its values.

        As in the engine: the observation carries the values that were in force
        during the window; the decoded values govern the next K steps.
        """
        val = self._val
        if self._steps > 0 and self._val_fn is not None:
            val = self._measure_val()
            if not math.isfinite(val):
                self._diverged = True
                return
            self._track_patience(val)
            self._val = val
        self._check_scheduler()
        self._check_foreign_lr()
        obs = self._tracker.observe(
            *self._hparams.values(),
            torch.tensor([self._steps / self._total], dtype=_F64),
            torch.tensor([val], dtype=_F64),
        )
        action = self.bundle.act(obs)
        self._hparams = self._decode(action)
        self._write()

    def _decode(self, action: torch.Tensor) -> Hyperparams:
        new = decode_in_run(
            action.to(_F64),
            self._hparams,
            self._initial,
            torch.tensor([self._steps]),
            torch.tensor([self._total]),
            self.controlled,
            self.action_mode,
            self.bundle.bounds,
        )
        if not self._has_betas:
            new = Hyperparams(new.lr, self._hparams.beta1, new.clip)
        return new

    def _track_patience(self, val: float) -> None:
        if val < self._best_val - _IMPROVEMENT * abs(self._best_val):
            self._best_val = val
            self._stale = 0
        else:
            self._stale += 1

    def _write(self) -> None:
        """Writes lr (scaled per group) and beta1 into the optimizer's groups."""
        assert self._optimizer is not None
        lr = float(self._hparams.lr[0])
        beta1 = float(self._hparams.beta1[0])
        groups = self._optimizer.param_groups
        # All ratios before any write: a group added since the last write is
        # measured against the lr in force when it was added.
        ratios = [self._lr_ratio(index) for index in range(len(groups))]
        for group, ratio in zip(groups, ratios):
            _assign(group, "lr", lr * ratio)
            if self._has_betas:
                betas = group["betas"]
                if isinstance(betas[0], torch.Tensor):
                    betas[0].fill_(beta1)
                else:
                    group["betas"] = (beta1, betas[1])

    def _lr_ratio(self, index: int) -> float:
        """Group `index`'s starting lr over group 0's (exactly 1.0 for group 0)."""
        if index >= len(self._start_lrs):  # a group added after attach: its lr now
            groups = self._optimizer.param_groups  # type: ignore[union-attr]
            ratio = float(groups[index]["lr"]) / float(groups[0]["lr"])
            self._start_lrs.append(self._start_lrs[0] * ratio)
        return self._start_lrs[index] / self._start_lrs[0]

    def _check_scheduler(self) -> None:
        if not self._warn_scheduler:
            return
        step = getattr(self._optimizer, "step", None)
        if getattr(step, "_wrapped_by_lr_sched", False):
            self._warn_once(
                "scheduler",
                "an lr scheduler is attached to this optimizer: it and the pilot "
                "will fight over the learning rate; remove the scheduler",
            )

    def _check_foreign_lr(self) -> None:
        assert self._optimizer is not None
        if not self._warn_scheduler:
            return
        expected = float(self._hparams.lr[0])
        found = float(self._optimizer.param_groups[0]["lr"])
        if not math.isclose(found, expected, rel_tol=1e-6):
            self._warn_once(
                "scheduler",
                f"the learning rate changed outside the pilot ({expected:.3g} -> "
                f"{found:.3g}; an lr scheduler?): the pilot overwrites it at each "
                "decision; remove the other controller",
            )

    def _gradients(self) -> list[tuple[int, torch.Tensor]]:
        """`(index, grad)` of every optimizer parameter that has a gradient."""
        assert self._optimizer is not None
        params = (p for group in self._optimizer.param_groups for p in group["params"])
        grads = [(i, p.grad) for i, p in enumerate(params) if p.grad is not None]
        if not grads:
            raise RuntimeError(
                "no parameter has a gradient: call pilot.step(loss) after "
                "loss.backward() and before optimizer.step()"
            )
        return grads

    def _require_unscaled(self) -> None:
        """With a scaler: the gradients must be unscaled before the pilot reads them.

        `GradScaler` keeps no public record of this; its per-optimizer stage
        (`OptState.UNSCALED` after `unscale_`) is the one place that knows.
        """
        if self._scaler is None:
            return
        state = self._scaler._per_optimizer_states[id(self._optimizer)]
        if state["stage"] is not OptState.UNSCALED:
            raise RuntimeError(
                "the gradients are still scaled: call scaler.unscale_(optimizer) "
                "before pilot.step(loss)"
            )

    def _is_overflow(self, loss: float, norm: float) -> bool:
        """Non-finite gradients from a finite loss, which the scaler will skip."""
        return (
            self._scaler is not None and math.isfinite(loss) and not math.isfinite(norm)
        )

    def _guard(self, loss: torch.Tensor, grads: list[tuple[int, torch.Tensor]]) -> None:
        """After a divergence: still keep non-finite values from `optimizer.step()`."""
        norm = _global_norm(grads)
        device = norm.device
        loss_value, norm_value = torch.stack(
            [loss.to(device, _F64), norm.to(_F64)]
        ).tolist()
        if self._is_overflow(loss_value, norm_value):
            return
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self._drop_gradients()

    def _drop_gradients(self) -> None:
        """Sets every `grad` to None: `optimizer.step()` then skips every parameter.

        torch's optimizers (Adam, AdamW, SGD, ..., foreach and fused alike) leave
        a parameter without a gradient and its state untouched; a `GradScaler`
        that has unscaled already steps through it the same way.
        """
        assert self._optimizer is not None
        for group in self._optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    def _measure(
        self, loss: torch.Tensor, grads: list[tuple[int, torch.Tensor]]
    ) -> tuple[float, float, float, float]:
        """Loss, pre-clip global norm, agreement with the last gradient, clip factor.

        The norm is `clip_grad_norm_`'s (the norm of the per-tensor norms); the
        factor is `min(clip / (norm + 1e-6), 1)`. One host synchronization.
        """
        norm = _global_norm(grads)
        device = norm.device
        coefficient = torch.clamp(
            float(self._hparams.clip[0]) / (norm + CLIP_EPS), max=1.0
        )
        dot = torch.zeros((), dtype=_F64, device=device)
        for index, grad in grads:
            previous = self._prev_grads.get(index)
            if previous is not None:
                pair = torch.linalg.vecdot(grad.flatten(), previous.flatten())
                dot = dot + pair.to(device, _F64)
        values = torch.stack(
            [loss.to(device, _F64), norm.to(_F64), dot, coefficient.to(_F64)]
        ).tolist()
        loss_value, norm_value, dot_value, coefficient_value = values
        agreement = dot_value / max(norm_value * self._prev_norm, 1e-30)
        return loss_value, norm_value, agreement, coefficient_value

    def _copy_grad(self, index: int, grad: torch.Tensor) -> torch.Tensor:
        """A copy of the (clipped) `grad`, reusing the last step's buffer when it fits."""
        buffer = self._prev_grads.get(index)
        if (
            buffer is not None
            and buffer.shape == grad.shape
            and buffer.dtype == grad.dtype
            and buffer.device == grad.device
        ):
            return buffer.copy_(grad)
        return grad.detach().clone()

    def _is_divergence(self, loss: float) -> bool:
        """The engine's rule (`is_divergence`): non-finite, or above factor x first."""
        value = torch.tensor([loss], dtype=_F64)
        return bool(is_divergence(value, self._tracker.first_loss, self._factor)[0])


def _global_norm(grads: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """`clip_grad_norm_`'s norm (the norm of the per-tensor norms), on the device."""
    device = grads[0][1].device
    dtype = functools.reduce(torch.promote_types, (g.dtype for _, g in grads))
    norms = [torch.linalg.vector_norm(g).to(device, dtype) for _, g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def _hparams(lr: float, beta1: float, clip: float) -> Hyperparams:
    return Hyperparams.full(1, lr, beta1, clip, dtype=_F64)


def _hparams_state(hparams: Hyperparams) -> dict[str, float]:
    return {
        "lr": float(hparams.lr[0]),
        "beta1": float(hparams.beta1[0]),
        "clip": float(hparams.clip[0]),
    }


def _assign(group: dict[str, Any], key: str, value: float) -> None:
    """Sets a param-group entry, in place when it is a tensor (capturable optimizers)."""
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def _scalar(loss: torch.Tensor | float) -> torch.Tensor:
    loss = torch.as_tensor(loss).detach()
    if loss.numel() != 1:
        raise ValueError(
            f"pilot.step expects the scalar training loss, got shape "
            f"{tuple(loss.shape)}"
        )
    return loss.reshape(())
