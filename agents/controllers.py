"""One interface for everything that sets hyperparameters: `reset(spec)`, `act(state)`.

The learned pilot, the hand-written schedules and the controls are all
`Controller`s, so evaluation runs one rollout loop (`run_episode`) for all of them.
A controller sees both the feature vector (what the policy sees) and the raw
signals that hand-written rules need, as `[N]` tensors for N runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from hyperpilot.envs.actions import (
    ACTION_MODES,
    ActionBounds,
    Hyperparams,
    decode_in_run,
    validate_controlled,
)
from hyperpilot.envs.engine import Transition


@dataclass(frozen=True)
class RunSpec:
    """What a controller learns when a batch of runs starts.

    Attributes:
        total_steps: `[N]` inner-step budget of each run.
        decision_interval: K, inner steps between two `act` calls.
        initial: The hyperparameters each run starts from.
        task: The task's name (for controllers that remember per task).
    """

    total_steps: torch.Tensor
    decision_interval: int
    initial: Hyperparams
    task: str = ""


@dataclass(frozen=True)
class ControllerState:
    """The state of N runs at a decision.

    Attributes:
        features: `[N, F]` observation (`OBS_FEATURES`), before any normalization.
        step: `[N]` inner steps done.
        total_steps: `[N]` inner-step budget.
        train_loss: `[N]` mean minibatch loss of the last window (NaN at the start).
        val_loss: `[N]` validation loss now.
        grad_norms: `[N, K]` pre-clip gradient norms of the last window's steps
            (`[N, 0]` at the start).
        grad_update_dot: `[N]` sum over the window of each gradient's dot product
            with the previous parameter update (the hypergradient signal).
        hparams: The values in force.
    """

    features: torch.Tensor
    step: torch.Tensor
    total_steps: torch.Tensor
    train_loss: torch.Tensor
    val_loss: torch.Tensor
    grad_norms: torch.Tensor
    grad_update_dot: torch.Tensor
    hparams: Hyperparams


class InnerRuns(Protocol):
    """What a rollout needs of the runs it steers, right after their `start`.

    A `BatchedEngine`, or for an optimizer that replaces Adam a `TorchOptimizerRun`.
    """

    n: int
    k: int
    device: torch.device
    families: list[str]
    step_count: torch.Tensor
    horizon: torch.Tensor
    running: torch.Tensor
    last_obs: torch.Tensor
    last_val: torch.Tensor
    hparams: Hyperparams
    initial: Hyperparams

    def advance(self, hparams: Hyperparams) -> Transition:
        """Trains one decision window under `hparams`."""


class Controller(Protocol):
    """Anything that steers runs: the pilot, a schedule, a control."""

    name: str

    def reset(self, spec: RunSpec) -> None:
        """Called when a batch of runs starts."""

    def act(self, state: ControllerState) -> Hyperparams:
        """The hyperparameters for the next K inner steps."""


def start_state(engine: InnerRuns) -> ControllerState:
    """The state right after `engine.start`, before the first decision."""
    n = engine.n
    nan = torch.full((n,), torch.nan, dtype=torch.float64, device=engine.device)
    return ControllerState(
        features=engine.last_obs,
        step=engine.step_count.clone(),
        total_steps=engine.horizon.clone(),
        train_loss=nan,
        val_loss=engine.last_val.clone(),
        grad_norms=torch.zeros(n, 0, device=engine.device),
        grad_update_dot=torch.zeros(n, dtype=torch.float64, device=engine.device),
        hparams=engine.hparams,
    )


def next_state(engine: InnerRuns, transition: Transition) -> ControllerState:
    """The state after a decision window."""
    return ControllerState(
        features=transition.obs,
        step=engine.step_count.clone(),
        total_steps=engine.horizon.clone(),
        train_loss=transition.train_loss,
        val_loss=transition.val_loss,
        grad_norms=transition.grad_norms,
        grad_update_dot=transition.grad_update_dot,
        hparams=transition.hparams,
    )


class PolicyController:
    """Acts with a policy `features -> actions in [-1, 1]`, decoded like the env does.

    Args:
        policy: Maps `[N, F]` raw features to `[N, k]` actions (a bundle's `act`
            normalizes on its own).
        controlled: The hyperparameters the action columns move.
        action_mode: `compound` or `residual`.
        name: Shown in reports.
        bounds: The action steps and ranges (a bundle's `bounds`; default: the
            env's defaults).
    """

    def __init__(
        self,
        policy,
        controlled: tuple[str, ...],
        action_mode: str,
        name: str = "pilot",
        bounds: ActionBounds | None = None,
    ) -> None:
        if action_mode not in ACTION_MODES:
            raise ValueError(
                f"action mode {action_mode!r} is invalid; choose from {ACTION_MODES}"
            )
        self.policy = policy
        self.controlled = validate_controlled(controlled)
        self.action_mode = action_mode
        self.name = name
        self.bounds = bounds
        self.spec: RunSpec | None = None

    def reset(self, spec: RunSpec) -> None:
        """Remembers the initial values (the residual mode's base needs them)."""
        self.spec = spec

    def actions(self, state: ControllerState) -> torch.Tensor:
        """The policy's actions for this state (subclasses change what it sees)."""
        return torch.as_tensor(self.policy(state.features))

    def act(self, state: ControllerState) -> Hyperparams:
        """Decodes the policy's action exactly as the environment does."""
        assert self.spec is not None, "reset() first"
        action = self.actions(state).to(state.hparams.lr)
        return decode_in_run(
            action,
            state.hparams,
            self.spec.initial,
            state.step,
            state.total_steps,
            self.controlled,
            self.action_mode,
            self.bounds,
        )


class HoldValues:
    """Keeps the values in force: for runs whose optimizer sets its own step sizes.

    `TorchOptimizerRun` ignores the hyperparameters it is given (Schedule-Free
    AdamW and Prodigy choose their own), so its controller only has to exist.
    """

    name = "hold"

    def reset(self, spec: RunSpec) -> None:
        """Nothing to remember."""

    def act(self, state: ControllerState) -> Hyperparams:
        """The values in force."""
        return state.hparams


def run_episode(
    engine: InnerRuns, controller: Controller, on_decision=None
) -> ControllerState:
    """Runs every run of a freshly started engine to its end under `controller`.

    Args:
        engine: An engine right after `start` (all runs running).
        controller: Chooses hyperparameters every K steps.
        on_decision: Optional `f(state, transition)` called after every window.

    Returns:
        The state after the last window.
    """
    state = start_state(engine)
    controller.reset(
        RunSpec(engine.horizon.clone(), engine.k, engine.initial, engine.families[0])
    )
    while bool(engine.running.any()):
        transition = engine.advance(controller.act(state))
        state = next_state(engine, transition)
        if on_decision is not None:
            on_decision(state, transition)
    return state
