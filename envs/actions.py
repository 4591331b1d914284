"""Hyperparameters on `[N]` tensors, and decoding of agent actions into them.

An action is one entry in `[-1, 1]` per controlled hyperparameter. It moves the
hyperparameter in log space by at most one *step* per decision:

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

# Per-coordinate bounds in log space: (low, high, step per decision, sign of the action).
_LOG_BOUNDS: Final = {
    "lr": (-6.0, 0.0, 0.5, 1.0),
    "beta1": (
        -3.0,
        math.log10(0.5),
        0.25,
        -1.0,
    ),  # log10(1 - beta1): up means less momentum
    "clip": (-2.0, 3.0, 0.5, 1.0),
}
LR_RANGE: Final = (1e-6, 1.0)
BETA1_RANGE: Final = (0.5, 0.999)
CLIP_RANGE: Final = (1e-2, 1e3)
WARMUP_FRACTION: Final = 0.05
ACTION_STEPS: Final = {name: bound[2] for name, bound in _LOG_BOUNDS.items()}
"""Largest log10 move per decision of each hyperparameter."""
ACTION_RANGES: Final = {"lr": LR_RANGE, "beta1": BETA1_RANGE, "clip": CLIP_RANGE}
"""Valid range of each hyperparameter."""


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
    def from_log_coordinates(cls, z: torch.Tensor) -> Hyperparams:
        """Inverse of `log_coordinates`, clamped to the valid ranges."""
        low = z.new_tensor([b[0] for b in _LOG_BOUNDS.values()])
        high = z.new_tensor([b[1] for b in _LOG_BOUNDS.values()])
        z = torch.minimum(torch.maximum(z, low), high)
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

    Returns:
        The new values, clamped to lr [1e-6, 1], beta1 [0.5, 0.999], clip [1e-2, 1e3].

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
    z = origin.log_coordinates()
    action = action.to(z.dtype).clamp(-1.0, 1.0)
    for column, name in enumerate(controlled):
        index = HPARAM_NAMES.index(name)
        _, _, step, sign = _LOG_BOUNDS[name]
        z[:, index] = z[:, index] + sign * step * action[:, column]
    return Hyperparams.from_log_coordinates(z)


def decode_in_run(
    action: torch.Tensor,
    current: Hyperparams,
    initial: Hyperparams,
    step: torch.Tensor,
    total: torch.Tensor,
    controlled: tuple[str, ...] = HPARAM_NAMES,
    mode: ActionMode = "compound",
) -> Hyperparams:
    """`decode_action` for runs at inner step `step` of `total`, started at `initial`.

    In residual mode the base schedule comes from those three; the engine, the
    evaluation controllers and the deployed pilot all decode through here.
    """
    base = base_schedule(initial, step, total) if mode == "residual" else None
    return decode_action(action, current, controlled, mode, base)
