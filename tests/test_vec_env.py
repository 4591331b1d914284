import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

from hyperpilot.envs import BatchedTrainingVecEnv, InnerTrainingEnv
from hyperpilot.envs.tasks.splits import load_split

N = 4
NORM = "norm_family:NormFamily"  # tests/norm_family.py
# The VecEnv contract, shared with tests/test_ray.py (RayVecEnv must pass it too).
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


@CONTRACT_CASES
def test_vec_env_matches_a_dummy_vec_env_of_single_envs(family, settings):
    check_matches_single_envs(BatchedTrainingVecEnv, family, settings)


def test_vec_env_matches_single_envs_on_a_model_with_buffers():
    """BatchNorm statistics, kept per run, reset with each new instance."""
    settings = {"decision_interval": 2, "family_kwargs": {"kind": "cnn", "horizon": 7}}
    check_matches_single_envs(BatchedTrainingVecEnv, NORM, settings)


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


def test_buckets_from_a_split_and_from_groups():
    n = len(load_split("train")) + 2  # one run per entry, two shared out
    venv = BatchedTrainingVecEnv(split="train", n=n, device="cpu")
    assert venv.num_envs == n
    assert len(venv.engines) == len(venv.groups) >= 2
    assert sum(g.n for g in venv.groups) == n
    obs = venv.reset()
    assert obs.shape == (n, venv.observation_space.shape[0])
    venv = BatchedTrainingVecEnv(
        groups=[
            {"family": "quadratic_2d", "n": 2},
            {"family": "mlp_digits", "width": 32, "n": 3, "horizon": 20},
        ],
        device="cpu",
    )
    venv.reset()
    _, _, _, infos = venv.step(np.zeros((5, 3), np.float32))
    assert [i["task"] for i in infos] == ["quadratic_2d"] * 2 + ["mlp_digits"] * 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "quadratic_2d"}, "give n"),
        ({"family": "quadratic_2d", "split": "train", "n": 4}, "one of"),
        ({"split": "train", "n": 2}, "at least one run"),
        ({"groups": [{"family": "quadratic_2d"}]}, "needs 'family' and 'n'"),
    ],
    ids=["no-n", "family-and-split", "too-few-runs", "group-without-n"],
)
def test_bad_bucket_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchedTrainingVecEnv(device="cpu", **kwargs)


def test_bad_actions_are_refused():
    venv = BatchedTrainingVecEnv(family="quadratic_2d", n=2, device="cpu")
    venv.reset()
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="finite"):
        venv.step(np.full((2, 3), np.nan, np.float32))


def test_ppo_learns_on_it_under_vec_monitor_and_vec_normalize():
    check_ppo_learns(BatchedTrainingVecEnv(family="quadratic_2d", n=8, device="cpu"))


def check_ppo_learns(env):
    """PPO runs on `env` (8 runs of quadratic_2d) under VecMonitor and VecNormalize."""
    venv = VecNormalize(VecMonitor(env))
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=32, n_epochs=1, seed=0)
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    assert len(model.ep_info_buffer) >= 8  # episodes of 10 decisions finished
    venv.close()
