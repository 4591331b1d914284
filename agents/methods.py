"""The evaluation methods: one registry entry per method, from which everything derives.

`hyperpilot evaluate --methods` names entries of `METHODS`; its help text, the
default method list, the tuned-method table of the report and the order in which
jobs run all come from here. A method either builds a `Controller` that steers the
batched engine's Adam (the pilot, the schedules, the controls), or an optimizer
that replaces Adam and runs in `TorchOptimizerRun` (Schedule-Free AdamW, Prodigy);
both are recorded by the same rollout loop. Adding a method is one entry below.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import torch

from hyperpilot.agents import baselines
from hyperpilot.agents.controllers import Controller, PolicyController
from hyperpilot.bundle import PolicyBundle

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
"""Builds an optimizer for a model's parameters."""


@dataclass(frozen=True)
class MethodContext:
    """What a method's factory gets for one job.

    Attributes:
        lr: The lr the run starts from: `--init-lr`, or the grid point of a tuned
            method's job.
        bundle: The pilot under evaluation.
        seed: The job's seed (random controls draw from it).
        inputs: What `Method.inputs` derived from other methods' records.
    """

    lr: float
    bundle: PolicyBundle
    seed: int
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One evaluation method.

    Attributes:
        name: The name `--methods` takes.
        help: One line for `--help` and the README.
        controller: Builds the controller that steers the engine's Adam.
        optimizer: Builds an optimizer that replaces Adam (exclusive with
            `controller`).
        tuned_as: Tuned over `baselines.TUNING_GRID` on validation loss: its jobs
            are named `<tuned_as>@<lr>` and the report picks the best lr per task.
        library: The module the method needs; without it the method is
            unavailable (and left out of the defaults, with a note).
        extra: The pip extra that installs `library`.
        reads: Another method whose records this one needs; its jobs run first.
        inputs: `inputs(records_by_task, task) -> dict` turns the records of
            `reads` (grouped by task label) into `MethodContext.inputs` for a job
            on `task`; the result must be plain data (it travels to Ray workers).
        uses_pilot: Its runs depend on the pilot under evaluation (its policy, its
            records or its action space). Such runs start from the bundle's default
            clip; every other method runs unclipped, so the baselines do not move
            when the pilot changes, and their cached jobs serve any pilot.
        per_seed: Its controller draws from the job's seed, so each seed runs
            alone (others run their seeds side by side in one engine).
    """

    name: str
    help: str
    controller: Callable[[MethodContext], Controller] | None = None
    optimizer: Callable[[MethodContext], OptimizerFactory] | None = None
    tuned_as: str | None = None
    library: str | None = None
    extra: str | None = None
    reads: str | None = None
    inputs: Callable[[Mapping[str, list[dict]], str], dict[str, Any]] | None = None
    uses_pilot: bool = False
    per_seed: bool = False

    @property
    def batchable(self) -> bool:
        """Whether its jobs of one task can share an engine (one run per seed)."""
        return self.controller is not None and not self.per_seed

    @property
    def available(self) -> bool:
        """Whether the library it needs (if any) is installed."""
        return (
            self.library is None or importlib.util.find_spec(self.library) is not None
        )


def _pilot(ctx: MethodContext) -> Controller:
    bundle = ctx.bundle
    return PolicyController(
        bundle.act, bundle.controlled, bundle.action_mode, bounds=bundle.bounds
    )


def _random(ctx: MethodContext) -> Controller:
    bundle = ctx.bundle
    return baselines.RandomControl(
        bundle.controlled, bundle.action_mode, ctx.seed, bundle.bounds
    )


def _schedule_free(ctx: MethodContext) -> OptimizerFactory:
    import schedulefree

    return schedulefree.AdamWScheduleFree


def _prodigy(ctx: MethodContext) -> OptimizerFactory:
    import prodigyopt

    return prodigyopt.Prodigy


def _task_median_schedule(
    records: Mapping[str, list[dict]], task: str
) -> dict[str, Any]:
    traces = [
        {key: record[key] for key in ("lr", "beta1", "clip")}
        for record in records.get(task, [])
    ]
    if not traces:
        raise ValueError(f"replay needs the pilot's runs on {task!r}")
    return {"schedule": baselines.median_schedule(traces)}


def _suite_progress_schedule(
    records: Mapping[str, list[dict]], task: str
) -> dict[str, Any]:
    del task  # one schedule for every task of the suite
    runs = [record for task_runs in records.values() for record in task_runs]
    return {"schedule": baselines.progress_median_schedule(runs)}


_ENTRIES: Final = (
    Method(
        "pilot",
        "the bundle, deterministic actions",
        controller=_pilot,
        uses_pilot=True,
    ),
    Method(
        "constant",
        "Adam at --init-lr, the default a user takes",
        controller=lambda ctx: baselines.ConstantLR(ctx.lr),
    ),
    Method(
        "tuned_constant",
        "constant Adam, lr tuned per task on validation loss (5x the compute)",
        controller=lambda ctx: baselines.ConstantLR(ctx.lr),
        tuned_as="constant",
    ),
    Method(
        "tuned_cosine",
        "warmup + cosine decay, peak lr tuned per task (5x the compute)",
        controller=lambda ctx: baselines.WarmupCosine(ctx.lr),
        tuned_as="cosine",
    ),
    Method(
        "tuned_onecycle",
        "OneCycleLR with beta1 cycling, max lr tuned per task (5x the compute)",
        controller=lambda ctx: baselines.OneCycle(ctx.lr),
        tuned_as="onecycle",
    ),
    Method(
        "plateau",
        "ReduceLROnPlateau on validation loss",
        controller=lambda ctx: baselines.Plateau(ctx.lr),
    ),
    Method(
        "autoclip",
        "clipping at the 10th percentile of past gradient norms",
        controller=lambda ctx: baselines.AutoClip(ctx.lr),
    ),
    Method(
        "hypergradient",
        "Adam-HD: the lr follows its hypergradient",
        controller=lambda ctx: baselines.HypergradientAdam(ctx.lr),
    ),
    Method(
        "schedulefree",
        "Schedule-Free AdamW with its library defaults",
        optimizer=_schedule_free,
        library="schedulefree",
        extra="baselines",
    ),
    Method(
        "prodigy",
        "Prodigy with its library defaults",
        optimizer=_prodigy,
        library="prodigyopt",
        extra="baselines",
    ),
    Method(
        "replay",
        "control: the pilot's median schedule on the task, replayed open-loop",
        controller=lambda ctx: baselines.ReplayControl(ctx.inputs["schedule"]),
        reads="pilot",
        inputs=_task_median_schedule,
        uses_pilot=True,
    ),
    Method(
        "replay_suite",
        "control: one schedule by progress, the median of the pilot's schedules on "
        "every task of the suite, replayed open-loop on each",
        controller=lambda ctx: baselines.ProgressReplay(ctx.inputs["schedule"]),
        reads="pilot",
        inputs=_suite_progress_schedule,
        uses_pilot=True,
    ),
    Method(
        "random",
        "control: uniform random actions",
        controller=_random,
        uses_pilot=True,
        per_seed=True,
    ),
    Method(
        "blind",
        "control: the pilot with every feature but progress held at its mean",
        controller=lambda ctx: baselines.BlindControl(ctx.bundle),
        uses_pilot=True,
    ),
)

METHODS: Final[dict[str, Method]] = {m.name: m for m in _ENTRIES}
"""Every method by name, in report order."""

TUNED: Final[dict[str, str]] = {m.name: m.tuned_as for m in _ENTRIES if m.tuned_as}
"""Tuned method -> the name its grid jobs carry (`tuned_cosine` -> `cosine@3e-4`)."""


def available_methods() -> list[str]:
    """Every method whose library is installed, in report order."""
    return [name for name, method in METHODS.items() if method.available]


def methods_help() -> str:
    """One line per method, for `--help`."""
    lines = []
    for method in METHODS.values():
        needs = f" (pip install 'hyperpilot[{method.extra}]')" if method.extra else ""
        lines.append(f"{method.name}: {method.help}{needs}")
    return "; ".join(lines)


def method_of_run(run: str) -> tuple[Method, float | None]:
    """The method of a job's run name, and its grid lr (`cosine@3e-4` -> tuned)."""
    base, sep, lr = run.partition("@")
    if not sep:
        return METHODS[base], None
    for method in METHODS.values():
        if method.tuned_as == base:
            return method, float(lr)
    raise KeyError(f"no tuned method runs grid jobs named {base!r}")
