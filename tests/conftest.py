"""Shared test helpers: a tiny, briefly trained SB3 PPO policy and its bundle."""

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from hyperpilot.bundle import save_bundle
from hyperpilot.envs import BatchedTrainingVecEnv

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


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle folder holding a PPO policy trained for 64 steps on quadratic_2d."""
    return save_tiny_bundle(
        tmp_path_factory.mktemp("bundle") / "pilot",
        *train_tiny_ppo(),
        training={"command": "tests/conftest.py", "timesteps": 64},
    )
