"""The reward: by default the negative validation loss, normalized by its value at the start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

from hyperpilot.envs.features import floored

REWARD_KINDS: Final = ("val_loss", "train_loss", "log_improvement")


@dataclass(frozen=True)
class RewardConfig:
    """How a decision is rewarded.

    Attributes:
        kind: `val_loss` (default): `-val_loss / first_val_loss`, measured on the
            instance's validation data, never its test data. `train_loss`: the same on
            the window's mean minibatch loss (known to overfit). `log_improvement`:
            `ln(previous val loss / val loss)`; an episode's rewards sum to
            `-ln(final val loss / first val loss)`, the loss the run ends with, paid
            out per decision (what the shipped pilot was trained on).
        terminal_weight: Adds `-terminal_weight * final_val_loss / first_val_loss`
            at the last decision of a run.
        divergence_penalty: A diverged run receives
            `-divergence_penalty * (decisions it had left + 1)` instead, so ending a
            run by divergence never pays (a plain step costs about -1 at worst).
        max_normalized_loss: Caps the normalized losses so one wild step cannot
            dominate the returns.
    """

    kind: str = "val_loss"
    terminal_weight: float = 0.0
    divergence_penalty: float = 1.0
    max_normalized_loss: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ValueError(
                f"reward kind {self.kind!r} is invalid; choose from {REWARD_KINDS}"
            )
        if self.divergence_penalty < 0 or self.max_normalized_loss <= 0:
            raise ValueError(
                "divergence_penalty must be >= 0 and max_normalized_loss > 0"
            )


def compute_reward(
    config: RewardConfig,
    *,
    val_loss: torch.Tensor,
    previous_val_loss: torch.Tensor,
    first_val_loss: torch.Tensor,
    train_loss: torch.Tensor,
    first_train_loss: torch.Tensor,
    last_decision: torch.Tensor,
    diverged: torch.Tensor,
    decisions_left: torch.Tensor,
) -> torch.Tensor:
    """`[N]` rewards for one decision; every argument is a `[N]` tensor.

    Losses enter through `floored`: a loss of 0 counts as the smallest positive
    number, so ratios and logs stay defined (and are then capped).
    """
    cap = config.max_normalized_loss
    val_loss = floored(val_loss)
    normalized_val = (val_loss / floored(first_val_loss)).nan_to_num(cap, cap)
    normalized_val = normalized_val.clamp(0, cap)
    if config.kind == "val_loss":
        reward = -normalized_val
    elif config.kind == "train_loss":
        ratio = floored(train_loss) / floored(first_train_loss)
        reward = -ratio.nan_to_num(cap, cap).clamp(0, cap)
    else:
        improvement = torch.log(floored(previous_val_loss) / val_loss)
        reward = improvement.nan_to_num(-cap, cap, -cap).clamp(-cap, cap)
    if config.terminal_weight:
        reward = reward - config.terminal_weight * normalized_val * last_decision
    penalty = -config.divergence_penalty * (decisions_left.to(reward.dtype) + 1.0)
    return torch.where(diverged, penalty, reward)
