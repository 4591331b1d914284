"""The deployable pilot: a trained policy, loaded from a bundle, that steers an optimizer.

`Pilot.load` reads a policy bundle (see `hyperpilot.bundle`) without unpickling
anything; `act` gives its deterministic actions for feature vectors built as in
training. Importing this module or loading a pilot changes no process-wide torch
setting (threads, RNG state, default dtype).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hyperpilot.bundle import PolicyBundle, load_bundle


class Pilot:
    """A trained pilot: K, the controlled hyperparameters and a deterministic policy.

    Args:
        bundle: A loaded policy bundle.
    """

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle

    @classmethod
    def load(cls, path_or_name: str | Path) -> Pilot:
        """Loads a bundle directory, or a pilot shipped with the package by name.

        Args:
            path_or_name: A bundle directory, or a name such as `"default"`.

        Returns:
            The pilot.

        Raises:
            BundleError: If the bundle is missing, incompatible or unsafe to load.
        """
        return cls(load_bundle(path_or_name))

    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Deterministic actions in `[-1, 1]`, one column per controlled hyperparameter.

        Args:
            obs: `[F]` or `[N, F]` raw observations (features, unnormalized).

        Returns:
            `[A]` or `[N, A]` float32 actions.
        """
        return self.bundle.act(obs).cpu().numpy()

    @property
    def decision_interval(self) -> int:
        """K: inner steps between two decisions."""
        return self.bundle.decision_interval

    @property
    def controlled(self) -> tuple[str, ...]:
        """The hyperparameters the pilot moves, in action-column order."""
        return self.bundle.controlled

    @property
    def action_mode(self) -> str:
        """`compound` or `residual`."""
        return self.bundle.action_mode

    @property
    def default_clip(self) -> float:
        """The clip threshold a run starts from when none is given."""
        return self.bundle.default_clip

    def __repr__(self) -> str:
        return (
            f"Pilot(K={self.decision_interval}, controlled={list(self.controlled)}, "
            f"mode={self.action_mode!r})"
        )
