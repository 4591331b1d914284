"""Hyperparameters on `[N]` tensors, and decoding of agent actions into them.

An action is one entry in `[-1, 1]` per controlled hyperparameter. It moves the
hyperparameter in log space by at most one *step* per decision, and the result is
clamped to a range; `ActionBounds` holds both (the defaults below, the widest the
package allows; a training config may narrow them, and a bundle carries its own):

| name  | log-space coordinate | step per decision | clamped to     |
|-------|----------------------|-------------------|----------------|
| lr    | log10(lr)            | +-0.5             | [1e-6, 1]      |
| beta1 | log10(1 - beta1)     | +-0.25            | [0.5, 0.999]   |
| clip  | log10(clip)          | +-0.5             | [1e-2, 1e3]    |

A positive action raises lr, beta1 and clip. Mode `compound` adds the step to the
current value (deltas accumulate); mode `residual` applies it to a base schedule
(warmup + cosine for lr, the initial beta1 and clip), so the value never leaves
+-one step of that base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, get_args

import torch

HParamName = Literal["lr", "beta1", "clip"]
HPARAM_NAMES: Final[tuple[HParamName, ...]] = get_args(HParamName)
ActionMode = Literal["compound", "residual"]
ACTION_MODES: Final[tuple[ActionMode, ...]] = get_args(ActionMode)

LR_RANGE: Final = (1e-6, 1.0)
BETA1_RANGE: Final = (0.5, 0.999)
CLIP_RANGE: Final = (1e-2, 1e3)
WARMUP_FRACTION: Final = 0.05
ACTION_STEPS: Final = {"lr": 0.5, "beta1": 0.25, "clip": 0.5}
"""The default largest log10 move per decision of each hyperparameter."""
ACTION_RANGES: Final = {"lr": LR_RANGE, "beta1": BETA1_RANGE, "clip": CLIP_RANGE}
"""The widest valid range of each hyperparameter (also the default bounds)."""
# The sign that turns a positive action into a higher value of each coordinate:
# log10(1 - beta1) falls when beta1 rises.
_SIGNS: Final = {"lr": 1.0, "beta1": -1.0, "clip": 1.0}


def _log_coordinate(name: str, value: float) -> float:
    """The coordinate of a value; a power of ten lands on its integer exactly."""
    z = math.log10(1.0 - value) if name == "beta1" else math.log10(value)
    return float(round(z)) if abs(z - round(z)) < 1e-12 else z


@dataclass(frozen=True)
class ActionBounds:
    """How far one decision moves each hyperparameter, and where it is clamped.

    Attributes:
        lr_step: Largest move of log10(lr) per decision.
        beta1_step: Largest move of log10(1 - beta1) per decision.
        clip_step: Largest move of log10(clip) per decision.
        lr: The range lr is clamped to, inside [1e-6, 1].
        beta1: The range beta1 is clamped to, inside [0.5, 0.999].
        clip: The range clip is clamped to, inside [1e-2, 1e3].
    """

    lr_step: float = ACTION_STEPS["lr"]
    beta1_step: float = ACTION_STEPS["beta1"]
    clip_step: float = ACTION_STEPS["clip"]
    lr: tuple[float, float] = LR_RANGE
    beta1: tuple[float, float] = BETA1_RANGE
    clip: tuple[float, float] = CLIP_RANGE

    def __post_init__(self) -> None:
        for name, step in self.steps().items():
            if not 0.0 < step <= 3.0:
                raise ValueError(
                    f"{name}_step must be in (0, 3] (log10 units), got {step}"
                )
        for name, (low, high) in self.ranges().items():
            widest_low, widest_high = ACTION_RANGES[name]
            if not widest_low <= low < high <= widest_high:
                raise ValueError(
                    f"{name} range [{low}, {high}] must be ordered and inside "
                    f"[{widest_low}, {widest_high}]"
                )

    def steps(self) -> dict[str, float]:
        """`{name: largest log10 move per decision}`."""
        return {"lr": self.lr_step, "beta1": self.beta1_step, "clip": self.clip_step}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """`{name: (low, high)}` of the hyperparameters' values."""
        return {"lr": self.lr, "beta1": self.beta1, "clip": self.clip}

    def log_box(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Lows and highs of the coordinates of `Hyperparams.log_coordinates`."""
        corners = [
            sorted(_log_coordinate(name, v) for v in values)
            for name, values in self.ranges().items()
        ]
        return tuple(c[0] for c in corners), tuple(c[1] for c in corners)


@dataclass(frozen=True)
class Hyperparams:
    """Per-run optimizer hyperparameters, each a `[N]` tensor."""

    lr: torch.Tensor
    beta1: torch.Tensor
    clip: torch.Tensor

    @classmethod
    def full(
        cls, n: int, lr: float, beta1: float, clip: float, **tensor_kwargs: object
    ) -> Hyperparams:
        """`n` runs that share the same values."""
        return cls(
            *(torch.full((n,), float(v), **tensor_kwargs) for v in (lr, beta1, clip))
        )

    def log_coordinates(self) -> torch.Tensor:
        """`[N, 3]`: log10(lr), log10(1 - beta1), log10(clip)."""
        return torch.stack(
            [self.lr.log10(), (1.0 - self.beta1).log10(), self.clip.log10()], dim=-1
        )

    @classmethod
    def from_log_coordinates(
        cls, z: torch.Tensor, bounds: ActionBounds | None = None
    ) -> Hyperparams:
        """Inverse of `log_coordinates`, clamped to `bounds`' ranges (default: widest)."""
        low, high = (bounds or DEFAULT_BOUNDS).log_box()
        z = torch.minimum(torch.maximum(z, z.new_tensor(low)), z.new_tensor(high))
        power = torch.pow(10.0, z)
        return cls(lr=power[:, 0], beta1=1.0 - power[:, 1], clip=power[:, 2])

    def where(self, mask: torch.Tensor, other: Hyperparams) -> Hyperparams:
        """Takes `self` where `mask` is true and `other` elsewhere."""
        return Hyperparams(
            *(torch.where(mask, a, b) for a, b in zip(self.values(), other.values()))
        )

    def values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(lr, beta1, clip)`."""
        return (self.lr, self.beta1, self.clip)

    def to(self, *args: object, **kwargs: object) -> Hyperparams:
        """Moves or casts all three tensors like `torch.Tensor.to`."""
        return Hyperparams(*(v.to(*args, **kwargs) for v in self.values()))


def validate_controlled(controlled: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Checks a controlled set and returns it in canonical order (lr, beta1, clip)."""
    unknown = [name for name in controlled if name not in HPARAM_NAMES]
    if unknown or not controlled or len(set(controlled)) != len(controlled):
        raise ValueError(
            f"controlled must be a non-empty subset of {list(HPARAM_NAMES)}, each "
            f"named once; got {list(controlled)}"
        )
    return tuple(name for name in HPARAM_NAMES if name in controlled)


def warmup_cosine(
    step: torch.Tensor,
    total: torch.Tensor,
    peak: torch.Tensor,
    warmup_fraction: float = WARMUP_FRACTION,
    final_fraction: float = 0.0,
) -> torch.Tensor:
    """Linear warmup to `peak`, then cosine decay to `final_fraction * peak`.

    All arguments are `[N]` tensors (or broadcastable); `step` counts from 0.
    """
    step = step.to(peak.dtype)
    total = total.to(peak.dtype)
    warmup = torch.clamp(torch.ceil(warmup_fraction * total), min=1.0)
    ramp = (step + 1.0) / (warmup + 1.0)
    progress = torch.clamp((step - warmup) / torch.clamp(total - warmup, min=1.0), 0, 1)
    cosine = final_fraction + (1 - final_fraction) * 0.5 * (
        1.0 + torch.cos(math.pi * progress)
    )
    return peak * torch.where(step < warmup, ramp, cosine)


def base_schedule(
    initial: Hyperparams, step: torch.Tensor, total: torch.Tensor
) -> Hyperparams:
    """The residual mode's base: warmup + cosine lr, constant beta1 and clip."""
    lr = warmup_cosine(step, total, initial.lr).clamp(*LR_RANGE)
    return Hyperparams(lr=lr, beta1=initial.beta1, clip=initial.clip)


def decode_action(
    action: torch.Tensor,
    current: Hyperparams,
    controlled: tuple[str, ...] = HPARAM_NAMES,
    mode: ActionMode = "compound",
    base: Hyperparams | None = None,
    bounds: ActionBounds | None = None,
) -> Hyperparams:
    """Maps actions `[N, len(controlled)]` in `[-1, 1]` to new hyperparameters.

    Args:
        action: One column per controlled hyperparameter, in `controlled` order.
            Values outside `[-1, 1]` are clipped.
        current: The values in force now.
        controlled: Which hyperparameters the columns move; the others keep their
            current value (compound) or their base value (residual).
        mode: `compound` (move from `current`) or `residual` (move from `base`).
        base: The base schedule's values now; required in residual mode.
        bounds: Steps and ranges (default: `ActionBounds()`, the table above).

    Returns:
        The new values, clamped to `bounds`' ranges.

    Raises:
        ValueError: If the action's shape does not match or it holds NaN.
    """
    n = current.lr.shape[0]
    if action.shape != (n, len(controlled)):
        raise ValueError(
            f"action has shape {tuple(action.shape)}, expected ({n}, {len(controlled)})"
            f" (one column per controlled hyperparameter: {list(controlled)})"
        )
    if torch.isnan(action).any():
        raise ValueError("action contains NaN")
    if mode == "residual":
        if base is None:
            raise ValueError("residual mode needs the base schedule's values")
        origin = base
    elif mode == "compound":
        origin = current
    else:
        raise ValueError(f"action mode {mode!r} is invalid; choose from {ACTION_MODES}")
    bounds = bounds or DEFAULT_BOUNDS
    steps = bounds.steps()
    z = origin.log_coordinates()
    action = action.to(z.dtype).clamp(-1.0, 1.0)
    for column, name in enumerate(controlled):
        index = HPARAM_NAMES.index(name)
        z[:, index] = z[:, index] + _SIGNS[name] * steps[name] * action[:, column]
    return Hyperparams.from_log_coordinates(z, bounds)


def decode_in_run(
    action: torch.Tensor,
    current: Hyperparams,
    initial: Hyperparams,
    step: torch.Tensor,
    total: torch.Tensor,
    controlled: tuple[str, ...] = HPARAM_NAMES,
    mode: ActionMode = "compound",
    bounds: ActionBounds | None = None,
) -> Hyperparams:
    """`decode_action` for runs at inner step `step` of `total`, started at `initial`.

    In residual mode the base schedule comes from those three; the engine, the
    evaluation controllers and the deployed pilot all decode through here.
    """
    base = base_schedule(initial, step, total) if mode == "residual" else None
    return decode_action(action, current, controlled, mode, base, bounds)


DEFAULT_BOUNDS: Final = ActionBounds()
"""The widest bounds, the env's default: the table of the module docstring."""
