"""Callbacks of meta-training: inner-episode metrics, checkpoints, validation, signals."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure as PlotFigure
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure
from torch.utils.tensorboard import SummaryWriter

from hyperpilot.agents.checkpoints import save_checkpoint
from hyperpilot.agents.rollout import TRACE_KEYS, EpisodeTrace
from hyperpilot.runtime import atomic_path, kill_point

NOT_TEXT = ("stdout", "log", "json", "csv")
"""Logger formats to skip for records that are not text (figures, hparams)."""


class InnerMetricsCallback(BaseCallback):
    """Logs every finished inner episode, averaged over each rollout.

    Tags: `inner/train_loss`, `inner/val_loss`, `inner/grad_norm`, `hparams/lr`,
    `hparams/beta1`, `hparams/clip` (at the episode's last decision),
    `meta/episode_reward`, `meta/final_val_loss` and `meta/best_val_loss` (relative
    to the run's first validation loss), `meta/diverged_frac` and
    `meta/inner_steps_per_s`. SB3 passes the rollout's `infos` to callbacks.
    """

    def __init__(self, decision_interval: int) -> None:
        super().__init__()
        self.decision_interval = decision_interval
        self._started = time.perf_counter()
        self._steps_at_start = 0

    def _on_rollout_start(self) -> None:
        self._started = time.perf_counter()
        self._steps_at_start = self.num_timesteps

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "final_val_loss" not in info:
                continue
            diverged = bool(info["diverged"])
            self.logger.record_mean("meta/diverged_frac", float(diverged))
            if "episode" in info:
                self.logger.record_mean("meta/episode_reward", info["episode"]["r"])
            if diverged:
                continue
            for key in ("train_loss", "val_loss", "grad_norm"):
                self.logger.record_mean(f"inner/{key}", info[key])
            for key in ("lr", "beta1", "clip"):
                self.logger.record_mean(f"hparams/{key}", info[key])
            first = info["initial_val_loss"]
            self.logger.record_mean(
                "meta/final_val_loss", info["final_val_loss"] / first
            )
            self.logger.record_mean("meta/best_val_loss", info["best_val_loss"] / first)
        return True

    def _on_rollout_end(self) -> None:
        seconds = time.perf_counter() - self._started
        inner_steps = (
            self.num_timesteps - self._steps_at_start
        ) * self.decision_interval
        if seconds > 0:
            self.logger.record("meta/inner_steps_per_s", inner_steps / seconds)


class PeriodicCallback(BaseCallback):
    """Runs `_on_period` at the end of the first rollout past every `every` steps."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._next = every

    def _init_callback(self) -> None:
        # A resumed run continues its schedule from the restored step count (the
        # callback's own `num_timesteps` is still 0 here: it is set at each step).
        if self.every > 0:
            self._next = (self.model.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            self._on_period()

    def _on_period(self) -> None:
        raise NotImplementedError


class CheckpointCallback(PeriodicCallback):
    """Saves a complete checkpoint every `every` meta-env steps, keeping `keep`.

    `states()` gives the other callbacks' `state_dict()`s by name, saved with it.
    """

    def __init__(
        self,
        run_dir: Path,
        every: int,
        keep: int,
        states: Callable[[], dict[str, dict[str, Any]]] = dict,
    ) -> None:
        super().__init__(every)
        self.run_dir = run_dir
        self.keep = keep
        self.states = states

    def _on_period(self) -> None:
        save_checkpoint(self.run_dir, self.model, self.keep, self.states())


class ValidationCallback(PeriodicCallback):
    """Evaluates the deterministic policy on fixed validation instances.

    Every `every` steps `evaluate()` returns one trace per validation run; this
    logs `eval/mean_reward`, `eval/final_val_loss` (relative to start) and
    `eval/diverged_frac`, draws the loss curves and the lr / beta1 / clip schedules
    into the Images tab, writes the same as scalars against the inner step under
    `eval/step_<N>/<task>_<i>/` (one TensorBoard folder per evaluation), and calls
    `on_best(score)` when the mean final validation loss (the score) is the lowest
    so far. The best score and the history (`evaluations.npz`) are its state: a
    checkpoint saves them and a resume restores them.
    """

    def __init__(
        self,
        every: int,
        evaluate: Callable[[], list[EpisodeTrace]],
        on_best: Callable[[float], None],
        run_dir: Path,
        plots: bool = True,
    ) -> None:
        super().__init__(every)
        self.evaluate = evaluate
        self.on_best = on_best
        self.run_dir = run_dir
        self.plots = plots
        self.best = float("inf")
        self.history: list[tuple[int, float, float]] = []

    def state_dict(self) -> dict[str, Any]:
        """The best score and the history `(step, mean reward, score)` so far."""
        return {"best": self.best, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a `state_dict()`."""
        self.best = float(state["best"])
        self.history = [(int(s), float(r), float(v)) for s, r, v in state["history"]]

    def _on_period(self) -> None:
        traces = self.evaluate()
        ratios = np.array([t.final_val_ratio for t in traces])
        finite = ratios[np.isfinite(ratios)]
        score = float(finite.mean()) if len(finite) == len(ratios) else float("inf")
        mean_reward = float(np.mean([t.reward for t in traces]))
        self.logger.record("eval/mean_reward", mean_reward)
        self.logger.record("eval/final_val_loss", score)
        self.logger.record("eval/diverged_frac", float(np.mean(~np.isfinite(ratios))))
        self.history.append((self.num_timesteps, mean_reward, score))
        with (
            atomic_path(self.run_dir / "evaluations.npz") as temp,
            temp.open("wb") as file,  # a path would get `.npz` appended
        ):
            np.savez(
                file,
                timesteps=[h[0] for h in self.history],
                mean_reward=[h[1] for h in self.history],
                final_val_loss=[h[2] for h in self.history],
            )
        kill_point("validation")
        if self.plots:
            figure = plot_traces(traces, f"validation at step {self.num_timesteps}")
            self.logger.record("eval/schedules", Figure(figure, close=True), NOT_TEXT)
            write_trace_scalars(
                self.run_dir / "eval" / f"step_{self.num_timesteps:012d}", traces
            )
        if score < self.best:
            self.best = score
            self.on_best(score)


def plot_traces(traces: list[EpisodeTrace], title: str) -> PlotFigure:
    """Validation loss and lr / beta1 / clip against the inner step, one line a run.

    A plain matplotlib `Figure` (no pyplot), so no backend is chosen for the process.
    """
    figure = PlotFigure(figsize=(16, 3.5))
    axes = figure.subplots(1, 4)
    for i, trace in enumerate(traces):
        label = f"{trace.task} #{i}"
        for axis, key in zip(axes, ("val_loss", "lr", "beta1", "clip")):
            axis.plot(trace.inner_steps, trace.values[key], label=label)
    for axis, key in zip(axes, ("val loss", "lr", "beta1", "clip")):
        axis.set_title(key)
        axis.set_xlabel("inner step")
        if key != "beta1":
            axis.set_yscale("log")
    axes[0].legend(fontsize="x-small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def write_trace_scalars(folder: Path, traces: list[EpisodeTrace]) -> None:
    """One TensorBoard folder per run with `inner/*` and `hparams/*` per inner step."""
    for i, trace in enumerate(traces):
        with SummaryWriter(str(folder / f"{trace.task}_{i}")) as writer:
            for index, step in enumerate(trace.inner_steps):
                for key in TRACE_KEYS:
                    prefix = "hparams" if key in ("lr", "beta1", "clip") else "inner"
                    writer.add_scalar(f"{prefix}/{key}", trace.values[key][index], step)


class StopOnSignal(BaseCallback):
    """Turns SIGINT / SIGTERM into a clean stop: training ends after the current step.

    The caller then saves a checkpoint and says how to resume. The previous handlers
    are restored when training ends. The end of each rollout is also the fault
    tests' `rollout` kill point (`hyperpilot.runtime.kill_point`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _on_training_start(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def _on_step(self) -> bool:
        return self.received is None

    def _on_rollout_end(self) -> None:
        kill_point("rollout")  # after the rollout's validation and checkpoint

    def _on_training_end(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
