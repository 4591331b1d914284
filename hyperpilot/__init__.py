"""hyperpilot: learn to steer an optimizer's hyperparameters while a network trains.

Public API: `Pilot` (the deployable policy), `InnerTrainingEnv` and
`BatchedTrainingVecEnv` (the environments), `make_family` / `register_family`
(task families). They load on first use, so `hyperpilot --version` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

from hyperpilot._version import __version__

_LAZY = {
    "Pilot": "hyperpilot.agents.pilot",
    "InnerTrainingEnv": "hyperpilot.envs",
    "BatchedTrainingVecEnv": "hyperpilot.envs",
    "make_family": "hyperpilot.envs.tasks",
    "register_family": "hyperpilot.envs.tasks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyperpilot' has no attribute {name!r}")
