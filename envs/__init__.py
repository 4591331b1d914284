"""What the agent acts upon: tasks, the batched engine and its two environment views.

Importing this package registers `hyperpilot/InnerTraining-v0` with Gymnasium (a
string entry point: no task is built and no data is read at import).
"""

from gymnasium.envs.registration import register

from hyperpilot.envs.actions import Hyperparams, decode_action
from hyperpilot.envs.engine import BatchedEngine, Transition
from hyperpilot.envs.features import FEATURES_VERSION, OBS_FEATURES
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.training_env import InnerTrainingEnv
from hyperpilot.envs.vec_env import BatchedTrainingVecEnv

ENV_ID = "hyperpilot/InnerTraining-v0"

register(id=ENV_ID, entry_point="hyperpilot.envs.training_env:InnerTrainingEnv")

__all__ = [
    "ENV_ID",
    "FEATURES_VERSION",
    "OBS_FEATURES",
    "BatchedEngine",
    "BatchedTrainingVecEnv",
    "EnvSettings",
    "Hyperparams",
    "InnerTrainingEnv",
    "Transition",
    "decode_action",
]
