"""`BatchedTrainingVecEnv`: N inner training runs behind one SB3 `VecEnv`.

Runs are grouped into *buckets*, one `BatchedEngine` each (one family, equal shape
knobs). Observations of all buckets are concatenated in a fixed order. A finished
run is restarted at once with a new instance of its own bucket (SB3's auto-reset),
with `terminal_observation`, `TimeLimit.truncated` and `episode` in its info.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvIndices,
    VecEnvStepReturn,
)

from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import draw_episode
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.base import TaskFamily
from hyperpilot.envs.tasks.splits import FamilySpec, load_split
from hyperpilot.envs.training_env import action_space, check_action, observation_space


@dataclass(frozen=True)
class Group:
    """One bucket: a family with its knobs and how many runs it holds."""

    spec: FamilySpec
    n: int


def slices_of(sizes: Iterable[int]) -> list[slice]:
    """Consecutive slices of the given sizes: `[0:a]`, `[a:a+b]`, ..."""
    bounds = [0, *itertools.accumulate(sizes)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def groups_from(
    *,
    family: str | None = None,
    family_kwargs: Mapping[str, Any] | None = None,
    n: int | None = None,
    split: str | None = None,
    groups: Sequence[Mapping[str, Any]] | None = None,
) -> list[Group]:
    """Resolves the three ways of naming buckets into a list of `Group`s.

    Exactly one of `family` (with `n`), `split` (with `n`, shared out among the
    split's families) or `groups` (a list of `{family, n, <knobs>}`) is used.
    """
    given = [
        name
        for name, v in (("family", family), ("split", split), ("groups", groups))
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(
            f"give one of family, split or groups, not {' and '.join(given)}"
        )
    if groups is not None:
        if n is not None:
            raise ValueError("with groups, give n per group, not overall")
        result = []
        for index, entry in enumerate(groups):
            entry = dict(entry)
            if "family" not in entry or "n" not in entry:
                raise ValueError(f"groups[{index}] needs 'family' and 'n'")
            count = int(entry.pop("n"))
            result.append(Group(FamilySpec(str(entry.pop("family")), entry), count))
    else:
        if n is None:
            raise ValueError("give n, the number of parallel inner runs")
        if family is not None:
            specs = [FamilySpec(family, dict(family_kwargs or {}))]
        else:
            specs = load_split(split or "train")
        if n < len(specs):
            raise ValueError(
                f"n={n} is fewer than the {len(specs)} families of the split; "
                "every family needs at least one run"
            )
        share, extra = divmod(n, len(specs))
        result = [Group(s, share + (i < extra)) for i, s in enumerate(specs)]
    if not result or any(g.n < 1 for g in result):
        raise ValueError("every group needs n >= 1")
    return result


class SharedRunsVecEnv(VecEnv):
    """A VecEnv whose runs are one object: attributes and methods are the VecEnv's.

    SB3 asks a VecEnv for per-env attributes and methods (`get_attr`, `env_method`,
    e.g. a task-set setter); here every index answers with the VecEnv's own.
    """

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attributes are shared by all runs: one copy per index."""
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(
        self, attr_name: str, value: Any, indices: VecEnvIndices = None
    ) -> None:
        """Sets an attribute shared by all runs."""
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Calls a method of this VecEnv once and returns the result per index."""
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._get_indices(indices))

    def env_is_wrapped(
        self, wrapper_class: type, indices: VecEnvIndices = None
    ) -> list[bool]:
        """No run is wrapped in a gymnasium wrapper."""
        return [False] * len(self._get_indices(indices))


class BatchedTrainingVecEnv(SharedRunsVecEnv):
    """Many inner training runs, batched per bucket on one device, as an SB3 VecEnv.

    Args:
        family: One bucket of this family (with `family_kwargs` and `n`).
        family_kwargs: The family's knobs.
        n: Total runs (with `family` or `split`).
        split: One bucket per family of this task split, `n` shared out.
        groups: Explicit buckets: `[{family: mlp_digits, width: 64, n: 16}, ...]`.
        **settings: `EnvSettings` fields (decision_interval, reward, action_mode, ...).
    """

    def __init__(
        self,
        family: str | None = None,
        family_kwargs: Mapping[str, Any] | None = None,
        n: int | None = None,
        split: str | None = None,
        groups: Sequence[Mapping[str, Any]] | None = None,
        **settings: Any,
    ) -> None:
        self.groups = groups_from(
            family=family, family_kwargs=family_kwargs, n=n, split=split, groups=groups
        )
        self.settings = EnvSettings.from_kwargs(**settings)
        self.families: list[TaskFamily] = [g.spec.build() for g in self.groups]
        self.engines = [BatchedEngine(g.n, self.settings) for g in self.groups]
        self.slices = slices_of(g.n for g in self.groups)
        total = self.slices[-1].stop
        self.render_mode = None  # nothing to render; read by VecEnv.__init__
        super().__init__(total, observation_space(), action_space(self.settings))
        self._rngs: list[np.random.Generator | None] = [None] * total
        self._returns = np.zeros(total)
        self._lengths = np.zeros(total, dtype=np.int64)
        self._actions: np.ndarray | None = None
        self._started = time.time()

    @classmethod
    def from_config(cls, env_config: Any) -> BatchedTrainingVecEnv:
        """Builds the VecEnv from a config's `env` section (a mapping or dataclass)."""
        values = (
            dict(env_config) if isinstance(env_config, Mapping) else vars(env_config)
        )
        values = {k: v for k, v in values.items() if v is not None}
        return cls(**values)

    # -------------------------------------------------------------- episodes
    def _rng(self, run: int) -> np.random.Generator:
        seed = self._seeds[run]
        if seed is not None or self._rngs[run] is None:
            self._rngs[run], _ = seeding.np_random(seed)
        return self._rngs[run]

    def _draw(self, bucket: int, runs: Iterable[int]) -> list:
        offset = self.slices[bucket].start
        return [
            draw_episode(
                self.families[bucket],
                self._rng(offset + run),
                self.settings.init,
                self.settings.val_drop_prob,
            )
            for run in runs
        ]

    def reset(self) -> np.ndarray:
        """Starts a new episode in every run (seeded by `seed()` if it was called)."""
        observations = []
        for bucket, engine in enumerate(self.engines):
            runs = list(range(engine.n))
            observations.append(engine.start(runs, self._draw(bucket, runs)))
        self._reset_seeds()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self.reset_infos = [
            {"task": self.families[b].name}
            for b, engine in enumerate(self.engines)
            for _ in range(engine.n)
        ]
        return torch.cat(observations).cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        """Stores the actions `[num_envs, k]` for `step_wait`."""
        self._actions = check_action(actions, self.action_space, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Runs one decision window in every bucket, auto-resetting finished runs."""
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        observations, rewards, dones, infos = [], [], [], []
        for bucket, (engine, part) in enumerate(zip(self.engines, self.slices)):
            transition = engine.act(torch.from_numpy(self._actions[part]))
            obs = transition.obs.cpu().numpy()
            reward = transition.reward.cpu().numpy()
            ended = transition.terminated | transition.truncated
            done, time_limit = (
                torch.stack([ended, transition.truncated & ~transition.terminated])
                .cpu()
                .numpy()
            )
            bucket_infos = engine.run_infos(transition)
            for info, truncated in zip(bucket_infos, time_limit.tolist()):
                # as DummyVecEnv: https://github.com/openai/gym/issues/3102
                info["TimeLimit.truncated"] = truncated
            self._returns[part] += reward
            self._lengths[part] += 1
            finished = np.flatnonzero(done).tolist()
            for run in finished:
                slot = part.start + run
                info = bucket_infos[run]
                info["terminal_observation"] = obs[run].copy()
                info["episode"] = {
                    "r": round(float(self._returns[slot]), 6),
                    "l": int(self._lengths[slot]),
                    "t": round(time.time() - self._started, 6),
                }
                self._returns[slot] = 0.0
                self._lengths[slot] = 0
            if finished:
                restarted = engine.start(finished, self._draw(bucket, finished))
                obs[finished] = restarted.cpu().numpy()
            observations.append(obs)
            rewards.append(reward)
            dones.append(done)
            infos.extend(bucket_infos)
        self._actions = None
        return (
            np.concatenate(observations),
            np.concatenate(rewards).astype(np.float32),
            np.concatenate(dones),
            infos,
        )

    def close(self) -> None:
        """Releases the engines."""
        self.engines = []
