"""What both framework callbacks share: the pilot they wrap and the validation feed."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from hyperpilot.agents.pilot import Pilot


class PilotDriver:
    """The pilot as a framework callback drives it: attach, step, stop, save, restore.

    Both callbacks hold one and only translate their framework's hooks into these
    calls, so they cannot drift apart.

    Args:
        pilot: A `Pilot`, a bundle directory or the name of a shipped pilot.
        total_steps: Optimizer steps of the run, or None for the framework's count.
        clip: Starting clip threshold; default: the bundle's.
        early_stop: Stop training on divergence or a validation plateau.
        patience: Decisions without improvement before stopping.
        divergence_factor: See `Pilot.attach`.
        how_to_validate: How to make the framework validate every K steps (for the
            warning of `ValidationFeed`), with `{k}` for K.
    """

    def __init__(
        self,
        pilot: str | Path | Pilot,
        total_steps: int | None,
        clip: float | None,
        early_stop: bool,
        patience: int,
        divergence_factor: float,
        how_to_validate: str,
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.pilot = pilot if isinstance(pilot, Pilot) else Pilot.load(pilot)
        self.total_steps = total_steps
        self.clip = clip
        self.early_stop = early_stop
        self.patience = patience
        self.divergence_factor = divergence_factor
        self.feed = ValidationFeed(
            how_to_validate.format(k=self.pilot.decision_interval)
        )
        self.attached = False
        self._with_val = False
        self._resumed: dict[str, Any] | None = None

    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        grad_scaler: torch.amp.GradScaler | None,
    ) -> bool:
        """Attaches the pilot (restoring a checkpoint's state); True with validation.

        A fresh run uses validation when the framework measured a validation loss
        before the first step; a resumed run does what it did before.
        """
        resumed, self._resumed = self._resumed, None
        self._with_val = resumed["with_val"] if resumed else self.feed.step == 0
        self.pilot.attach(
            optimizer,
            self.total_steps or total_steps,
            val_fn=self._val_fn if self._with_val else None,
            clip=self.clip,
            divergence_factor=self.divergence_factor,
            grad_scaler=grad_scaler,
            warn_scheduler=False,
        )
        if resumed is not None:
            self.pilot.load_state_dict(resumed["pilot"])
        self.attached = True
        return self._with_val

    def _val_fn(self) -> float:
        return self.feed.read(self.pilot.steps_done if self.attached else None)

    def step(self, loss: torch.Tensor | float) -> bool:
        """One optimizer step of the pilot; True when it decided.

        The framework's scheduler may have written the lr since the last step, so
        the values in force are written back first (`Pilot.reapply`).
        """
        self.pilot.reapply()
        decides = self.pilot.next_step_decides
        self.pilot.step(loss)
        return decides

    def should_stop(self) -> bool:
        """With `early_stop`: the run diverged or validation stopped improving."""
        return self.early_stop and self.pilot.should_stop(self.patience)

    def logged_values(self) -> dict[str, float]:
        """`pilot/lr`, `pilot/beta1` (when the optimizer has betas), `pilot/clip`."""
        values = self.pilot.hyperparameters.items()
        return {f"pilot/{k}": v for k, v in values if v is not None}

    def state_dict(self) -> dict[str, Any]:
        """The pilot's state and the latest validation loss ({} before attach)."""
        if not self.attached:
            return {}
        return {
            "pilot": self.pilot.state_dict(),
            "with_val": self._with_val,
            "validation": self.feed.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keeps a checkpoint's state until the pilot is attached to the optimizer."""
        if state:
            self.feed.load_state_dict(state["validation"])
            self._resumed = state


class ValidationFeed:
    """The framework's latest validation loss and the optimizer step it followed.

    The pilot asks for a validation loss at `attach` (step 0) and at each decision
    (steps K, 2K, ...); the framework validates on its own schedule. A value counts
    for a decision only when it was measured after exactly that many optimizer
    steps; otherwise the pilot gets the latest one and a warning (once) says how to
    validate at the pilot's decision interval.
    """

    def __init__(self, how: str) -> None:
        self.value = math.nan
        self.step = -1
        self._how = how
        self._warned = False

    def record(self, value: float, step: int) -> None:
        """Notes a validation loss measured after `step` optimizer steps."""
        self.value = float(value)
        self.step = int(step)

    def read(self, step: int | None) -> float:
        """The latest value; `step`: the optimizer step it should follow, if any."""
        if step is not None and step != self.step and not self._warned:
            self._warned = True
            warnings.warn(
                f"the pilot decides at step {step} but the last validation ran "
                f"after step {self.step}: it uses that value; {self._how}",
                UserWarning,
                stacklevel=2,
            )
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The latest value and its step."""
        return {"value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()`."""
        self.record(state["value"], state["step"])
