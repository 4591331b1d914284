"""One inner run driven by a real `torch.optim` optimizer, in the engine's windows.

Optimizers that replace Adam (Schedule-Free AdamW, Prodigy) cannot run inside the
batched engine. `TorchOptimizerRun` runs one on a task instance with the engine's
minibatch order, inner-step budget, decision windows and divergence rule, and
answers the calls a controller rollout makes of a `BatchedEngine` with N = 1, so
evaluation records both through the same loop. The optimizer sets its own step
sizes: the hyperparameters a controller passes to `advance` are ignored, and the
reported ones are what the optimizer used (Prodigy's lr times its estimate `d`;
no clipping, so clip is infinite). A task's weight decay is passed to the
optimizer (as the engine applies it, decoupled, to Adam).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import torch

from hyperpilot.envs.actions import Hyperparams
from hyperpilot.envs.engine import MinibatchOrder, Transition, is_divergence
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.features import N_FEATURES
from hyperpilot.envs.settings import EnvSettings, resolve_device

_F64 = torch.float64


class TorchOptimizerRun:
    """One run of a task instance under `optimizer_factory(model.parameters())`.

    Args:
        optimizer_factory: Builds the optimizer, e.g.
            `schedulefree.AdamWScheduleFree`, with its library defaults.
        settings: K (`decision_interval`), `divergence_factor` and the device.
    """

    n = 1

    def __init__(
        self,
        optimizer_factory: Callable[
            [Iterable[torch.nn.Parameter]], torch.optim.Optimizer
        ],
        settings: EnvSettings,
    ) -> None:
        self.optimizer_factory = optimizer_factory
        self.settings = settings
        self.k = settings.decision_interval
        self.device = resolve_device(settings.device)
        self.families = [""]

    def _tensor(self, value: float, dtype: torch.dtype = _F64) -> torch.Tensor:
        return torch.tensor([value], dtype=dtype, device=self.device)

    def start(self, runs: Sequence[int], episodes: Sequence[Episode]) -> torch.Tensor:
        """Loads the one episode (its instance; the optimizer picks its own values)."""
        if list(runs) != [0] or len(episodes) != 1:
            raise ValueError("a TorchOptimizerRun holds exactly one run")
        instance = episodes[0].instance
        self.instance = instance
        self.families = [instance.family]
        self.model = copy.deepcopy(instance.model).to(self.device)
        # The task's weight decay is part of the task: the optimizer applies it too.
        decay = {"weight_decay": instance.weight_decay} if instance.weight_decay else {}
        self.optimizer = self.optimizer_factory(self.model.parameters(), **decay)
        self.order = MinibatchOrder(
            1, len(instance.x_train), instance.batch_size, self.device
        )
        self.order.restart(0, instance.data_seed)
        self.data = {
            name: getattr(instance, name).to(self.device)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        self.horizon = torch.tensor([instance.horizon], device=self.device)
        self.step_count = torch.zeros(1, dtype=torch.long, device=self.device)
        self.running = torch.ones(1, dtype=torch.bool, device=self.device)
        self.first_loss = self._tensor(math.nan)
        self.hparams = self._in_force()
        self.initial = self.hparams
        self.first_val = self.evaluate("val").to(_F64)
        self.last_val = self.first_val
        self.last_obs = torch.zeros(1, N_FEATURES, device=self.device)
        return self.last_obs

    def _in_force(self) -> Hyperparams:
        """The optimizer's step size (Prodigy: lr x d), beta1, and no clipping."""
        group = self.optimizer.param_groups[0]
        lr = float(group["lr"]) * float(group.get("d", 1.0))
        return Hyperparams(
            self._tensor(lr),
            self._tensor(float(group["betas"][0])),
            self._tensor(math.inf),
        )

    def _mode(self, training: bool) -> None:
        # Schedule-Free evaluates at its averaged weights: its optimizer has modes too.
        self.model.train(training)
        switch = getattr(self.optimizer, "train" if training else "eval", None)
        if callable(switch):
            switch()

    def advance(self, hparams: Hyperparams) -> Transition:
        """Trains up to K inner steps (the optimizer's own values; `hparams` unused)."""
        del hparams
        losses = []
        norms = torch.zeros(1, self.k, dtype=_F64, device=self.device)
        diverged = False
        self._mode(True)
        for i in range(self.k):
            if self.step_count[0] >= self.horizon[0]:
                break
            index = self.order.next()[0]
            x, y = self.data["x_train"][index], self.data["y_train"][index]
            loss = self.instance.loss(self.model(x), y)
            value = loss.detach().to(_F64).reshape(1)
            if torch.isnan(self.first_loss[0]):
                self.first_loss = value
            if bool(
                is_divergence(value, self.first_loss, self.settings.divergence_factor)
            ):
                diverged = True
                break
            self.optimizer.zero_grad()
            loss.backward()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norms[0, i] = torch.nn.utils.get_total_norm(grads).to(_F64)
            self.optimizer.step()
            losses.append(value)
            self.step_count += 1
        with torch.no_grad():
            diverged |= not all(p.isfinite().all() for p in self.model.parameters())
        val = self.evaluate("val").to(_F64)
        train_loss = torch.cat(losses).mean().reshape(1) if losses else val * math.nan
        terminated = self._tensor(diverged, torch.bool)
        truncated = ~terminated & (self.step_count >= self.horizon)
        self.running = ~terminated & ~truncated
        self.hparams = self._in_force()
        self.last_val = val
        measured = norms[:, : len(losses)]
        return Transition(
            obs=self.last_obs,
            reward=torch.zeros(1, device=self.device),
            terminated=terminated,
            truncated=truncated,
            train_loss=train_loss,
            val_loss=val,
            grad_norm=measured.clamp_min(1e-30).log().mean(1).exp(),
            grad_norms=measured,
            grad_update_dot=self._tensor(math.nan),
            hparams=self.hparams,
        )

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> torch.Tensor:
        """`[1]` mean loss on the instance's `val` or `test` data."""
        self._mode(False)
        x, y = self.data[f"x_{split}"], self.data[f"y_{split}"]
        return self.instance.loss(self.model(x), y).reshape(1)

    @torch.no_grad()
    def accuracy(self, split: str = "test") -> torch.Tensor | None:
        """`[1]` accuracy on `split` for classification families, else None."""
        if self.instance.accuracy is None:
            return None
        self._mode(False)
        x, y = self.data[f"x_{split}"], self.data[f"y_{split}"]
        return self.instance.accuracy(self.model(x), y).reshape(1)
