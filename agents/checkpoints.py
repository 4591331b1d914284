"""Training checkpoints that load without running anything from the run folder.

A checkpoint is a folder `checkpoints/step_<num_timesteps>/` with two files:
`tensors.safetensors` (the policy's weights, its optimizer's moments and the torch
RNG state) and `state.json` (everything else: PPO's counters and episode buffers,
the optimizer's hyperparameters, the VecNormalize statistics, the Python and NumPy
RNG states and the callbacks' state). Neither format can carry code: safetensors
holds raw tensors and JSON plain values, checked on load against a schema, so a
crafted run folder is refused instead of run (SB3's `model.zip` and VecNormalize's
`.pkl` are pickles, which execute whatever they name when loaded). A checkpoint is
written into a temporary folder and renamed into place, so a crash never leaves a
half-written one; one broken later (a truncated copy, a full disk) is skipped for
the previous one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from hyperpilot.runtime import UserError, kill_point, replace_directory

CHECKPOINTS = "checkpoints"
TENSORS = "tensors.safetensors"
STATE = "state.json"
FORMAT_VERSION = 1
LEGACY_FILES = ("model.zip", "vecnormalize.pkl")
"""What checkpoints held before this format: pickles, never loaded."""
_PREFIX = "step_"
_POLICY = "policy/"
_OPTIMIZER = "optimizer/"
_TORCH_RNG = "rng/torch"


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded (missing, broken, or of an old format)."""


class NoCheckpointError(CheckpointError):
    """The run has no checkpoint at all (it stopped before the first one)."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder and the meta-env step it was taken at."""

    path: Path
    step: int


# ---------------------------------------------------------------- the schema
class _Plain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Moments(_Plain):
    """A `RunningMeanStd`: `mean` and `var` are lists, or numbers for a scalar."""

    mean: list[float] | float
    var: list[float] | float
    count: float


class _VecNormalize(_Plain):
    obs_rms: _Moments
    ret_rms: _Moments
    clip_obs: float
    epsilon: float
    norm_obs: bool


class _PPO(_Plain):
    num_timesteps: NonNegativeInt
    n_updates: NonNegativeInt
    ep_info_buffer: list[dict[str, bool | int | float]]
    ep_success_buffer: list[bool | int | float]


class _Optimizer(_Plain):
    param_groups: list[dict[str, Any]]
    values: dict[int, dict[str, float | int | bool | None]]
    """Per-parameter state that is not a tensor (Adam has none)."""


class _RNG(_Plain):
    python: tuple[int, list[int], float | None]
    numpy: tuple[Literal["MT19937"], list[int], int, int, float]


class _Validation(_Plain):
    """`ValidationCallback.state_dict()`."""

    best: float
    history: list[tuple[int, float, float]]


class _Callbacks(_Plain):
    validation: _Validation | None = None


class _State(_Plain):
    format_version: Literal[1]
    step: NonNegativeInt
    ppo: _PPO
    optimizer: _Optimizer
    vecnormalize: _VecNormalize | None
    rng: _RNG
    callbacks: _Callbacks


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read and checked: what `restore` puts into a fresh `PPO`."""

    checkpoint: Checkpoint
    state: _State
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        """The meta-env step the checkpoint was taken at."""
        return self.checkpoint.step

    @property
    def callbacks(self) -> dict[str, dict[str, Any]]:
        """Each callback's `state_dict()`, by the name it was saved under."""
        return self.state.callbacks.model_dump(exclude_none=True)

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The policy's `state_dict()`."""
        return {
            k.removeprefix(_POLICY): v
            for k, v in self.tensors.items()
            if k.startswith(_POLICY)
        }

    def obs_rms(self) -> dict | None:
        """The observation statistics as `obs_stats` gives them, or None."""
        saved = self.state.vecnormalize
        if saved is None:
            return None
        return {
            **saved.obs_rms.model_dump(),
            "clip_obs": saved.clip_obs,
            "epsilon": saved.epsilon,
            "norm_obs": saved.norm_obs,
        }


# ------------------------------------------------------------------ writing
def obs_stats(venv: VecEnv) -> dict | None:
    """The observation statistics of a VecNormalize as plain values (None without)."""
    if not isinstance(venv, VecNormalize):
        return None
    return {
        "mean": venv.obs_rms.mean.tolist(),
        "var": venv.obs_rms.var.tolist(),
        "count": float(venv.obs_rms.count),
        "clip_obs": float(venv.clip_obs),
        "epsilon": float(venv.epsilon),
        "norm_obs": bool(venv.norm_obs),
    }


def _moments(stats: RunningMeanStd) -> dict[str, Any]:
    return {
        "mean": stats.mean.tolist(),
        "var": stats.var.tolist(),
        "count": float(stats.count),
    }


