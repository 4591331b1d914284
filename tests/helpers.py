"""Shared test helpers: a tiny trained PPO policy and its bundle, and two test families.

`helpers:CustomFamily` (a user-defined family named by import path) and
`helpers:NormFamily` (BatchNorm buffers, `SeededDropout` and weight decay, for the
envs' contract tests) are importable because pytest puts tests/ on `sys.path`.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize
from torch import nn

from hyperpilot.bundle import save_bundle
from hyperpilot.envs import BatchedTrainingVecEnv, InnerTrainingEnv
from hyperpilot.envs.tasks.base import (
    Range,
    SeededDropout,
    TaskFamily,
    TaskInstance,
    accuracy,
    build_model,
    cross_entropy,
    draw,
    draw_int,
    instance_from_splits,
    mse,
    torch_generator,
)

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def train_tiny_ppo(net_arch=(16, 16), activation="tanh", normalize=True, **settings):
    """PPO trained for 64 steps on quadratic_2d: non-trivial weights and obs stats.

    Returns the model, the VecEnv it trained on (VecNormalize when `normalize`) and
    the underlying `BatchedTrainingVecEnv`.
    """
    env = BatchedTrainingVecEnv(family="quadratic_2d", n=4, device="cpu", **settings)
    venv = VecNormalize(env) if normalize else env
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=8,
        batch_size=16,
        n_epochs=1,
        policy_kwargs={
            "net_arch": {"pi": list(net_arch), "vf": list(net_arch)},
            "activation_fn": ACTIVATIONS[activation],
        },
        seed=0,
    )
    model.learn(64)
    return model, venv, env


def save_tiny_bundle(path, model, venv, env, *, default_clip=1.0, training=None):
    """Saves `train_tiny_ppo`'s model as a bundle (no obs statistics without VecNormalize)."""
    normalized = isinstance(venv, VecNormalize)
    return save_bundle(
        path,
        policy=model.policy,
        obs_rms=venv.obs_rms if normalized else None,
        clip_obs=venv.clip_obs if normalized else 10.0,
        epsilon=venv.epsilon if normalized else 1e-8,
        settings=env.settings,
        default_clip=default_clip,
        training=training,
    )


class CustomFamily(TaskFamily):
    """Linear regression on Gaussian inputs, with one shape knob."""

    def __init__(self, n_features: int = 4, horizon: int = 20) -> None:
        self.n_features = n_features
        self.horizon = horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        return (self.n_features,)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        generator = torch_generator(rng)
        x = torch.randn(96, self.n_features, generator=generator)
        y = x.sum(1, keepdim=True)
        model = build_model(lambda: nn.Linear(self.n_features, 1), generator)
        return TaskInstance(
            family=self.name,
            model=model,
            x_train=x[:64],
            y_train=y[:64],
            x_val=x[64:80],
            y_val=y[64:80],
            x_test=x[80:],
            y_test=y[80:],
            loss=mse,
            batch_size=16,
            horizon=self.horizon,
            data_seed=int(rng.integers(2**62)),
        )


SIZES = (96, 32, 32)
SIDE = 4  # images are SIDE x SIDE, one channel
CLASSES = 3


