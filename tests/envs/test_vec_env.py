import numpy as np
import pytest
from helpers import (
    CONTRACT_CASES,
    check_matches_single_envs,
    check_ppo_learns,
)

from hyperpilot.envs import BatchedTrainingVecEnv
from hyperpilot.envs.tasks.splits import load_split

NORM = "helpers:NormFamily"  # tests/helpers.py (NormFamily)


@CONTRACT_CASES
def test_vec_env_matches_a_dummy_vec_env_of_single_envs(family, settings):
    check_matches_single_envs(BatchedTrainingVecEnv, family, settings)


def test_vec_env_matches_single_envs_on_a_model_with_buffers():
    """BatchNorm statistics, kept per run, reset with each new instance."""
    settings = {"decision_interval": 2, "family_kwargs": {"kind": "cnn", "horizon": 7}}
    check_matches_single_envs(BatchedTrainingVecEnv, NORM, settings)


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
