import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import hyperpilot.envs  # noqa: F401  (registers the id)
from hyperpilot.envs import ENV_ID, InnerTrainingEnv

INFO_KEYS = {"train_loss", "val_loss", "grad_norm", "lr", "beta1", "clip", "task"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "quadratic_2d"},
        {"family": "quadratic_2d", "controlled": ["lr"], "action_mode": "residual"},
        {"family": "mlp_digits", "family_kwargs": {"width": 32, "horizon": 40}},
        {  # tests/helpers.py (NormFamily): a model with buffers
            "family": "helpers:NormFamily",
            "decision_interval": 2,
            "family_kwargs": {"horizon": 8},
        },
    ],
    ids=["quadratic", "lr-only-residual", "mlp-digits", "buffers"],
)
def test_passes_gymnasium_and_sb3_checkers(kwargs):
    env = gym.make(ENV_ID, device="cpu", **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_no_kwargs_draws_families_from_the_train_split():
    env = gym.make(ENV_ID, device="cpu")
    tasks = {env.reset(seed=s)[1]["task"] for s in range(12)}
    assert len(tasks) > 1
    assert "quadratic_2d" not in tasks


def rollout(env, seed, steps=25):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    trajectory = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert INFO_KEYS <= info.keys()
        trajectory.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            assert info["final_val_loss"] == info["val_loss"]
            assert info["diverged"] is terminated
            obs, _ = env.reset()
            trajectory.append(obs)
    return trajectory


def test_same_seed_gives_the_same_rollout():
    first = rollout(InnerTrainingEnv(family="quadratic_2d", device="cpu"), seed=5)
    second = rollout(InnerTrainingEnv(family="quadratic_2d", device="cpu"), seed=5)
    np.testing.assert_equal(first, second)
    other = rollout(InnerTrainingEnv(family="quadratic_2d", device="cpu"), seed=6)
    assert not np.array_equal(first[0], other[0])


def test_a_spent_horizon_truncates():
    env = InnerTrainingEnv(family="quadratic_2d", device="cpu", decision_interval=25)
    env.reset(seed=0)
    ends = [env.step(np.zeros(3, np.float32))[2:4] for _ in range(4)]
    assert ends == [(False, False)] * 3 + [(False, True)]


def test_divergence_terminates():
    env = InnerTrainingEnv(family="mlp_teacher", device="cpu", init={"lr": [1.0, 1.0]})
    env.reset(seed=0)
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(np.ones(3, np.float32))
        if terminated or truncated:
            break
    assert terminated and not truncated and info["diverged"]
    assert reward < -1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "mlp_digit"}, "mlp_digits"),
        ({"family": "quadratic_2d", "split": "train"}, "either"),
        ({"split": "nope"}, "shipped splits"),
        ({"family": "quadratic_2d", "action_mode": "absolute"}, "action_mode"),
        ({"family": "quadratic_2d", "controlled": ["momentum"]}, "controlled"),
        ({"family": "quadratic_2d", "reward": "accuracy"}, "reward kind"),
        ({"family": "quadratic_2d", "init": {"lr": [1e-1, 1e-5]}}, "init range"),
        ({"family": "quadratic_2d", "decision_interval": 0}, "decision_interval"),
    ],
    ids=[
        "unknown-family",
        "family-and-split",
        "unknown-split",
        "action-mode",
        "controlled",
        "reward",
        "init-range",
        "interval",
    ],
)
def test_bad_configuration_raises_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        env = InnerTrainingEnv(device="cpu", **kwargs)
        env.reset(seed=0)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.zeros(2, np.float32), "shape"),
        (np.array([np.nan, 0, 0], np.float32), "finite"),
    ],
    ids=["shape", "nan"],
)
def test_bad_actions_raise(action, match):
    env = InnerTrainingEnv(family="quadratic_2d", device="cpu")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize("horizon", [0, -3, [0, 10]], ids=["zero", "negative", "range"])
def test_gym_make_refuses_a_horizon_below_one(horizon):
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        gym.make(ENV_ID, family="quadratic_2d", family_kwargs={"horizon": horizon})
