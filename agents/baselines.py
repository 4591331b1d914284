"""Baselines: the schedules a practitioner would otherwise use, and three controls.

Every class here is a `Controller` (see `agents.controllers`): `reset(spec)` when a
batch of N runs starts, then `act(state)` once per decision window of K inner
steps, on `[N]` tensors on the engine's device and dtype (those of
`state.hparams.lr`). Hyperparameters a controller does not set stay at the values
in force, and every returned value is clamped to its action range (lr to
`LR_RANGE`). Nothing here touches the global RNG.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Final

import torch

from hyperpilot.agents.controllers import ControllerState, PolicyController, RunSpec
from hyperpilot.envs.actions import (
    ACTION_RANGES,
    HPARAM_NAMES,
    LR_RANGE,
    ActionBounds,
    Hyperparams,
    warmup_cosine,
)

if TYPE_CHECKING:
    from hyperpilot.bundle import PolicyBundle

TUNING_GRID: Final = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
"""The learning rates from which tuned baselines choose."""

_F64 = torch.float64


def _set(current: Hyperparams, **values: torch.Tensor | float | None) -> Hyperparams:
    """`current` with the named entries replaced (broadcast to `[N]`, clamped).

    Entries given as None, or not given, keep their current value unchanged (an
    unclipped run's infinite clip stays infinite). The result has the device and
    dtype of `current.lr`.
    """
    like = current.lr
    out = []
    for name, old in zip(HPARAM_NAMES, current.values()):
        new = values.get(name)
        if new is None:
            out.append(old.to(like))
            continue
        new = torch.as_tensor(new, dtype=like.dtype, device=like.device)
        out.append(new.expand_as(like).clamp(*ACTION_RANGES[name]))
    return Hyperparams(*out)


def _full(spec: RunSpec, value: float) -> torch.Tensor:
    """A float64 `[N]` tensor of `value` on the runs' device."""
    return torch.full(
        spec.initial.lr.shape, value, dtype=_F64, device=spec.initial.lr.device
    )


# ------------------------------------------------------------------ schedules
class Schedule:
    """Base of the open-loop lr schedules: subclasses implement `lr_at`.

    beta1 and clip stay at the values in force (the run's initial ones), unless a
    subclass also implements `beta1_at`. Schedules are evaluated at the inner step
    where each decision window starts (the engine holds values for K steps).
    """

    name = "schedule"

    def reset(self, spec: RunSpec) -> None:
        """Schedules keep no state between decisions."""

    def lr_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """`[N]` lr at inner step `step` of `total` (float64 `[N]` tensors)."""
        raise NotImplementedError

    def beta1_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor | None:
        """`[N]` beta1 at `step`, or None to keep the current beta1."""
        return None

    def act(self, state: ControllerState) -> Hyperparams:
        """The schedule's values at the window's first inner step."""
        step, total = state.step.to(_F64), state.total_steps.to(_F64)
        lr, beta1 = self.lr_at(step, total), self.beta1_at(step, total)
        return _set(state.hparams, lr=lr, beta1=beta1)


class ConstantLR(Schedule):
    """Adam at a constant learning rate: `torch.optim.Adam(lr=lr)` with no scheduler.

    Rule: Kingma & Ba 2014, https://arxiv.org/abs/1412.6980.

    Args:
        lr: The learning rate of every window.
    """

    name = "constant"

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def lr_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """`lr` at every step."""
        return torch.full_like(step, self.lr)


class WarmupCosine(Schedule):
    """Linear warmup over 5% of the run to `peak_lr`, then cosine decay to 0.

    Exactly `envs.actions.warmup_cosine` (the residual action mode's base), clamped
    to 1e-6 below. Rule: cosine annealing from Loshchilov & Hutter 2016
    (https://arxiv.org/abs/1608.03983) without restarts, after the linear warmup of
    Goyal et al. 2017 (https://arxiv.org/abs/1706.02677).

    Args:
        peak_lr: The lr at the end of the warmup.
    """

    name = "warmup_cosine"

    def __init__(self, peak_lr: float) -> None:
        self.peak_lr = peak_lr

    def lr_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """`warmup_cosine(step, total, peak_lr)`."""
        return warmup_cosine(step, total, torch.full_like(step, self.peak_lr))


def _anneal_cos(start: float, end: float, pct: torch.Tensor) -> torch.Tensor:
    """OneCycleLR's cosine interpolation from `start` (pct 0) to `end` (pct 1)."""
    return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1.0)


