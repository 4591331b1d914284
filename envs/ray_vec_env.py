"""`RayVecEnv`: the buckets of `BatchedTrainingVecEnv` spread over Ray actors.

The driver holds one SB3 `VecEnv`; W Ray actors (*workers*) each host a contiguous
range of run slots as one `BatchedTrainingVecEnv` per device (one per GPU of the
worker, or one on its CPU). A step sends one action array to every worker and gathers
one observation array from each, so the driver sees exactly what the local VecEnv
gives: auto-reset, `terminal_observation`, `TimeLimit.truncated`, `episode` and the
engine's info keys, and slot j seeded `seed + j` after `seed(seed)`.

Ray is imported when a `RayVecEnv` is built, so `WorkerDiedError` and the planning
helpers import without it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvStepReturn,
)

from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.training_env import action_space, check_action, observation_space
from hyperpilot.envs.vec_env import (
    BatchedTrainingVecEnv,
    Group,
    SharedRunsVecEnv,
    groups_from,
    slices_of,
)
from hyperpilot.runtime import configure_process

RAY_MISSING = "the Ray backend needs Ray: pip install 'hyperpilot[ray]'"


class WorkerDiedError(RuntimeError):
    """A Ray worker of a `RayVecEnv` died; its runs are gone with it."""


def import_ray() -> Any:
    """Imports Ray, or raises an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


