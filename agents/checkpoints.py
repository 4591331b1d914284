"""Training checkpoints: written atomically, listed newest first, pruned to the last few.

A checkpoint is a folder `checkpoints/step_<num_timesteps>/` with the SB3 model
(`model.zip`), the VecNormalize state (`vecnormalize.pkl`, plus `obs_rms.json` so a
bundle can be exported without unpickling), the RNG states (`rng.json`,
`torch_rng.pt`) and `meta.json`. It is written into a temporary folder and renamed
into place, so a crash or SIGKILL never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from hyperpilot.runtime import replace_directory

CHECKPOINTS = "checkpoints"
_PREFIX = "step_"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and the meta-env step it was taken at."""

    path: Path
    step: int

    @property
    def model(self) -> Path:
        """The SB3 model archive."""
        return self.path / "model.zip"

    @property
    def vecnormalize(self) -> Path | None:
        """The VecNormalize state, if the run normalizes."""
        path = self.path / "vecnormalize.pkl"
        return path if path.exists() else None

    def obs_rms(self) -> dict | None:
        """Observation statistics `{mean, var, count, clip_obs, epsilon}` or None."""
        path = self.path / "obs_rms.json"
        return json.loads(path.read_text()) if path.exists() else None


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


def save_checkpoint(run_dir: Path, model: PPO, keep: int) -> Checkpoint:
    """Saves `model` (and its VecNormalize, RNG states) and prunes old checkpoints."""
    step = int(model.num_timesteps)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:012d}"
    temp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    model.save(temp / "model.zip")
    venv = model.get_vec_normalize_env()
    if isinstance(venv, VecNormalize):
        venv.save(str(temp / "vecnormalize.pkl"))
        (temp / "obs_rms.json").write_text(json.dumps(obs_stats(venv)))
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    rng = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    (temp / "rng.json").write_text(json.dumps(rng))
    torch.save({"cpu": torch.random.get_rng_state()}, temp / "torch_rng.pt")
    (temp / "meta.json").write_text(json.dumps({"step": step}))
    replace_directory(temp, final)
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, newest first (temporary folders are skipped)."""
    root = run_dir / CHECKPOINTS
    found = []
    for path in root.glob(f"{_PREFIX}*"):
        if (path / "meta.json").exists() and (path / "model.zip").exists():
            found.append(Checkpoint(path, int(path.name[len(_PREFIX) :])))
    return sorted(found, key=lambda c: c.step, reverse=True)


def find_checkpoint(run_dir: Path, step: int | None = None) -> Checkpoint:
    """The newest checkpoint, or the one at `step`.

    Raises:
        ValueError: If the run has no (such) checkpoint.
    """
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir} has no complete checkpoint under {CHECKPOINTS}/")
    if step is None:
        return checkpoints[0]
    for checkpoint in checkpoints:
        if checkpoint.step == step:
            return checkpoint
    steps = ", ".join(str(c.step) for c in checkpoints)
    raise ValueError(f"{run_dir} has no checkpoint at step {step}; it has: {steps}")


def restore_rng(checkpoint: Checkpoint) -> None:
    """Restores the process RNG states saved with the checkpoint (CLI use only)."""
    rng = json.loads((checkpoint.path / "rng.json").read_text())
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    state = torch.load(checkpoint.path / "torch_rng.pt", weights_only=True)
    torch.random.set_rng_state(state["cpu"])
