"""`InnerTrainingEnv`: one inner training run as a Gymnasium environment (the engine, N = 1)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import draw_episode
from hyperpilot.envs.features import OBS_HIGH, OBS_LOW
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.splits import FamilySpec, load_split


def observation_space() -> spaces.Box:
    """The observation box, built from `OBS_FEATURES`."""
    return spaces.Box(np.array(OBS_LOW, np.float32), np.array(OBS_HIGH, np.float32))


def action_space(settings: EnvSettings) -> spaces.Box:
    """One entry in [-1, 1] per controlled hyperparameter."""
    return spaces.Box(-1.0, 1.0, (len(settings.controlled),), np.float32)


def check_action(
    action: np.ndarray, space: spaces.Box, n: int | None = None
) -> np.ndarray:
    """Returns `action` as float32, or raises a clear error.

    With `n`, `action` holds one row per run of a VecEnv: shape `(n, *space.shape)`.
    """
    array = np.asarray(action, dtype=np.float32)
    expected = space.shape if n is None else (n, *space.shape)
    if array.shape != expected:
        raise ValueError(
            f"action has shape {array.shape}, expected {expected} "
            "(one entry per controlled hyperparameter)"
        )
    finite = np.isfinite(array).reshape(len(array) if n else 1, -1).all(axis=1)
    if not finite.all():
        where = f" in rows {np.flatnonzero(~finite).tolist()}" if n else ""
        raise ValueError(f"action must be finite{where}, got NaN or inf")
    return array


class InnerTrainingEnv(gym.Env[np.ndarray, np.ndarray]):
    """Steer Adam's learning rate, beta1 and clipping threshold while a network trains.

    ## Description
    Each episode is one inner training run: a task instance (model, data, loss) drawn
    from a family, trained by Adam with per-step gradient-norm clipping. Every
    `decision_interval` (K) inner steps the agent sees scale-free features of the run
    and moves the hyperparameters. The engine behind it is the same one that
    `BatchedTrainingVecEnv` runs with N runs.

    ## Action Space
    `Box(-1, 1, (k,), float32)`, one entry per controlled hyperparameter (k = 3 by
    default: lr, beta1, clip). Per decision an entry of 1 moves log10(lr) by +0.5,
    log10(1 - beta1) by -0.25 and log10(clip) by +0.5; values are clamped to
    lr [1e-6, 1], beta1 [0.5, 0.999], clip [1e-2, 1e3]. Mode `compound` accumulates
    the moves; mode `residual` applies them to a warmup + cosine base schedule.

    ## Observation Space
    `Box(low, high, (14,), float32)`, named in `hyperpilot.envs.features.OBS_FEATURES`:

    | index | name                | range    |
    |-------|---------------------|----------|
    | 0     | log_loss_ratio      | [-10, 10]|
    | 1     | loss_trend_short    | [-5, 5]  |
    | 2     | loss_trend_long     | [-5, 5]  |
    | 3     | log_grad_norm_ratio | [-10, 10]|
    | 4     | grad_norm_trend     | [-5, 5]  |
    | 5     | grad_agreement      | [-1, 1]  |
    | 6     | log_lr              | [-1, 1]  |
    | 7     | log_one_minus_beta1 | [-1, 1]  |
    | 8     | log_clip            | [-1, 1]  |
    | 9     | clip_fraction       | [0, 1]   |
    | 10    | log_val_ratio       | [-10, 10]|
    | 11    | train_val_gap       | [-10, 10]|
    | 12    | val_available       | {0, 1}   |
    | 13    | progress            | [0, 1]   |

    ## Rewards
    By default `-val_loss / first_val_loss` after each decision, on the instance's
    validation data (never its test data); `reward` selects `train_loss` or
    `log_improvement` instead and may add a terminal term. A diverged run gets
    `-divergence_penalty * (decisions left + 1)`.

    ## Starting State
    `reset` draws, from the env's `np_random` alone: the family (when built from a
    split), the task instance, initial lr (log-uniform [1e-5, 1e-1]), beta1
    (uniform [0.8, 0.95]), clip (log-uniform [0.1, 100]), and whether the
    observation shows validation (`val_drop_prob`).

    ## Episode End
    - Termination: the run diverged (non-finite loss or parameters, or a loss above
      `divergence_factor` x its first loss).
    - Truncation: the instance's horizon of inner steps is spent (set by the env
      itself; episodes last ceil(horizon / K) decisions).

    ## Info
    Every step: `train_loss` (window mean), `val_loss`, `grad_norm` (window mean,
    before clipping), `lr`, `beta1`, `clip` (in force during the window) and `task`.
    The last step of an episode adds `final_val_loss`, `initial_val_loss`,
    `best_val_loss` and `diverged`.

    ## Arguments
    ```python
    gym.make("hyperpilot/InnerTraining-v0")  # families drawn from the train split
    gym.make("hyperpilot/InnerTraining-v0", family="mlp_digits",
             family_kwargs={"width": 32}, decision_interval=10)
    ```
    `family` / `family_kwargs` or `split`, then `EnvSettings` fields: `decision_interval`,
    `reward` (a kind or a dict), `action_mode`, `controlled`, `init`, `val_drop_prob`,
    `divergence_factor`, `device`, `dtype`.

    ## Version History
    - v0: initial version (features version 1).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        family: str | None = None,
        family_kwargs: dict[str, Any] | None = None,
        split: str | None = None,
        **settings: Any,
    ) -> None:
        if family is not None and split is not None:
            raise ValueError("give either family or split, not both")
        if family is None:
            self.specs = load_split(split or "train")
        else:
            self.specs = [FamilySpec(family, dict(family_kwargs or {}))]
        self.settings = EnvSettings.from_kwargs(**settings)
        # Built here (no data is read until a family samples), so a bad knob is
        # refused by `gym.make`, not at the first reset.
        self._families = [spec.build() for spec in self.specs]
        self.action_space = action_space(self.settings)
        self.observation_space = observation_space()
        self._engine: BatchedEngine | None = None
        self._engine_family = -1

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Starts a new inner run drawn from `np_random`."""
        super().reset(seed=seed)
        index = 0
        if len(self.specs) > 1:
            index = int(self.np_random.integers(len(self.specs)))
        family = self._families[index]
        episode = draw_episode(
            family, self.np_random, self.settings.init, self.settings.val_drop_prob
        )
        if self._engine is None or self._engine_family != index:
            self._engine = BatchedEngine(1, self.settings)
            self._engine_family = index
        obs = self._engine.start([0], [episode])
        info = {
            "task": family.name,
            "lr": episode.lr,
            "beta1": episode.beta1,
            "clip": episode.clip,
        }
        return obs[0].cpu().numpy(), info

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Applies the action, trains K inner steps, and reports the result."""
        if self._engine is None:
            raise RuntimeError("call reset() before step()")
        array = check_action(action, self.action_space)
        transition = self._engine.act(torch.from_numpy(array)[None])
        info = self._engine.run_infos(transition)[0]
        return (
            transition.obs[0].cpu().numpy(),
            float(transition.reward[0]),
            bool(transition.terminated[0]),
            bool(transition.truncated[0]),
            info,
        )
