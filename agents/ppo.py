"""PPO meta-training from a `TrainConfig`: environment, model, logging, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import HParam, Logger, make_output_format
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize

from hyperpilot.agents.callbacks import (
    NOT_TEXT,
    CheckpointCallback,
    InnerMetricsCallback,
    StopOnSignal,
    ValidationCallback,
)
from hyperpilot.agents.checkpoints import (
    CHECKPOINTS,
    Checkpoint,
    LoadedCheckpoint,
    list_checkpoints,
    obs_stats,
    restore,
    save_checkpoint,
)
from hyperpilot.agents.rollout import EpisodeTrace, first_episodes
from hyperpilot.bundle import BundleError, PolicyBundle, load_bundle, save_bundle
from hyperpilot.config import TrainConfig
from hyperpilot.envs import BatchedTrainingVecEnv
from hyperpilot.envs.ray_vec_env import RayVecEnv, WorkerDiedError
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.splits import load_split
from hyperpilot.envs.training_env import action_space, observation_space
from hyperpilot.runtime import restore_directory

PILOT = "pilot"
PILOT_BEST = "pilot-best"
POLICY = "MlpPolicy"
SCORE = "eval_final_val_loss"
"""The key of `pilot-best/`'s validation score in its `training` record."""


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
    policy: ActorCriticPolicy,
    config: TrainConfig,
    path: Path,
    *,
    command: str,
    obs_rms: dict | None,
    timesteps: int,
    score: float | None = None,
) -> Path:
    """Writes the deployable bundle of `policy` to `path`.

    Args:
        policy: The PPO policy (`model.policy`).
        config: The run's config.
        path: The bundle folder.
        command: The training command line, stored in the bundle.
        obs_rms: The observation statistics as `obs_stats` gives them, or None.
        timesteps: The meta-env step the policy was taken at.
        score: Its validation score, kept in the bundle (`pilot-best/` keeps the
            best score of the run this way).
    """
    settings = config.env.settings(config.run.device)
    stats = None
    if obs_rms is not None and obs_rms.get("norm_obs", True):
        stats = _Stats(np.array(obs_rms["mean"]), np.array(obs_rms["var"]))
    training = {"config": config.to_dict(), "command": command, "timesteps": timesteps}
    if score is not None:
        training[SCORE] = score
    return save_bundle(
        path,
        policy=policy,
        obs_rms=stats,
        clip_obs=float(obs_rms["clip_obs"]) if obs_rms else 10.0,
        epsilon=float(obs_rms["epsilon"]) if obs_rms else 1e-8,
        settings=settings,
        default_clip=default_clip(settings),
        training=training,
    )


def bundle_score(path: Path) -> float | None:
    """The validation score a bundle was saved with (None: none, or unreadable)."""
    try:
        score = json.loads((path / "pilot.json").read_text())["training"][SCORE]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(score) if isinstance(score, int | float) else None


def build_model(config: TrainConfig, venv: VecEnv) -> PPO:
    """A fresh PPO from the config; a resume then `restore`s its checkpoint into it."""
    return PPO(
        POLICY,
        venv,
        seed=config.run.seed,
        device=config.run.policy_device,
        verbose=config.logging.verbose,
        **config.ppo.kwargs(),
    )


def build_policy(config: TrainConfig) -> ActorCriticPolicy:
    """The policy `build_model` makes, alone on the CPU (no env), for `export`."""
    kwargs = config.ppo.kwargs()
    return PPO.policy_aliases[POLICY](
        observation_space(),
        action_space(config.env.settings("cpu")),
        lambda _: 0.0,  # the learning rate of an optimizer never stepped
        use_sde=bool(kwargs.get("use_sde", False)),
        **(kwargs.get("policy_kwargs") or {}),
    )


