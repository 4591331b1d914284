"""One rollout loop: run every slot of a VecEnv through its first episode and record it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

TRACE_KEYS = ("train_loss", "val_loss", "grad_norm", "lr", "beta1", "clip")


@dataclass
class EpisodeTrace:
    """What one run did in its first episode, one entry per decision."""

    task: str
    inner_steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(
        default_factory=lambda: {key: [] for key in TRACE_KEYS}
    )
    reward: float = 0.0
    final: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether the episode has ended."""
        return bool(self.final)

    @property
    def final_val_ratio(self) -> float:
        """Final validation loss relative to the start (inf when diverged)."""
        if self.final.get("diverged"):
            return float("inf")
        return self.final["final_val_loss"] / self.final["initial_val_loss"]


def first_episodes(
    venv: VecEnv,
    act: Callable[[np.ndarray], np.ndarray],
    decision_interval: int,
    seed: int | None = None,
) -> list[EpisodeTrace]:
    """Steps `venv` with `act(obs) -> actions` until every slot finished an episode.

    Slots that finish early keep being stepped (auto-reset) but are not recorded
    further, so every trace is exactly one whole episode.
    """
    if seed is not None:
        venv.seed(seed)
    obs = venv.reset()
    traces = [EpisodeTrace(task="") for _ in range(venv.num_envs)]
    while not all(trace.done for trace in traces):
        obs, rewards, dones, infos = venv.step(act(obs))
        for trace, reward, done, info in zip(traces, rewards, dones, infos):
            if trace.done:
                continue
            trace.task = str(info["task"])
            step = (len(trace.inner_steps) + 1) * decision_interval
            trace.inner_steps.append(step)
            for key in TRACE_KEYS:
                trace.values[key].append(float(info[key]))
            trace.reward += float(reward)
            if done:
                trace.final = {
                    key: float(info[key])
                    for key in (
                        "final_val_loss",
                        "initial_val_loss",
                        "best_val_loss",
                        "diverged",
                    )
                }
    return traces
