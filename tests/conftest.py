"""Shared fixtures: a tiny real pilot bundle (a briefly trained SB3 PPO policy)."""

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from hyperpilot.bundle import save_bundle
from hyperpilot.envs import BatchedTrainingVecEnv


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle folder holding a PPO policy trained for 64 steps on quadratic_2d."""
    env = BatchedTrainingVecEnv(family="quadratic_2d", n=4, device="cpu")
    venv = VecNormalize(env)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=8,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs={"net_arch": [16, 16]},
    )
    model.learn(64)
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "pilot",
        policy=model.policy,
        obs_rms=venv.obs_rms,
        clip_obs=venv.clip_obs,
        epsilon=venv.epsilon,
        settings=env.settings,
        default_clip=1.0,
        training={"command": "tests/conftest.py", "timesteps": 64},
    )