def _plain(value: Any) -> Any:
    """NumPy scalars as Python ones (an episode's reward is a float32)."""
    return value.item() if isinstance(value, np.generic) else value


def _state(
    model: PPO, callbacks: Mapping[str, dict[str, Any]]
) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors = {_POLICY + k: v for k, v in model.policy.state_dict().items()}
    optimizer = model.policy.optimizer.state_dict()
    values: dict[int, dict[str, Any]] = {}
    for index, entries in optimizer["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIMIZER}{index}/{key}"] = value
            else:
                values.setdefault(index, {})[key] = value
    tensors[_TORCH_RNG] = torch.random.get_rng_state()
    venv = model.get_vec_normalize_env()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(model.num_timesteps),
        "ppo": {
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "ep_info_buffer": [
                {k: _plain(v) for k, v in info.items()}
                for info in model.ep_info_buffer or ()
            ],
            "ep_success_buffer": [_plain(v) for v in model.ep_success_buffer or ()],
        },
        "optimizer": {"param_groups": optimizer["param_groups"], "values": values},
        "vecnormalize": None
        if venv is None
        else {
            "obs_rms": _moments(venv.obs_rms),
            "ret_rms": _moments(venv.ret_rms),
            "clip_obs": float(venv.clip_obs),
            "epsilon": float(venv.epsilon),
            "norm_obs": bool(venv.norm_obs),
        },
        "rng": {
            "python": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        },
        "callbacks": dict(callbacks),
    }
    # One tensor per key, each its own memory: safetensors refuses shared storage.
    return state, {k: v.detach().cpu().clone() for k, v in tensors.items()}


def save_checkpoint(
    run_dir: Path,
    model: PPO,
    keep: int,
    callbacks: Mapping[str, dict[str, Any]] | None = None,
) -> Checkpoint:
    """Saves `model`, its VecNormalize and the RNG states; prunes old checkpoints.

    Args:
        run_dir: The run folder.
        model: The PPO being trained.
        keep: How many checkpoints to keep (the newest).
        callbacks: Each callback's `state_dict()` by name (`validation`), restored
            on resume.

    Returns:
        The new checkpoint.
    """
    state, tensors = _state(model, callbacks or {})
    step = state["step"]
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:012d}"
    temp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    save_file(tensors, str(temp / TENSORS))
    kill_point("checkpoint-files")
    (temp / STATE).write_text(json.dumps(state))
    replace_directory(temp, final)
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