class OneCycle(Schedule):
    """The 1cycle policy, exactly `torch.optim.lr_scheduler.OneCycleLR` on Adam.

    With its defaults: `pct_start=0.3`, `anneal_strategy="cos"`, `div_factor=25`,
    `final_div_factor=1e4`, `three_phase=False` and `cycle_momentum=True` with
    `base_momentum=0.85`, `max_momentum=0.95` applied to beta1 (as the scheduler
    does for Adam's `betas[0]`). `total_steps` is each run's inner-step budget and
    the scheduler's step count is the inner step where the window starts. Rule:
    Smith & Topin 2017, https://arxiv.org/abs/1708.07120.

    Args:
        max_lr: The peak lr (reached at `pct_start` of the run).
        pct_start: Share of the run spent raising the lr.
        div_factor: The initial lr is `max_lr / div_factor`.
        final_div_factor: The final lr is the initial lr / `final_div_factor`.
        base_momentum: beta1 at the peak lr.
        max_momentum: beta1 at the start and the end.
    """

    name = "one_cycle"

    def __init__(
        self,
        max_lr: float,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> None:
        self.max_lr, self.pct_start = max_lr, pct_start
        self.initial_lr = max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.base_momentum, self.max_momentum = base_momentum, max_momentum

    def _phase(
        self, step: torch.Tensor, total: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each run is in the rising phase, and its pct within its phase."""
        end_up = self.pct_start * total - 1.0
        rising = step <= end_up
        span_up = torch.where(end_up == 0, 1.0, end_up)  # torch would divide by 0
        span_down = total - 1.0 - end_up
        span_down = torch.where(span_down == 0, 1.0, span_down)
        return rising, torch.where(rising, step / span_up, (step - end_up) / span_down)

    def lr_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Up from `max_lr / div_factor` to `max_lr`, then down to the final lr."""
        rising, pct = self._phase(step, total)
        up = _anneal_cos(self.initial_lr, self.max_lr, pct)
        return torch.where(rising, up, _anneal_cos(self.max_lr, self.min_lr, pct))

    def beta1_at(self, step: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Down from `max_momentum` to `base_momentum`, then back up."""
        rising, pct = self._phase(step, total)
        low, high = self.base_momentum, self.max_momentum
        return torch.where(
            rising, _anneal_cos(high, low, pct), _anneal_cos(low, high, pct)
        )


# ---------------------------------------------------------- adaptive rules
class Plateau:
    """Halves the lr when the validation loss stops improving, per run.

    Mirrors `torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min",
    threshold_mode="rel", cooldown=0, min_lr=1e-6)` stepped once per decision on
    `state.val_loss`: a decision improves when `val < best * (1 - threshold)`;
    after more than `patience` decisions in a row without improvement the lr is
    multiplied by `factor` (only if that lowers it by more than torch's eps 1e-8)
    and the count restarts.

    Args:
        lr: The starting lr.
        factor: Multiplies the lr at each cut.
        patience: Non-improving decisions tolerated before a cut.
        threshold: Relative improvement that counts.
    """

    name = "plateau"

    def __init__(
        self, lr: float, factor: float = 0.5, patience: int = 2, threshold: float = 1e-4
    ) -> None:
        self.lr, self.factor, self.patience, self.threshold = (
            lr,
            factor,
            patience,
            threshold,
        )

    def reset(self, spec: RunSpec) -> None:
        """Starts every run at `lr` with no best loss yet."""
        self.current = _full(spec, self.lr)
        self.best = _full(spec, math.inf)
        self.bad = torch.zeros_like(self.current, dtype=torch.long)

    def act(self, state: ControllerState) -> Hyperparams:
        """One `ReduceLROnPlateau.step(val_loss)` per run."""
        val = state.val_loss.to(self.best)
        better = val < self.best * (1.0 - self.threshold)
        self.best = torch.where(better, val, self.best)
        self.bad = torch.where(better, 0, self.bad + 1)
        cut = self.bad > self.patience
        reduced = (self.current * self.factor).clamp_min(LR_RANGE[0])
        self.current = torch.where(
            cut & (self.current - reduced > 1e-8), reduced, self.current
        )
        self.bad = torch.where(cut, 0, self.bad)
        return _set(state.hparams, lr=self.current)


class AutoClip:
    """Constant lr; clip at a percentile of the run's gradient-norm history.

    AutoClip (Seetharaman et al. 2020, https://arxiv.org/abs/2007.14469): the clip
    threshold is the `percentile`-th percentile of all (pre-clip) gradient norms the
    run has seen so far, here the `state.grad_norms` of every past window, and is
    updated once per decision. Before any history the current clip stays; the clip
    is clamped to [1e-2, 1e3]. Non-finite norms (a diverged run) are ignored.

    Args:
        lr: The constant learning rate.
        percentile: In [0, 100]; the paper's default is 10.
    """

    name = "autoclip"

    def __init__(self, lr: float, percentile: float = 10.0) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        self.lr, self.percentile = lr, percentile

    def reset(self, spec: RunSpec) -> None:
        """Forgets the gradient norms of earlier runs."""
        self.history: list[torch.Tensor] = []

    def act(self, state: ControllerState) -> Hyperparams:
        """Adds the window's norms to the history and clips at its percentile."""
        if state.grad_norms.numel():
            norms = state.grad_norms.to(_F64)  # a non-finite norm is left out
            self.history.append(torch.where(norms.isfinite(), norms, torch.nan))
        if not self.history:
            return _set(state.hparams, lr=self.lr)
        norms = torch.cat(self.history, dim=1)
        clip = torch.nanquantile(norms, self.percentile / 100.0, dim=1)
        clip = torch.where(clip.isnan(), state.hparams.clip.to(clip), clip)
        return _set(state.hparams, lr=self.lr, clip=clip)


class HypergradientAdam:
    """Adam-HD: the lr follows its own hypergradient (Baydin et al. 2018).

    Rule (https://arxiv.org/abs/1703.04782, as in the authors' `AdamHD`,
    https://github.com/gbaydin/hypergradient-descent): before step t,
    `lr += hyper_lr * g_t . d_{t-1}`, where `d_{t-1} = m_hat / (sqrt(v_hat) + eps)`
    is Adam's previous direction, i.e. `u_{t-1} = theta_{t-1} - theta_{t-2} =
    -lr * d_{t-1}`. The engine holds the lr for K steps, so the K per-step updates
    sum to `lr -= hyper_lr * grad_update_dot / lr`, with `grad_update_dot = sum_t
    g_t . u_{t-1}` over the window (exact but for the window's first step, whose
    `u_{t-1}` was made with the previous window's lr). When successive steps agree
    (the new gradient points against the last update, `grad_update_dot < 0`) the lr
    rises; when they disagree it falls.

    This is the paper's additive rule, not its multiplicative, scale-free one: that
    one normalizes each step's hypergradient by `|g_t| |u_{t-1}|` (a cosine), and
    the state has the gradient norms but not the update norms, so the cosine cannot
    be derived from it. The additive `hyper_lr` therefore depends on the task's
    scale; the default is the paper's 1e-7 for Adam-HD. The lr is clamped to
    [1e-6, 1]; a non-finite `grad_update_dot` (a diverged run) leaves it as it is.

    Args:
        lr: The starting lr.
        hyper_lr: The hypergradient step size (beta in the paper).
    """

    name = "hypergradient"

    def __init__(self, lr: float, hyper_lr: float = 1e-7) -> None:
        self.lr, self.hyper_lr = lr, hyper_lr

    def reset(self, spec: RunSpec) -> None:
        """Starts every run at `lr`."""
        self.current = _full(spec, self.lr)

    def act(self, state: ControllerState) -> Hyperparams:
        """One aggregated hypergradient step per run."""
        dot = state.grad_update_dot.to(_F64)
        step = self.hyper_lr * dot / self.current
        step = torch.where(step.isfinite(), step, 0.0)
        self.current = (self.current - step).clamp(*LR_RANGE)
        return _set(state.hparams, lr=self.current)


# ------------------------------------------------------------------ controls
class RandomControl(PolicyController):
    """Uniform random actions in `[-1, 1]^k`, decoded exactly as the environment does.

    A control for the learned pilot: the same action space, mode and decoding
    (`PolicyController`), with no information. Actions come from an own
    `torch.Generator` seeded once at construction, so two controls with the same
    seed, run over the same episodes in the same order, act identically.

    Args:
        controlled: The hyperparameters the actions move.
        action_mode: `compound` or `residual` (moves around the base schedule of
            `RunSpec.initial`).
        seed: Seeds the generator.
        bounds: The action steps and ranges (the pilot's, to compare like with like).
    """

    name = "random"

    def __init__(
        self,
        controlled: tuple[str, ...],
        action_mode: str,
        seed: int,
        bounds: ActionBounds | None = None,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(self._draw, controlled, action_mode, "random", bounds)

    def _draw(self, features: torch.Tensor) -> torch.Tensor:
        shape = (features.shape[0], len(self.controlled))
        return torch.rand(shape, generator=self.generator, dtype=_F64) * 2.0 - 1.0


class ReplayControl:
    """Open-loop replay of recorded per-decision hyperparameters, ignoring the state.

    Decision i (counted from `reset`) uses entry i of each list, every run the
    same; past the end the last entry holds. Hyperparameters without a list stay
    at their current values. A control that separates what a pilot does from
    whether it reacts to the run (replay e.g. `median_schedule` of its traces).

    Args:
        schedule: `{"lr": [...], "beta1": [...], "clip": [...]}`, any non-empty
            subset, each a non-empty list.
    """

    name = "replay"

    def __init__(self, schedule: dict[str, list[float]]) -> None:
        unknown = sorted(set(schedule) - set(HPARAM_NAMES))
        empty = sorted(name for name, values in schedule.items() if len(values) == 0)
        if not schedule or unknown or empty:
            raise ValueError(
                f"a replay schedule needs non-empty lists for some of {list(HPARAM_NAMES)}"
                f" (unknown: {unknown}, empty: {empty})"
            )
        self.schedule = {
            name: [float(v) for v in values] for name, values in schedule.items()
        }
        self.decision = 0

    def reset(self, spec: RunSpec) -> None:
        """Replays from the first entry again."""
        self.decision = 0

    def act(self, state: ControllerState) -> Hyperparams:
        """The next recorded values (the last ones once past the end)."""
        values = {
            name: values[min(self.decision, len(values) - 1)]
            for name, values in self.schedule.items()
        }
        self.decision += 1
        return _set(state.hparams, **values)


def median_schedule(traces: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The per-decision median of several runs' trajectories.

    Runs may have different lengths (a run that diverged ended early): decision i
    takes the median of the entries present at i, so each list is as long as the
    longest trace of that key. Even counts give the mean of the two middle values.

    Args:
        traces: One `{name: [value per decision]}` per run.

    Returns:
        `{name: [median per decision]}` for every name in any trace.
    """
    names = dict.fromkeys(name for trace in traces for name in trace)
    out = {}
    for name in names:
        columns = [trace.get(name, []) for trace in traces]
        length = max(len(column) for column in columns)
        out[name] = [
            float(statistics.median(c[i] for c in columns if i < len(c)))
            for i in range(length)
        ]
    return out


PROGRESS_BINS: Final = 100
"""Resolution of `progress_median_schedule`: one value per 1% of a run."""


def progress_median_schedule(
    records: list[dict], bins: int = PROGRESS_BINS
) -> dict[str, list[float]]:
    """The median, by progress, of runs of different lengths: one schedule shape.

    Each record (an evaluation job record: `steps` at the end of each decision
    window, `horizon`, and the `lr` / `beta1` / `clip` in force during each window)
    is read as a step function of progress, the window starting at `steps[i - 1]`
    (0 for the first) holding entry i. Bin b (centre `(b + 0.5) / bins`) takes the
    median over the records that reach it (a diverged run ends early).

    Returns:
        `{name: [value per bin]}` for lr, beta1 and clip.
    """
    columns: dict[str, list[list[float]]] = {
        name: [[] for _ in range(bins)] for name in HPARAM_NAMES
    }
    for record in records:
        ends, window = record["steps"], 0
        for b in range(bins):
            step = (b + 0.5) / bins * float(record["horizon"])
            while window < len(ends) and ends[window] <= step:
                window += 1
            if window == len(ends):
                break  # the run ended (diverged) before this bin
            for name in HPARAM_NAMES:
                columns[name][b].append(float(record[name][window]))
    if not any(columns["lr"]):
        raise ValueError("a progress schedule needs at least one recorded window")
    out = {}
    for name, per_bin in columns.items():
        values: list[float] = []
        for entries in per_bin:  # bins no run reached hold the last median
            values.append(statistics.median(entries) if entries else values[-1])
        out[name] = [float(v) for v in values]
    return out


class ProgressReplay:
    """Open-loop replay of one schedule by progress, the same shape on every run.

    At a decision at inner step s of T, every hyperparameter takes the entry of bin
    `floor(s / T * bins)` of its list (see `progress_median_schedule`), so runs of
    any length follow the same shape. A control that asks whether reacting to the
    run adds anything to a fixed schedule shape.

    Args:
        schedule: `{"lr": [...], "beta1": [...], "clip": [...]}`, any non-empty
            subset, each a non-empty list of the same length (the bins).
    """

    name = "replay_suite"

    def __init__(self, schedule: dict[str, list[float]]) -> None:
        lengths = {len(values) for values in schedule.values()}
        unknown = sorted(set(schedule) - set(HPARAM_NAMES))
        if not schedule or unknown or len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "a progress schedule needs equally long, non-empty lists for some of "
                f"{list(HPARAM_NAMES)} (unknown: {unknown})"
            )
        self.schedule = {
            name: torch.tensor(values, dtype=_F64) for name, values in schedule.items()
        }
        self.bins = lengths.pop()

    def reset(self, spec: RunSpec) -> None:
        """Nothing to remember: the state's progress picks the bin."""

    def act(self, state: ControllerState) -> Hyperparams:
        """Every run's values at its progress."""
        progress = state.step.to(_F64) / state.total_steps.to(_F64)
        index = (progress * self.bins).floor().long().clamp(0, self.bins - 1)
        values = {
            name: values.to(index.device)[index]
            for name, values in self.schedule.items()
        }
        return _set(state.hparams, **values)


class BlindControl(PolicyController):
    """The bundle's pilot with everything but the run's progress hidden.

    Every observation entry except `progress` is replaced by the bundle's
    normalization mean (`bundle.obs_mean`; zeros without normalization), so the
    normalized input is the average observation: a pilot that cannot see the run
    and can only follow a learned function of time. Comparing it with the pilot
    measures what the feedback is worth.

    Args:
        bundle: A loaded `PolicyBundle`.
    """

    name = "blind"

    def __init__(self, bundle: PolicyBundle) -> None:
        super().__init__(
            bundle.act, bundle.controlled, bundle.action_mode, "blind", bundle.bounds
        )
        names = bundle.feature_names
        if "progress" not in names:
            raise ValueError(f"the bundle's features {list(names)} lack 'progress'")
        mean = bundle.obs_mean
        self.fill = (
            torch.zeros(len(names), dtype=_F64) if mean is None else mean.to(_F64)
        )
        self.visible = torch.tensor([name == "progress" for name in names])

    def actions(self, state: ControllerState) -> torch.Tensor:
        """The policy's actions for the blinded features."""
        features = state.features.to(_F64)
        visible, fill = self.visible.to(features.device), self.fill.to(features.device)
        return torch.as_tensor(self.policy(torch.where(visible, features, fill)))