# ------------------------------------------------------------------ planning
def plan_shards(groups: Sequence[Group], shards: int) -> list[list[Group]]:
    """Cuts the buckets into `shards` contiguous pieces of near-equal run counts.

    With at least as many buckets as shards, whole buckets are dealt out (the
    contiguous partition with the smallest largest shard). With fewer buckets, each
    bucket is split into parts in proportion to its size. Slot order is kept either
    way: concatenating the shards gives the buckets' runs in their original order.

    Raises:
        ValueError: If there are fewer runs than shards.
    """
    total = sum(g.n for g in groups)
    if shards < 1:
        raise ValueError(f"need at least one shard, got {shards}")
    if shards > total:
        raise ValueError(f"cannot cut {total} runs into {shards} shards")
    if shards <= len(groups):
        return _partition(list(groups), shards)
    counts = [1] * len(groups)
    for _ in range(shards - len(groups)):
        # the bucket with the most runs per part (that can still be cut) gets a part
        best = max(
            (i for i, g in enumerate(groups) if counts[i] < g.n),
            key=lambda i: groups[i].n / counts[i],
        )
        counts[best] += 1
    return [
        [Group(g.spec, g.n // k + (part < g.n % k))]
        for g, k in zip(groups, counts)
        for part in range(k)
    ]


def plan_workers(
    groups: Sequence[Group], workers: int, devices: int = 1
) -> list[list[list[Group]]]:
    """Per worker, its `devices` shards (see `plan_shards`), in slot order.

    Raises:
        ValueError: If there are fewer runs than workers x devices.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    total = sum(g.n for g in groups)
    if workers * devices > total:
        each = f" x {devices} GPUs" if devices > 1 else ""
        raise ValueError(
            f"--workers {workers}{each} is more than the {total} inner runs; "
            "lower --workers or raise env.n"
        )
    shards = plan_shards(groups, workers * devices)
    return [shards[w * devices : (w + 1) * devices] for w in range(workers)]


def _partition(groups: list[Group], parts: int) -> list[list[Group]]:
    """Contiguous partition of whole buckets into `parts`, minimizing the largest."""
    sizes = [g.n for g in groups]
    prefix = [0, *itertools.accumulate(sizes)]
    count = len(groups)
    inf = float("inf")
    # cost[j][i]: the smallest largest part when the first i buckets form j parts
    cost = [[inf] * (count + 1) for _ in range(parts + 1)]
    cut = [[0] * (count + 1) for _ in range(parts + 1)]
    cost[0][0] = 0
    for j in range(1, parts + 1):
        for i in range(j, count + 1):
            for start in range(j - 1, i):
                value = max(cost[j - 1][start], prefix[i] - prefix[start])
                if value < cost[j][i]:
                    cost[j][i], cut[j][i] = value, start
    result, end = [], count
    for j in range(parts, 0, -1):
        result.append(groups[cut[j][end] : end])
        end = cut[j][end]
    return result[::-1]


def worker_devices(device: str, gpus_per_worker: float) -> list[str]:
    """The devices one worker's shards go to, as seen inside the worker.

    Ray shows a worker only the GPUs it reserved, as `cuda:0`, `cuda:1`, ...; a
    worker without GPUs runs on its CPU.

    Raises:
        ValueError: For a device that does not fit `gpus_per_worker`.
    """
    if gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    kind = device.split(":")[0]
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r} is invalid; use auto, cpu or cuda[:N]")
    if gpus_per_worker > 0:
        if kind == "cpu":
            raise ValueError(
                f"--gpus-per-worker {gpus_per_worker:g} needs device auto or cuda, "
                "not cpu"
            )
        return [f"cuda:{i}" for i in range(max(1, int(gpus_per_worker)))]
    if kind == "cuda":
        raise ValueError(
            f"device {device!r} needs --gpus-per-worker >= 1 (Ray hands each worker "
            "its GPUs)"
        )
    return ["cpu"]


def describe(groups: Sequence[Group]) -> str:
    """`quadratic_2d x4, mlp_digits(width=32) x3`: buckets as one readable phrase."""
    return ", ".join(f"{g.spec.label} x{g.n}" for g in groups)


def check_resources(workers: int, cpus: float, gpus: float) -> None:
    """Fails at once when the whole Ray cluster has too few CPUs or GPUs for W actors.

    Starts a local Ray if none is running, as Ray's first remote call would.

    Raises:
        ValueError: Naming what is missing.
    """
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    have = ray.cluster_resources()
    for name, each in (("CPU", cpus), ("GPU", gpus)):
        if each > 0 and workers * each > have.get(name, 0.0):
            raise ValueError(
                f"{workers} workers x {each:g} {name} need {workers * each:g} {name}s; "
                f"the Ray cluster has {have.get(name, 0.0):g}"
            )


def first_line(error: BaseException) -> str:
    """The first line of an error's message, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _group_dicts(groups: Sequence[Group]) -> list[dict[str, Any]]:
    return [{"family": g.spec.family, **g.spec.kwargs, "n": g.n} for g in groups]


# -------------------------------------------------------------- the actor
class BucketWorker:
    """The body of one Ray actor: a few shards, one `BatchedTrainingVecEnv` each.

    Args:
        shards: Per shard, its buckets as `groups` entries (`{family, n, <knobs>}`).
        devices: Per shard, its device.
        settings: `EnvSettings` fields except `device`.
    """

    def __init__(
        self,
        shards: Sequence[Sequence[Mapping[str, Any]]],
        devices: Sequence[str],
        settings: Mapping[str, Any],
    ) -> None:
        configure_process(1)  # this actor's own process: one torch thread
        self.envs = [
            BatchedTrainingVecEnv(groups=shard, device=device, **settings)
            for shard, device in zip(shards, devices)
        ]
        self.slices = slices_of(env.num_envs for env in self.envs)

    def ready(self) -> dict[str, Any]:
        """Where this worker runs (answers once the envs are built)."""
        return {
            "pid": os.getpid(),
            "devices": [str(e.settings.device) for e in self.envs],
        }

    def reset(self, seeds: Sequence[int | None]) -> tuple[np.ndarray, list[dict]]:
        """Resets every shard with per-slot seeds; returns observations, reset infos."""
        observations, infos = [], []
        for env, part in zip(self.envs, self.slices):
            # SB3's VecEnv keeps the per-slot seeds of the next reset in `_seeds`
            env._seeds = list(seeds[part])
            observations.append(env.reset())
            infos.extend(env.reset_infos)
        return np.concatenate(observations), infos

    def step(
        self, actions: np.ndarray, seeds: Sequence[int | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Steps every shard; `seeds` (if given) replaces the slots' pending seeds."""
        actions = np.array(actions)  # Ray hands arrays over read-only
        observations, rewards, dones, infos = [], [], [], []
        for env, part in zip(self.envs, self.slices):
            if seeds is not None:
                env._seeds = list(seeds[part])
            obs, reward, done, info = env.step(actions[part])
            observations.append(obs)
            rewards.append(reward)
            dones.append(done)
            infos.extend(info)
        return (
            np.concatenate(observations),
            np.concatenate(rewards),
            np.concatenate(dones),
            infos,
        )


# ---------------------------------------------------------- the driver env
class RayVecEnv(SharedRunsVecEnv):
    """`BatchedTrainingVecEnv`'s buckets in W Ray actors, as one SB3 VecEnv.

    Results equal the local VecEnv's for the same seeds and actions (within float
    tolerance: a bucket cut across workers batches fewer runs per engine).

    Args:
        family: One bucket of this family (with `family_kwargs` and `n`).
        family_kwargs: The family's knobs.
        n: Total runs (with `family` or `split`).
        split: One bucket per family of this task split, `n` shared out.
        groups: Explicit buckets: `[{family: mlp_digits, width: 64, n: 16}, ...]`.
        workers: W, the number of Ray actors. Buckets are dealt out whole when
            there are at least W of them, else cut into parts (see `plan_shards`).
        gpus_per_worker: GPUs each actor reserves (0: CPU actors). With G >= 1
            the actor spreads its buckets over its G GPUs.
        cpus_per_worker: CPUs each actor reserves.
        start_timeout: Seconds to wait for Ray to place and start the actors.
        **settings: `EnvSettings` fields. `device` is `auto` (CPU actors, or the
            actors' GPUs with `gpus_per_worker`), `cpu` or `cuda`.

    Raises:
        ValueError: For a bad bucket configuration or device.
        ImportError: If Ray is not installed.
        RuntimeError: If Ray cannot start the actors within `start_timeout`.
    """

    def __init__(
        self,
        family: str | None = None,
        family_kwargs: Mapping[str, Any] | None = None,
        n: int | None = None,
        split: str | None = None,
        groups: Sequence[Mapping[str, Any]] | None = None,
        *,
        workers: int = 2,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        start_timeout: float = 300.0,
        **settings: Any,
    ) -> None:
        ray = import_ray()
        self.groups = groups_from(
            family=family, family_kwargs=family_kwargs, n=n, split=split, groups=groups
        )
        device = str(settings.pop("device", "auto"))
        devices = worker_devices(device, gpus_per_worker)
        # Validated here on the CPU: the driver needs no GPU of its own.
        self.settings = EnvSettings.from_kwargs(device="cpu", **settings)
        for group in self.groups:  # a bad family or knob fails here, not in an actor
            group.spec.build()
        shards_of = plan_workers(self.groups, workers, len(devices))
        self.assignment: list[list[Group]] = [
            [g for shard in mine for g in shard] for mine in shards_of
        ]
        self.worker_slices = slices_of(sum(g.n for g in a) for a in self.assignment)
        self.render_mode = None  # nothing to render; read by VecEnv.__init__
        total = self.worker_slices[-1].stop
        super().__init__(total, observation_space(), action_space(self.settings))

        check_resources(workers, cpus_per_worker, gpus_per_worker)
        self._ray = ray
        self._dead: WorkerDiedError | None = None
        self._pending: list[Any] | None = None
        self._sent_seeds: list[int | None] = list(self._seeds)
        actor = ray.remote(BucketWorker).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker
        )
        self.actors = [
            actor.remote([_group_dicts(s) for s in mine], devices, settings)
            for mine in shards_of
        ]
        self.worker_info = self._start(start_timeout)

    @classmethod
    def from_config(cls, env_config: Any, **ray_kwargs: Any) -> RayVecEnv:
        """Builds the VecEnv from a config's `env` section, plus the Ray options."""
        values = (
            dict(env_config) if isinstance(env_config, Mapping) else vars(env_config)
        )
        values = {k: v for k, v in values.items() if v is not None}
        return cls(**values, **ray_kwargs)

    # ------------------------------------------------------------ the workers
    def _start(self, timeout: float) -> list[dict[str, Any]]:
        """Waits for every actor to be placed and built; cleans up if one is not."""
        ray = self._ray
        refs = [actor.ready.remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        try:
            if len(ready) < len(refs):
                raise RuntimeError(
                    f"Ray could not start {len(refs)} workers within {timeout:g} s "
                    f"(each needs the CPUs and GPUs asked for); the cluster has "
                    f"{ray.cluster_resources()}"
                )
            infos = []
            for worker, ref in enumerate(refs):
                try:
                    infos.append(ray.get(ref))
                except ray.exceptions.RayActorError as error:
                    raise RuntimeError(
                        f"Ray worker {worker} failed to start: {first_line(error)}"
                    ) from None
            return infos
        except BaseException:
            self.close()
            raise

    def _gather(self, refs: list[Any]) -> list[Any]:
        """`ray.get` per worker, turning a dead actor into a `WorkerDiedError`."""
        ray = self._ray
        results = []
        for worker, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as error:
                self._dead = self._died(worker, error)
                raise self._dead from None
        return results

    def _died(self, worker: int, error: BaseException) -> WorkerDiedError:
        part = self.worker_slices[worker]
        return WorkerDiedError(
            f"Ray worker {worker} of {len(self.actors)} died (it ran slots "
            f"{part.start}-{part.stop - 1}: {describe(self.assignment[worker])}): "
            f"{first_line(error)}"
        )

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise self._dead
        if not self.actors:
            raise RuntimeError("this RayVecEnv is closed")

    # -------------------------------------------------------------- episodes
    def reset(self) -> np.ndarray:
        """Starts a new episode in every run (seeded by `seed()` if it was called)."""
        self._check_alive()
        results = self._gather(
            [
                actor.reset.remote(self._seeds[part])
                for actor, part in zip(self.actors, self.worker_slices)
            ]
        )
        self._reset_seeds()
        self._sent_seeds = list(self._seeds)
        self.reset_infos = [info for _, infos in results for info in infos]
        return np.concatenate([obs for obs, _ in results])

    def step_async(self, actions: np.ndarray) -> None:
        """Checks the actions `[num_envs, k]` and sends each worker its rows."""
        self._check_alive()
        actions = check_action(actions, self.action_space, self.num_envs)
        seeds = None
        if self._seeds != self._sent_seeds:  # seed() called between resets
            seeds = list(self._seeds)
            self._sent_seeds = list(self._seeds)
        self._pending = [
            actor.step.remote(actions[part], None if seeds is None else seeds[part])
            for actor, part in zip(self.actors, self.worker_slices)
        ]

    def step_wait(self) -> VecEnvStepReturn:
        """Gathers one decision window of every worker, in slot order."""
        if self._pending is None:
            raise RuntimeError("call step_async() before step_wait()")
        pending, self._pending = self._pending, None
        results = self._gather(pending)
        return (
            np.concatenate([r[0] for r in results]),
            np.concatenate([r[1] for r in results]).astype(np.float32),
            np.concatenate([r[2] for r in results]),
            [info for r in results for info in r[3]],
        )

    # ------------------------------------------------------- VecEnv plumbing
    def close(self) -> None:
        """Stops the actors (their runs end with them)."""
        for actor in getattr(self, "actors", []):
            try:
                self._ray.kill(actor)
            except Exception:  # already gone, or Ray already shut down
                pass
        self.actors = []
