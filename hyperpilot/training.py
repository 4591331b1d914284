"""The meta-training workflow: a run folder, a new or resumed PPO run, Ray on demand.

`run` is what `hyperpilot train` does after parsing its flags; benchmarks (the
ablations) call it the same way. Everything a user can get wrong is checked before
the run folder is written, and reported as a `UserError`.
"""

from __future__ import annotations

import inspect
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stable_baselines3 import PPO

from hyperpilot import ray_backend
from hyperpilot.agents.checkpoints import (
    LoadedCheckpoint,
    NoCheckpointError,
    load_newest,
)
from hyperpilot.agents.ppo import (
    TrainResult,
    build_policy,
    check_init_bundle,
    export_pilot,
    recover_run_folder,
    train,
)
from hyperpilot.bundle import BundleError, PolicyBundle
from hyperpilot.config import TrainConfig, dump_config, load_config
from hyperpilot.envs.settings import resolve_device
from hyperpilot.runtime import UserError, atomic_write_text, make_folder

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"


def default_run_dir(
    config: TrainConfig, runs_root: Path, run_name: str | None = None
) -> Path:
    """`runs_root/<run_name>`, by default `<config>__s<seed>__<unix time>`.

    Raises:
        UserError: If `run_name` is not a plain folder name (it would write
            elsewhere than under `runs_root`).
    """
    if run_name is not None and (
        not re.fullmatch(r"[\w.-]+", run_name) or run_name in (".", "..")
    ):
        raise UserError(
            f"--run-name {run_name!r} must be a folder name (letters, digits, _ . -) "
            "inside --runs-root"
        )
    name = run_name or f"{config.name}__s{config.run.seed}__{int(time.time())}"
    return runs_root / name


def check_runnable(config: TrainConfig) -> None:
    """Refuses, before anything is written, what would fail or surprise later.

    Raises:
        UserError: For a device this machine lacks (inner runs or policy), or a
            budget below one PPO rollout (SB3 would run a whole rollout anyway).
    """
    config.env.settings(config.run.device)  # ConfigError (a UserError) if absent
    try:
        resolve_device(config.run.policy_device)
    except ValueError as error:
        raise UserError(f"run.policy_device: {error}") from None
    sb3_default = inspect.signature(PPO).parameters["n_steps"].default
    n_steps = int(config.ppo.kwargs().get("n_steps", sb3_default))
    rollout = n_steps * config.env.n
    if config.run.total_timesteps < rollout:
        raise UserError(
            f"run.total_timesteps={config.run.total_timesteps} is below one PPO "
            f"rollout (ppo.n_steps {n_steps} x env.n {config.env.n} = {rollout} "
            f"meta-env steps); ask for at least {rollout}"
        )


def load_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config a run folder was started with (for `--resume`), plus overrides.

    Raises:
        UserError: If `run_dir` is not a run folder, or an override is invalid.
    """
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    return load_config(run_dir / CONFIG_FILE, overrides, onto_default=False)


def _init_bundle(config: TrainConfig, init_from: str | None) -> PolicyBundle | None:
    if init_from is None:
        return None
    try:
        return check_init_bundle(config, init_from)
    except BundleError as error:
        raise UserError(str(error)) from None


def _stored_command(run_dir: Path) -> str:
    """The command a run folder was started with ("" if it was never written)."""
    path = run_dir / COMMAND_FILE
    return path.read_text().strip() if path.is_file() else ""


def _resume_point(run_dir: Path, log: Callable[[str], None]) -> LoadedCheckpoint:
    """The checkpoint a resume continues from, after undoing a crash's leftovers."""
    for place in recover_run_folder(run_dir):
        log(f"note: put back {place}, left aside by a crash while it was replaced")
    try:
        loaded = load_newest(run_dir, note=log)
    except NoCheckpointError:
        command = _stored_command(run_dir)
        command = command or f"hyperpilot train --config {run_dir / CONFIG_FILE}"
        raise UserError(
            f"nothing to resume: {run_dir} stopped before its first checkpoint; "
            f"delete it and start again with: {command}"
        ) from None
    log(f"resuming from step {loaded.step} ({loaded.checkpoint.path})")
    return loaded


def run(
    config: TrainConfig,
    run_dir: Path,
    *,
    command: str,
    resume: bool = False,
    init_from: str | None = None,
    ray: ray_backend.RayOptions | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Meta-trains a pilot into `run_dir` (new), or continues the run there.

    A new run writes `config.yaml` and `command.txt` first; a resumed one keeps its
    own. With `ray`, Ray is joined (or started) for the run and left afterwards.

    Args:
        config: The resolved config (for a resume, `load_run_config(run_dir)`).
        run_dir: The run folder; it must not exist for a new run.
        command: The command line, stored in the folder and the bundles.
        resume: Continue from the newest checkpoint in `run_dir`.
        init_from: A bundle (path or shipped name) to start the actor from.
        ray: Host the inner runs in Ray actors.
        log: Where progress lines go.

    Returns:
        How the run ended (see `TrainResult`).

    Raises:
        UserError: For an existing run folder, a bundle that does not fit, Ray
            options the cluster cannot serve, or (resuming) a run without a
            checkpoint that loads.
    """
    bundle = _init_bundle(config, init_from)
    check_runnable(config)
    resume_from = None
    if resume:
        resume_from = _resume_point(run_dir, log)
    elif run_dir.exists():
        raise UserError(f"run folder {run_dir} exists; choose another --run-name")
    started = False
    if ray is not None:
        started = ray_backend.connect(ray.address)
        try:
            ray_backend.check_options(ray, config.env.buckets(), config.run.device)
        except ValueError as error:
            if started:
                ray_backend.shutdown()
            raise UserError(str(error)) from None
    try:
        if resume:
            command = _stored_command(run_dir)
        else:
            _new_run_folder(run_dir, config, command)
        log(f"run folder: {run_dir}")
        return train(
            config,
            run_dir,
            command=command,
            resume_from=resume_from,
            init_from=bundle,
            ray_workers=None if ray is None else ray.venv_kwargs(),
        )
    finally:
        if started:
            ray_backend.shutdown()


def _new_run_folder(run_dir: Path, config: TrainConfig, command: str) -> None:
    """`run_dir` with config.yaml and command.txt, whole or not at all."""
    make_folder(run_dir.parent, "--runs-root")
    try:
        run_dir.mkdir()
        dump_config(config, run_dir / CONFIG_FILE)
        atomic_write_text(run_dir / COMMAND_FILE, command + "\n")
    except OSError as error:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(f"cannot write the run folder {run_dir}: {error}") from None


def export(
    run_dir: Path,
    step: int | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Path, int]:
    """Writes the bundle of a run's checkpoint (the newest that loads, or `step`'s).

    Returns:
        The bundle folder (default `run_dir/pilot-step<step>`) and the step of the
        checkpoint it came from.

    Raises:
        UserError: If `run_dir` is not a run folder or has no such checkpoint that
            loads.
    """
    config = load_run_config(run_dir)
    loaded = load_newest(run_dir, step, note=log)
    policy = build_policy(config)
    try:
        policy.load_state_dict(loaded.policy_state())
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        where = loaded.checkpoint.path
        raise UserError(f"{where} does not fit the run's config ({reason})") from None
    out = out or run_dir / f"pilot-step{loaded.step}"
    try:
        export_pilot(
            policy,
            config,
            out,
            command=_stored_command(run_dir),
            obs_rms=loaded.obs_rms(),
            timesteps=loaded.step,
        )
    except BundleError as error:
        raise UserError(str(error)) from None
    return out, loaded.step
