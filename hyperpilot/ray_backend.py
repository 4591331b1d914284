"""The Ray backend of the commands: joining a cluster, and evaluation jobs as Ray tasks.

Meta-training's side is `hyperpilot.envs.ray_vec_env.RayVecEnv`; this module holds
what the `--backend ray` commands add around it. Ray is imported lazily, so the
module imports without it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from hyperpilot.envs.ray_vec_env import (
    check_resources,
    first_line,
    import_ray,
    plan_workers,
    worker_devices,
)
from hyperpilot.envs.vec_env import groups_from
from hyperpilot.runtime import UserError, configure_process

__all__ = [
    "RayOptions",
    "check_options",
    "connect",
    "job_runner",
    "shutdown",
]


@dataclass(frozen=True)
class RayOptions:
    """How a `--backend ray` command spreads its work.

    Attributes:
        workers: `train`: Ray actors hosting the engine buckets (required);
            `evaluate`: jobs in flight at once (None: as many as Ray has CPUs).
        gpus_per_worker: GPUs each actor reserves (0: CPU actors).
        address: A running cluster's address (`HEAD:6379`); None starts a local Ray.
    """

    workers: int | None
    gpus_per_worker: float = 0.0
    address: str | None = None

    def venv_kwargs(self) -> dict[str, Any]:
        """The `RayVecEnv` keyword arguments these options stand for."""
        return {"workers": self.workers, "gpus_per_worker": self.gpus_per_worker}

    def flags(self) -> list[str]:
        """The command-line flags that give these options again (for resume hints)."""
        flags = ["--backend", "ray", "--workers", str(self.workers)]
        if self.gpus_per_worker:
            flags += ["--gpus-per-worker", f"{self.gpus_per_worker:g}"]
        if self.address:
            flags += ["--ray-address", self.address]
        return flags


def check_options(options: RayOptions, buckets: dict[str, Any], device: str) -> None:
    """Checks, before anything is written, that Ray can host these runs.

    Args:
        options: The Ray options.
        buckets: The bucket kwargs (`TrainConfig.env.buckets()`).
        device: Where the inner runs go (`run.device`).

    Raises:
        ValueError: For a device that does not fit the GPUs, fewer runs than
            workers, or a cluster too small for the workers (after `connect`).
    """
    devices = worker_devices(device, options.gpus_per_worker)
    plan_workers(groups_from(**buckets), options.workers, len(devices))
    check_resources(options.workers, 1.0, options.gpus_per_worker)


def connect(address: str | None = None) -> bool:
    """Joins the Ray cluster at `address`, or starts a local one; for entry points.

    Returns:
        True when this call started Ray (the caller shuts it down), False when Ray
        was already initialized in this process (e.g. by a test).

    Raises:
        UserError: If no cluster answers at `address`.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        _probe(address)  # Ray itself retries an unreachable address for minutes
    try:
        ray.init(address=address, include_dashboard=False)
    except ConnectionError as error:
        raise UserError(
            f"no Ray cluster answers at {address}: {first_line(error)}"
        ) from None
    return True


def _probe(address: str, timeout: float = 10.0) -> None:
    """Raises UserError when nothing listens at `HOST:PORT` (others pass)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # `auto`, `ray://...`: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise UserError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start "
            "one with `ray start --head` on that machine"
        ) from None


def shutdown() -> None:
    """Leaves (or stops the local) Ray."""
    import_ray().shutdown()


def _run_jobs_remote(
    run_jobs: Callable[..., list[dict[str, Any]]], **kwargs: Any
) -> list[dict[str, Any]]:
    """A group of evaluation jobs in a Ray worker: one torch thread, as run locally."""
    configure_process(1)  # the worker's own process, as `hyperpilot evaluate` does
    return run_jobs(**kwargs)


Runner = Callable[..., list[list[dict[str, Any]]]]


def job_runner(
    workers: int | None, run_jobs: Callable[..., list[dict[str, Any]]]
) -> Runner:
    """A `runner` for `evaluation.evaluate`: each group of jobs a Ray task of one CPU.

    Records come back to the caller, which caches them exactly as a local run does
    (`compute.finish`); the bundle goes into Ray's object store once.

    Args:
        workers: Groups in flight at once (None: all; Ray queues them on its CPUs).
        run_jobs: The function a group runs (`evaluation.run_jobs`), called in the
            worker with `compute.arguments(group)`.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def run(
        groups: list[list[Any]], compute: Any, progress: bool = True
    ) -> list[list[dict[str, Any]]]:
        ray = import_ray()
        remote = ray.remote(num_cpus=1)(_run_jobs_remote)
        bundle = ray.put(compute.bundle)
        limit = workers or len(groups)
        results: list[list[dict[str, Any]] | None] = [None] * len(groups)
        in_flight: dict[Any, int] = {}
        queue = iter(enumerate(groups))

        def submit() -> None:
            for index, group in queue:
                kwargs = {**compute.arguments(group), "bundle": bundle}
                in_flight[remote.remote(run_jobs, **kwargs)] = index
                if len(in_flight) >= limit:
                    return

        total = sum(len(group) for group in groups)
        bar = tqdm(total=total, disable=not progress, desc="jobs (ray)", unit="job")
        try:
            submit()
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    index = in_flight.pop(ref)
                    try:
                        records = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:
                        cause = getattr(error, "cause", None)
                        raise (
                            cause if isinstance(cause, Exception) else error
                        ) from None
                    results[index] = compute.finish(groups[index], records)
                    bar.update(len(groups[index]))
                submit()
        finally:
            bar.close()
            for ref in in_flight:
                ray.cancel(ref)
        return results  # type: ignore[return-value]

    return run
