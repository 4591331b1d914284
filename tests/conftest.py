"""Shared fixtures; the helpers they use live in tests/helpers.py."""

import pytest
from helpers import save_tiny_bundle, train_tiny_ppo


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle folder holding a PPO policy trained for 64 steps on quadratic_2d."""
    return save_tiny_bundle(
        tmp_path_factory.mktemp("bundle") / "pilot",
        *train_tiny_ppo(),
        training={"command": "tests/conftest.py", "timesteps": 64},
    )