# ------------------------------------------------------------------ reading
def _steps(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run_dir / CHECKPOINTS).glob(f"{_PREFIX}*"):
        digits = path.name[len(_PREFIX) :]
        if path.is_dir() and digits.isdigit():
            found.append((int(digits), path))
    return sorted(found, reverse=True)


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Checkpoints of this format, newest first (temporary folders are skipped)."""
    return [
        Checkpoint(path, step)
        for step, path in _steps(run_dir)
        if (path / STATE).is_file() and (path / TENSORS).is_file()
    ]


def load_checkpoint(checkpoint: Checkpoint) -> LoadedCheckpoint:
    """Reads and checks a checkpoint: JSON against its schema, tensors as tensors.

    Raises:
        CheckpointError: If a file is missing, truncated or not of this format.
    """
    where = checkpoint.path
    try:
        tensors = load_file(str(where / TENSORS))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{where / TENSORS} is unreadable ({error})") from None
    try:
        state = _State.model_validate(json.loads((where / STATE).read_text()))
    except (OSError, ValueError) as error:  # ValidationError is a ValueError
        reason = _first_line(error)
        raise CheckpointError(f"{where / STATE} is unreadable ({reason})") from None
    if state.step != checkpoint.step:
        raise CheckpointError(f"{where / STATE} says step {state.step}")
    if tensors.get(_TORCH_RNG, torch.empty(0)).dtype != torch.uint8:
        raise CheckpointError(f"{where / TENSORS} has no torch RNG state")
    stray = [k for k in tensors if not k.startswith((_POLICY, _OPTIMIZER, _TORCH_RNG))]
    if stray:
        raise CheckpointError(f"{where / TENSORS} has stray tensors {stray[:3]}")
    return LoadedCheckpoint(checkpoint, state, tensors)


def _first_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'the file'}: {first['msg']}"
    return str(error).splitlines()[0]


def load_newest(
    run_dir: Path, step: int | None = None, note: Callable[[str], None] = print
) -> LoadedCheckpoint:
    """The newest checkpoint that loads (or the one at `step`), with a note per skip.

    Args:
        run_dir: The run folder.
        step: Load the checkpoint at this step, and no other.
        note: Where a line about each broken checkpoint skipped goes.

    Raises:
        CheckpointError: If the run has no checkpoint (at `step`) that loads; for
            checkpoints written before this format, saying why they are refused.
    """
    found = list_checkpoints(run_dir)
    if step is not None:
        found = [c for c in found if c.step == step]
    errors = []
    for checkpoint in found:
        try:
            loaded = load_checkpoint(checkpoint)
        except CheckpointError as error:
            errors.append(str(error))
            continue
        if errors:
            note(f"note: skipped a broken checkpoint: {'; '.join(errors)}")
        return loaded
    if step is not None and errors:
        raise CheckpointError(
            f"the checkpoint at step {step} of {run_dir} does not load: {errors[0]}; "
            "choose another --checkpoint"
        )
    if errors:
        raise CheckpointError(
            f"no checkpoint of {run_dir} loads: {'; '.join(errors)}; restore the "
            "folder from a copy, or start a new run"
        )
    legacy = [
        path
        for at, path in _steps(run_dir)
        if step in (None, at) and any((path / f).exists() for f in LEGACY_FILES)
    ]
    if legacy:
        raise CheckpointError(
            f"the checkpoints of {run_dir} were written by an earlier hyperpilot as "
            f"pickles ({', '.join(LEGACY_FILES)}), which cannot be loaded safely; "
            "start a new run (its bundles pilot/ and pilot-best/ still load, e.g. "
            "as --init-from)"
        )
    if step is not None:
        steps = ", ".join(str(c.step) for c in list_checkpoints(run_dir))
        raise CheckpointError(
            f"{run_dir} has no checkpoint at step {step}; it has: {steps or 'none'}"
        )
    raise NoCheckpointError(f"{run_dir} has no checkpoint under {CHECKPOINTS}/")


# ---------------------------------------------------------------- restoring
def _set_moments(stats: RunningMeanStd, saved: _Moments, what: str) -> None:
    mean, var = np.asarray(saved.mean, np.float64), np.asarray(saved.var, np.float64)
    if mean.shape != stats.mean.shape or var.shape != stats.var.shape:
        raise CheckpointError(f"{what} has shape {mean.shape}, not {stats.mean.shape}")
    stats.mean, stats.var, stats.count = mean, var, saved.count


def restore(model: PPO, loaded: LoadedCheckpoint) -> None:
    """Puts a checkpoint into a freshly built `PPO` (and its VecNormalize, the RNGs).

    The model must be built from the run's config, as the checkpoint's was: the
    weights and optimizer moments must fit its shapes.

    Raises:
        CheckpointError: If the checkpoint does not fit the model.
    """
    state, where = loaded.state, loaded.checkpoint.path
    optimizer: dict[str, Any] = {
        "state": {int(i): dict(v) for i, v in state.optimizer.values.items()},
        "param_groups": state.optimizer.param_groups,
    }
    parameters = [p for g in model.policy.optimizer.param_groups for p in g["params"]]
    for key, value in loaded.tensors.items():
        if not key.startswith(_OPTIMIZER):
            continue
        index, _, name = key.removeprefix(_OPTIMIZER).partition("/")
        if not (index.isdigit() and int(index) < len(parameters)):
            raise CheckpointError(f"{where / TENSORS} has a stray tensor {key}")
        if value.ndim and value.shape != parameters[int(index)].shape:
            raise CheckpointError(f"{where / TENSORS}: {key} does not fit the policy")
        optimizer["state"].setdefault(int(index), {})[name] = value
    try:
        model.set_parameters(
            {"policy": loaded.policy_state(), "policy.optimizer": optimizer},
            exact_match=True,
            device=model.device,
        )
    except (RuntimeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0]
        raise CheckpointError(f"{where} does not fit this run ({reason})") from None
    venv = model.get_vec_normalize_env()
    if (venv is None) != (state.vecnormalize is None):
        raise CheckpointError(f"{where}: normalization differs from the run's config")
    if venv is not None and state.vecnormalize is not None:
        _set_moments(venv.obs_rms, state.vecnormalize.obs_rms, "obs_rms")
        _set_moments(venv.ret_rms, state.vecnormalize.ret_rms, "ret_rms")
    model.num_timesteps = state.ppo.num_timesteps
    model._n_updates = state.ppo.n_updates
    window = model._stats_window_size
    model.ep_info_buffer = deque(state.ppo.ep_info_buffer, maxlen=window)
    model.ep_success_buffer = deque(state.ppo.ep_success_buffer, maxlen=window)
    restore_rng(loaded)


def restore_rng(loaded: LoadedCheckpoint) -> None:
    """Restores the process RNG states saved with the checkpoint (CLI use only)."""
    version, internal, gauss = loaded.state.rng.python
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = loaded.state.rng.numpy
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.random.set_rng_state(loaded.tensors[_TORCH_RNG])