def recover_run_folder(run_dir: Path) -> list[str]:
    """Puts back what a crash inside a folder replacement left aside.

    A kill between renaming an old `pilot/`, `pilot-best/` or checkpoint folder
    aside and renaming the new one in leaves the old one hidden beside its place
    (`hyperpilot.runtime.replace_directory`); a resume puts it back first, and
    deletes the temporary folders of checkpoints a crash left unfinished.

    Returns:
        The folders put back.
    """
    for temp in (run_dir / CHECKPOINTS).glob(".tmp-step_*"):
        shutil.rmtree(temp)  # a checkpoint the crash left unfinished
    places = [run_dir / PILOT, run_dir / PILOT_BEST]
    aside = (run_dir / CHECKPOINTS).glob(".step_*.old-*")
    places += sorted({path.with_name(path.name[1:].split(".")[0]) for path in aside})
    return [str(place) for place in places if restore_directory(place)]


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
    resume_from: LoadedCheckpoint | None = None,
    init_from: PolicyBundle | None = None,
    ray_workers: dict[str, Any] | None = None,
) -> TrainResult:
    """Meta-trains (or resumes) a pilot; writes everything under `run_dir`.

    A resume builds a fresh PPO from the config and restores into it what the run
    had learned: weights, optimizer moments, step and update counts, episode
    statistics, VecNormalize statistics, RNG states, the best validation score
    (the better of the checkpoint's and `pilot-best/`'s), the evaluation history and
    the callbacks' schedules. Its episodes start afresh (env state is not saved).

    Args:
        config: The resolved training config.
        run_dir: The run folder (exists; holds config.yaml when resuming).
        command: The command line, stored in the bundles.
        resume_from: Continue from this checkpoint (`load_newest(run_dir)`).
        init_from: A bundle (checked with `check_init_bundle`) to start the actor from.
        ray_workers: `RayVecEnv`'s `workers` and `gpus_per_worker`: the inner runs
            go to Ray actors. When one dies, the run ends with a checkpoint and
            `worker_died` set.

    Raises:
        CheckpointError: If `resume_from` does not fit the config's model.
    """
    suffix = "" if resume_from is None else f"_resume{resume_from.step}"
    monitor = "train" if resume_from is None else f"resume{resume_from.step}"
    venv = build_venv(config, run_dir, monitor, ray_workers)
    model = build_model(config, venv)
    if resume_from is not None:
        try:
            restore(model, resume_from)
        except BaseException:
            venv.close()
            raise
    elif init_from is not None:
        init_from_bundle(model, venv, init_from)
    model.set_logger(make_logger(run_dir, suffix, config.logging.verbose))
    if resume_from is None:
        _log_config(model, config, command)

    def export(path: Path, score: float | None = None) -> None:
        export_pilot(
            model.policy,
            config,
            path,
            command=command,
            obs_rms=obs_stats(venv),
            timesteps=int(model.num_timesteps),
            score=score,
        )

    validation = None
    if config.eval.freq > 0:
        validation = ValidationCallback(
            config.eval.freq,
            validator(config, model, venv),
            lambda score: export(run_dir / PILOT_BEST, score),
            run_dir,
            plots=config.logging.plots,
        )
        if resume_from is not None and "validation" in resume_from.callbacks:
            validation.load_state_dict(resume_from.callbacks["validation"])
        # The best bundle may be newer than the checkpoint: never replace it by a
        # worse one.
        saved = bundle_score(run_dir / PILOT_BEST)
        if saved is not None:
            validation.best = min(validation.best, saved)

    def states() -> dict[str, dict[str, Any]]:
        return {} if validation is None else {"validation": validation.state_dict()}

    stop = StopOnSignal()
    keep = config.logging.keep_checkpoints
    checkpoints = CheckpointCallback(
        run_dir, config.logging.checkpoint_freq, keep, states
    )
    callbacks = [InnerMetricsCallback(config.env.decision_interval)]
    callbacks += [c for c in (validation, checkpoints, stop) if c is not None]
    remaining = config.run.total_timesteps - model.num_timesteps
    died = None
    if remaining > 0:
        try:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=resume_from is None,
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
        checkpoint = save_checkpoint(run_dir, model, keep, states())
    if stop.received is None and died is None:
        export(run_dir / PILOT)
    venv.close()
    return TrainResult(
        run_dir, int(model.num_timesteps), checkpoint, stop.received, died
    )
