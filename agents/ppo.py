"""PPO meta-training from a `TrainConfig`: environment, model, logging, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import HParam, Logger, make_output_format
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize

from hyperpilot.agents.callbacks import (
    NOT_TEXT,
    CheckpointCallback,
    InnerMetricsCallback,
    StopOnSignal,
    ValidationCallback,
)
from hyperpilot.agents.checkpoints import (
    Checkpoint,
    find_checkpoint,
    list_checkpoints,
    obs_stats,
    restore_rng,
    save_checkpoint,
)
from hyperpilot.agents.rollout import EpisodeTrace, first_episodes
from hyperpilot.bundle import BundleError, PolicyBundle, load_bundle, save_bundle
from hyperpilot.config import TrainConfig
from hyperpilot.envs import BatchedTrainingVecEnv
from hyperpilot.envs.ray_vec_env import RayVecEnv, WorkerDiedError
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.splits import load_split

PILOT = "pilot"
PILOT_BEST = "pilot-best"


@dataclass(frozen=True)
class TrainResult:
    """How a `train` call ended."""

    run_dir: Path
    timesteps: int
    checkpoint: Checkpoint
    interrupted_by: int | None = None
    worker_died: str | None = None
    """Why the run ended early when a Ray worker died (the checkpoint is kept)."""


def default_clip(settings: EnvSettings) -> float:
    """The clip a deployed pilot starts from when the user gives none.

    It is the geometric middle of the range the policy was trained from.
    """
    low, high = settings.init.clip
    return math.sqrt(low * high)


def build_venv(
    config: TrainConfig,
    run_dir: Path,
    monitor_name: str,
    ray_workers: dict[str, Any] | None = None,
) -> VecEnv:
    """The training VecEnv: batched runs, `VecMonitor`, and optionally `VecNormalize`.

    With `ray_workers` (`RayVecEnv`'s `workers`, `gpus_per_worker`) the runs go to
    Ray actors; the wrappers are the same.
    """
    if ray_workers is None:
        venv = BatchedTrainingVecEnv(**config.env.venv_kwargs(config.run.device))
    else:
        # Validated for the driver's CPU: the workers resolve the device themselves.
        kwargs = {**config.env.venv_kwargs("cpu"), "device": config.run.device}
        venv = RayVecEnv(**kwargs, **ray_workers)
    (run_dir / "monitor").mkdir(parents=True, exist_ok=True)
    venv = VecMonitor(
        venv,
        filename=str(run_dir / "monitor" / monitor_name),
        info_keywords=("final_val_loss", "diverged"),
    )
    env = config.env
    if env.normalize_observations or env.normalize_rewards:
        gamma = float(config.ppo.kwargs().get("gamma", 0.99))
        venv = VecNormalize(
            venv,
            norm_obs=env.normalize_observations,
            norm_reward=env.normalize_rewards,
            gamma=gamma,
        )
    return venv


def make_logger(run_dir: Path, suffix: str, verbose: int) -> Logger:
    """SB3's logger writing CSV and TensorBoard into the run folder (stdout if verbose)."""
    formats = ["csv", "tensorboard"] + (["stdout"] if verbose else [])
    outputs = [make_output_format(f, str(run_dir), suffix) for f in formats]
    return Logger(str(run_dir), outputs)


def validator(
    config: TrainConfig, model: PPO, venv: VecEnv
) -> Callable[[], list[EpisodeTrace]]:
    """A function that runs the current deterministic policy on fixed `eval` instances."""
    settings = config.env.settings(config.run.device)
    families = load_split(config.eval.split)
    eval_env = BatchedTrainingVecEnv(
        split=config.eval.split,
        n=config.eval.instances * len(families),
        **dataclasses.replace(settings, val_drop_prob=0.0).to_kwargs(),
    )

    def act(obs: np.ndarray) -> np.ndarray:
        if isinstance(venv, VecNormalize):
            obs = venv.normalize_obs(obs)
        return model.predict(obs, deterministic=config.eval.deterministic)[0]

    return lambda: first_episodes(
        eval_env, act, settings.decision_interval, seed=config.eval.seed
    )


def export_pilot(
    model: PPO, config: TrainConfig, path: Path, command: str, obs_rms: dict | None
) -> Path:
    """Writes the deployable bundle of `model` to `path`."""
    settings = config.env.settings(config.run.device)
    stats = None
    if obs_rms is not None and obs_rms.get("norm_obs", True):
        stats = _Stats(np.array(obs_rms["mean"]), np.array(obs_rms["var"]))
    return save_bundle(
        path,
        policy=model.policy,
        obs_rms=stats,
        clip_obs=float(obs_rms["clip_obs"]) if obs_rms else 10.0,
        epsilon=float(obs_rms["epsilon"]) if obs_rms else 1e-8,
        settings=settings,
        default_clip=default_clip(settings),
        training={
            "config": config.to_dict(),
            "command": command,
            "timesteps": int(model.num_timesteps),
        },
    )


@dataclass(frozen=True)
class _Stats:
    mean: np.ndarray
    var: np.ndarray


def check_init_bundle(config: TrainConfig, bundle_path: str) -> PolicyBundle:
    """Loads the bundle `--init-from` names and checks that it fits the config.

    Raises:
        BundleError: If it cannot be loaded, or its actor, controlled set or K
            differ from the config's.
    """
    bundle = load_bundle(bundle_path)
    ours = {
        "net_arch": config.ppo.net_arch_pi(),
        "activation": config.ppo.activation_name(),
        "controlled": list(config.env.controlled),
        "decision_interval": config.env.decision_interval,
    }
    theirs = {
        "net_arch": list(bundle.actor.net_arch),
        "activation": bundle.actor.activation,
        "controlled": list(bundle.controlled),
        "decision_interval": bundle.decision_interval,
    }
    different = [key for key in ours if ours[key] != theirs[key]]
    if different:
        detail = ", ".join(
            f"{k}: bundle {theirs[k]} vs config {ours[k]}" for k in different
        )
        raise BundleError(
            f"--init-from {bundle_path} does not match the config ({detail})"
        )
    return bundle


def init_from_bundle(model: PPO, venv: VecEnv, bundle: PolicyBundle) -> None:
    """Starts the actor (and the observation statistics) from a saved pilot."""
    policy = model.policy
    policy.mlp_extractor.policy_net.load_state_dict(
        bundle.actor.policy_net.state_dict()
    )
    policy.action_net.load_state_dict(bundle.actor.action_net.state_dict())
    if isinstance(venv, VecNormalize) and bundle.obs_mean is not None:
        venv.obs_rms.mean = bundle.obs_mean.double().numpy()
        venv.obs_rms.var = bundle.obs_var.double().numpy()
        venv.obs_rms.count = 1e4  # trust the saved statistics, keep adapting slowly


def _log_config(model: PPO, config: TrainConfig, command: str) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    model.logger.record("config", f"```\n{command}\n\n{text}```", NOT_TEXT)
    flat = {
        "env.n": config.env.n,
        "env.decision_interval": config.env.decision_interval,
        "env.action_mode": config.env.action_mode,
        "env.controlled": ",".join(config.env.controlled),
        "run.seed": config.run.seed,
        **{
            f"ppo.{k}": v
            for k, v in config.ppo.kwargs().items()
            if isinstance(v, int | float | str | bool)
        },
    }
    metrics = {"eval/final_val_loss": 0.0, "meta/final_val_loss": 0.0}
    model.logger.record("hparams", HParam(flat, metrics), NOT_TEXT)
    model.logger.dump(model.num_timesteps)


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    command: str,
    resume: bool = False,
    init_from: PolicyBundle | None = None,
    ray_workers: dict[str, Any] | None = None,
) -> TrainResult:
    """Meta-trains (or resumes) a pilot; writes everything under `run_dir`.

    Args:
        config: The resolved training config.
        run_dir: The run folder (exists; holds config.yaml when resuming).
        command: The command line, stored in the bundles.
        resume: Continue from the newest checkpoint in `run_dir`.
        init_from: A bundle (checked with `check_init_bundle`) to start the actor from.
        ray_workers: `RayVecEnv`'s `workers` and `gpus_per_worker`: the inner runs
            go to Ray actors. When one dies, the run ends with a checkpoint and
            `worker_died` set.

    Raises:
        ValueError: For a run folder without checkpoints when resuming.
    """
    if resume:
        checkpoint = find_checkpoint(run_dir)
        suffix = f"_resume{checkpoint.step}"
        venv = build_venv(config, run_dir, f"resume{checkpoint.step}", ray_workers)
        if checkpoint.vecnormalize is not None:
            venv = VecNormalize.load(str(checkpoint.vecnormalize), venv.venv)
        model = PPO.load(checkpoint.model, env=venv, device=config.run.policy_device)
        restore_rng(checkpoint)
    else:
        suffix = ""
        venv = build_venv(config, run_dir, "train", ray_workers)
        model = PPO(
            "MlpPolicy",
            venv,
            seed=config.run.seed,
            device=config.run.policy_device,
            verbose=config.logging.verbose,
            **config.ppo.kwargs(),
        )
        if init_from is not None:
            init_from_bundle(model, venv, init_from)
    model.set_logger(make_logger(run_dir, suffix, config.logging.verbose))
    if not resume:
        _log_config(model, config, command)

    def save_best() -> None:
        export_pilot(model, config, run_dir / PILOT_BEST, command, obs_stats(venv))

    stop = StopOnSignal()
    callbacks = [
        InnerMetricsCallback(config.env.decision_interval),
        CheckpointCallback(
            run_dir, config.logging.checkpoint_freq, config.logging.keep_checkpoints
        ),
        stop,
    ]
    if config.eval.freq > 0:
        callbacks.insert(
            1,
            ValidationCallback(
                config.eval.freq,
                validator(config, model, venv),
                save_best,
                run_dir,
                plots=config.logging.plots,
            ),
        )
    remaining = config.run.total_timesteps - model.num_timesteps
    died = None
    if remaining > 0:
        try:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=not resume,
                progress_bar=config.logging.progress_bar,
            )
        except WorkerDiedError as error:
            # The policy and statistics on the driver are whole: keep them, as a
            # signal would, and let the caller say how to resume.
            died = str(error)
            stop.on_training_end()  # restores the signal handlers
    newest = list_checkpoints(run_dir)[:1]
    if died is not None and newest and newest[0].step == model.num_timesteps:
        checkpoint = newest[0]  # nothing happened since: keep it as it is
    else:
        checkpoint = save_checkpoint(run_dir, model, config.logging.keep_checkpoints)
    if stop.received is None and died is None:
        export_pilot(model, config, run_dir / PILOT, command, obs_stats(venv))
    venv.close()
    return TrainResult(
        run_dir, int(model.num_timesteps), checkpoint, stop.received, died
    )
