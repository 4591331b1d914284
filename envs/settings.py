"""Settings shared by the engine and both env views, as plain YAML-expressible values."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

import torch

from hyperpilot.envs.actions import (
    ACTION_MODES,
    HPARAM_NAMES,
    ActionBounds,
    ActionMode,
    HParamName,
    validate_controlled,
)
from hyperpilot.envs.episodes import InitRanges
from hyperpilot.envs.reward import RewardConfig

Dtype = Literal["float32", "float64"]
DTYPES: Final[dict[Dtype, torch.dtype]] = {
    "float32": torch.float32,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class EnvSettings:
    """How inner runs are controlled, observed and rewarded.

    The training config's `env` keys are these fields, in this order (but `device`,
    `beta2`, `eps`): a new field here is a new config key, checked by `__post_init__`.

    Attributes:
        decision_interval: K, inner steps between two decisions.
        action_mode: `compound` (deltas accumulate) or `residual` (deltas act on a
            warmup + cosine base schedule).
        controlled: Hyperparameters the action moves, a subset of (lr, beta1, clip).
        action_bounds: How far a decision moves each hyperparameter and where it
            is clamped (YAML: `{lr_step: 0.25, beta1: [0.8, 0.999]}`).
        reward: The reward definition.
        init: Ranges of the initial hyperparameters.
        val_drop_prob: Share of episodes whose observation hides validation.
        divergence_factor: A run diverges when its loss exceeds this times its first.
        device: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
        dtype: `float32` or `float64` for the inner runs.
        beta2: Adam's beta2 (fixed).
        eps: Adam's eps (fixed).
        compile: `torch.compile` the batched gradient step (opt-in: it costs tens
            of seconds per shape bucket before it pays off).
        capture: Replay each decision window's K inner steps as one CUDA graph
            (CUDA only; opt-in): one launch instead of hundreds of kernel
            launches per window. The first window of each kind runs eagerly and
            is captured; not with `compile`.
    """

    decision_interval: int = 10
    action_mode: ActionMode = "compound"
    controlled: tuple[HParamName, ...] = HPARAM_NAMES
    action_bounds: ActionBounds = field(default_factory=ActionBounds)
    reward: RewardConfig = field(default_factory=RewardConfig)
    init: InitRanges = field(default_factory=InitRanges)
    val_drop_prob: float = 0.0
    divergence_factor: float = 100.0
    device: str = "auto"
    dtype: Dtype = "float32"
    beta2: float = 0.999
    eps: float = 1e-8
    compile: bool = False
    capture: bool = False

    def __post_init__(self) -> None:
        if self.decision_interval < 1:
            raise ValueError(
                f"decision_interval must be >= 1, got {self.decision_interval}"
            )
        if self.action_mode not in ACTION_MODES:
            raise ValueError(
                f"action_mode {self.action_mode!r} is invalid; choose from {ACTION_MODES}"
            )
        object.__setattr__(self, "controlled", validate_controlled(self.controlled))
        if not 0.0 <= self.val_drop_prob <= 1.0:
            raise ValueError(
                f"val_drop_prob must be a float in [0, 1], got {self.val_drop_prob}"
            )
        if self.divergence_factor <= 1.0:
            raise ValueError(
                f"divergence_factor must be > 1, got {self.divergence_factor}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype {self.dtype!r} is invalid; choose from {list(DTYPES)}"
            )
        if self.capture and self.compile:
            raise ValueError("capture and compile exclude each other; choose one")
        resolve_device(self.device)

    def check_capture(self, device: torch.device) -> None:
        """Refuses `capture` on a device other than CUDA.

        Not part of `__post_init__`: a config's env knobs are checked with the
        CPU standing in for `run.device`; the engine and the config's
        `settings(device)` call this with the real device.

        Raises:
            ValueError: If `capture` is on and `device` is not a CUDA device.
        """
        if self.capture and device.type != "cuda":
            raise ValueError(
                f"capture (CUDA graphs) needs a CUDA device, got {device}; "
                "set capture: false"
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EnvSettings:
        """Builds settings from plain values, e.g. `reward={"kind": "train_loss"}`."""
        if isinstance(kwargs.get("reward"), dict):
            kwargs["reward"] = RewardConfig(**kwargs["reward"])
        elif isinstance(kwargs.get("reward"), str):
            kwargs["reward"] = RewardConfig(kind=kwargs["reward"])
        if isinstance(kwargs.get("init"), dict):
            kwargs["init"] = InitRanges(
                **{k: tuple(v) for k, v in kwargs["init"].items()}
            )
        if isinstance(kwargs.get("action_bounds"), dict):
            kwargs["action_bounds"] = ActionBounds(
                **{
                    k: tuple(v) if isinstance(v, list | tuple) else v
                    for k, v in kwargs["action_bounds"].items()
                }
            )
        if "controlled" in kwargs:
            kwargs["controlled"] = tuple(kwargs["controlled"])
        return cls(**kwargs)

    def to_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of an env view (`from_kwargs` accepts them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def torch_dtype(self) -> torch.dtype:
        """The inner runs' dtype."""
        return DTYPES[self.dtype]


def resolve_device(device: str) -> torch.device:
    """`auto` becomes `cuda` when a GPU is there, else `cpu`; others are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is invalid; use auto, cpu or cuda[:N]"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is invalid; use auto, cpu or cuda[:N]")
    return resolved
