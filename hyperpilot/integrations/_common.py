"""What both framework callbacks share: the pilot they wrap and the validation feed."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from hyperpilot.agents.pilot import Pilot


def resolve_pilot(pilot: str | Path | Pilot) -> Pilot:
    """A `Pilot` as given, or loaded from a bundle path or a shipped name."""
    return pilot if isinstance(pilot, Pilot) else Pilot.load(pilot)


def pilot_step(pilot: Pilot, loss: torch.Tensor | float) -> bool:
    """One optimizer step of the pilot inside a framework; True when it decided.

    The framework's scheduler may have written the lr since the last step, so the
    values in force are written back first (`Pilot.reapply`).
    """
    pilot.reapply()
    decides = pilot.next_step_decides
    pilot.step(loss)
    return decides


def logged_values(pilot: Pilot) -> dict[str, float]:
    """`pilot/lr`, `pilot/beta1` (when the optimizer has betas) and `pilot/clip`."""
    return {f"pilot/{k}": v for k, v in pilot.hyperparameters.items() if v is not None}


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