class NormFamily(TaskFamily):
    """Points (or 4x4 images) labelled by a linear teacher, learnt by a BatchNorm net.

    The net: Linear (or Conv2d), BatchNorm, ReLU, SeededDropout, Linear.

    Args:
        kind: `mlp` (Linear, BatchNorm1d) or `cnn` (Conv2d, BatchNorm2d) (shape knob).
        width: Hidden units or channels (shape knob).
        batch_size: Rows per inner step (shape knob).
        dropout: Dropout rate after the ReLU (shape knob).
        weight_decay: Decoupled weight decay of the inner AdamW (free).
        horizon: Inner steps per run (free).
    """

    def __init__(
        self,
        kind: str = "mlp",
        width: int = 8,
        batch_size: int = 16,
        dropout: float = 0.0,
        weight_decay: Range = 0.0,
        horizon: Range = 40,
    ) -> None:
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}")
        self.kind, self.width, self.batch_size = kind, width, batch_size
        self.dropout = dropout
        self.weight_decay, self.horizon = weight_decay, horizon

    @property
    def shape_key(self) -> tuple[Any, ...]:
        return (self.kind, self.width, self.batch_size, self.dropout)

    def _model(self) -> nn.Module:
        if self.kind == "mlp":
            # No bias before a BatchNorm: its gradient is 0 up to rounding, which Adam
            # would blow up to lr-sized steps of noise.
            linear = nn.Linear(SIDE * SIDE, self.width, bias=False)
            hidden = [linear, nn.BatchNorm1d(self.width)]
        else:
            hidden = [
                nn.Unflatten(1, (1, SIDE, SIDE)),
                nn.Conv2d(1, self.width, 3, padding=1, bias=False),
                nn.BatchNorm2d(self.width),
                nn.Flatten(),
            ]
        out = self.width * (1 if self.kind == "mlp" else SIDE * SIDE)
        head = [nn.ReLU(), SeededDropout(self.dropout), nn.Linear(out, CLASSES)]
        return nn.Sequential(*hidden, *head)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        knobs = {
            "horizon": draw_int(rng, self.horizon),
            "weight_decay": draw(rng, self.weight_decay),
        }
        generator = torch_generator(rng)
        # a shift and scale away from 0 and 1, so the running statistics matter
        x = 3.0 + 2.0 * torch.randn(sum(SIZES), SIDE * SIDE, generator=generator)
        teacher = torch.randn(SIDE * SIDE, CLASSES, generator=generator)
        y = ((x - 3.0) @ teacher).argmax(1)
        model = build_model(self._model, generator)
        x_train, x_val, x_test = x.split(SIZES)
        y_train, y_val, y_test = y.split(SIZES)
        return instance_from_splits(
            self.name,
            model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            loss=cross_entropy,
            accuracy=accuracy,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


# ------------------------------------------------ the VecEnv contract
N = 4
# The VecEnv contract: BatchedTrainingVecEnv and RayVecEnv must both pass it.
CONTRACT_CASES = pytest.mark.parametrize(
    ("family", "settings"),
    [
        ("quadratic_2d", {}),
        ("quadratic_2d", {"action_mode": "residual", "val_drop_prob": 0.5}),
        (
            "mlp_teacher",
            {"family_kwargs": {"horizon": 30}, "init": {"lr": [1e-3, 1.0]}},
        ),
    ],
    ids=["quadratic", "residual-val-drop", "teacher-with-divergence"],
)


def check_matches_single_envs(make_venv, family, settings, steps=25):
    """`make_venv(family=..., n=N, ...)` steps like a DummyVecEnv of single envs."""
    # float64, so that batching cannot flip a divergence decision by rounding
    settings = {"dtype": "float64", **settings}
    family_kwargs = settings.pop("family_kwargs", None)
    batched = make_venv(
        family=family, family_kwargs=family_kwargs, n=N, device="cpu", **settings
    )
    try:
        compare_vec_envs(batched, _single_envs(family, family_kwargs, settings), steps)
    finally:
        batched.close()


def _single_envs(family, family_kwargs, settings):
    return DummyVecEnv(
        [
            lambda: Monitor(
                InnerTrainingEnv(
                    family=family, family_kwargs=family_kwargs, device="cpu", **settings
                )
            )
        ]
        * N
    )


def compare_vec_envs(batched, reference, steps, n=N):
    """Same observations, rewards, dones and infos for the same seeds and actions."""
    batched.seed(11)
    reference.seed(11)
    np.testing.assert_allclose(batched.reset(), reference.reset(), rtol=1e-7, atol=1e-7)
    rng = np.random.default_rng(0)
    episodes_seen = 0
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        obs, rewards, dones, infos = batched.step(actions)
        ref_obs, ref_rewards, ref_dones, ref_infos = reference.step(actions)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(rewards, ref_rewards, rtol=1e-7, atol=1e-7)
        np.testing.assert_array_equal(dones, ref_dones)
        for info, ref in zip(infos, ref_infos):
            assert info.keys() == ref.keys()
            for key, value in ref.items():
                if key == "terminal_observation":
                    np.testing.assert_allclose(info[key], value, rtol=1e-7, atol=1e-7)
                elif key == "episode":
                    assert info[key]["l"] == value["l"]
                    assert info[key]["r"] == pytest.approx(
                        value["r"], rel=1e-7, abs=1e-7
                    )
                    episodes_seen += 1
                elif isinstance(value, float):
                    assert info[key] == pytest.approx(value, rel=1e-7, abs=1e-9)
                else:
                    assert info[key] == value, key
    assert episodes_seen >= n
    return episodes_seen


def check_ppo_learns(env):
    """PPO runs on `env` (8 runs of quadratic_2d) under VecMonitor and VecNormalize."""
    venv = VecNormalize(VecMonitor(env))
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=32, n_epochs=1, seed=0)
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    assert len(model.ep_info_buffer) >= 8  # episodes of 10 decisions finished
    venv.close()


class Payload:
    """Unpickling this runs `Path.touch(marker)`: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))
