"""`hyperpilot evaluate`: a pilot beside the schedules practitioners use, on new tasks.

Every (task, seed, run) is one independent *job*: one task instance (drawn from
the seed, so every method sees the same model init, data and minibatch order),
one method, one inner-step budget. Jobs are cached as JSON in the output folder as
they finish, so an interrupted evaluation resumes where it stopped, and `run_job`
is a plain function that a scale-out backend can call anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hyperpilot.agents import baselines
from hyperpilot.agents.controllers import Controller, PolicyController, run_episode
from hyperpilot.bundle import PolicyBundle, load_bundle
from hyperpilot.envs.engine import BatchedEngine, MinibatchOrder
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.base import TaskInstance
from hyperpilot.envs.tasks.splits import (
    CONFIGS_DIR,
    FamilySpec,
    load_split,
    parse_families,
)
from hyperpilot.runtime import atomic_write_text

TUNED = {
    "tuned_constant": "constant",
    "tuned_cosine": "cosine",
    "tuned_onecycle": "onecycle",
}
SCHEDULES: dict[str, Callable[[float], Controller]] = {
    "constant": baselines.ConstantLR,
    "cosine": baselines.WarmupCosine,
    "onecycle": baselines.OneCycle,
    "plateau": baselines.Plateau,
    "autoclip": baselines.AutoClip,
    "hypergradient": baselines.HypergradientAdam,
}
OPTIMIZERS = {"schedulefree": "schedulefree", "prodigy": "prodigyopt"}
METHODS = (
    "pilot",
    "constant",
    "tuned_constant",
    "tuned_cosine",
    "tuned_onecycle",
    "plateau",
    "autoclip",
    "hypergradient",
    "schedulefree",
    "prodigy",
    "replay",
    "random",
    "blind",
)


def available_methods() -> list[str]:
    """All methods, less the optional optimizers whose library is not installed."""
    return [
        m
        for m in METHODS
        if m not in OPTIMIZERS or importlib.util.find_spec(OPTIMIZERS[m]) is not None
    ]


@dataclass(frozen=True)
class EvalTask:
    """A task to evaluate on: a family with its knobs, and a readable label."""

    label: str
    spec: FamilySpec


@dataclass(frozen=True)
class Job:
    """One inner training run: `run` is a method (`pilot`) or a grid point (`cosine@3e-4`)."""

    task: EvalTask
    seed: int
    run: str

    @property
    def key(self) -> tuple[str, int, str]:
        """Identifies the job: (task label, seed, run)."""
        return (self.task.label, self.seed, self.run)

    def path(self, out: Path) -> Path:
        """Where the job's record is cached."""
        safe = "".join(
            c if c.isalnum() or c in "._-=@" else "_" for c in self.task.label
        )
        return out / "jobs" / safe / self.run / f"seed{self.seed}.json"


def load_suite(name_or_path: str | Path) -> tuple[list[EvalTask], int]:
    """Reads `configs/eval/<name>.yaml` (or a path): `split:` or `families:`, `seeds:`."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIGS_DIR / "eval" / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (CONFIGS_DIR / "eval").glob("*.yaml"))
        raise ValueError(
            f"evaluation suite {str(name_or_path)!r} not found; shipped: "
            f"{', '.join(shipped)}, or a path to a .yaml file"
        )
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"split", "families", "seeds"}
    if unknown or ("split" in data) == ("families" in data):
        raise ValueError(
            f"{path}: a suite has `split: NAME` or `families: [...]`, and `seeds: N`"
        )
    if "split" in data:
        specs = load_split(data["split"])
    else:
        specs = parse_families(data["families"], path)
    return [EvalTask(s.label, s) for s in specs], int(data.get("seeds", 5))


# ------------------------------------------------------------------- one job
def _controller(
    job: Job, bundle: PolicyBundle, init_lr: float, replay: dict | None
) -> Controller:
    method, _, grid_lr = job.run.partition("@")
    if method == "pilot":
        return PolicyController(bundle.act, bundle.controlled, bundle.action_mode)
    if method == "random":
        return baselines.RandomControl(bundle.controlled, bundle.action_mode, job.seed)
    if method == "blind":
        return baselines.BlindControl(bundle)
    if method == "replay":
        if replay is None:
            raise ValueError("replay needs the pilot's schedule on this task")
        return baselines.ReplayControl(replay)
    return SCHEDULES[method](float(grid_lr) if grid_lr else init_lr)


def run_job(
    job: Job,
    bundle: PolicyBundle,
    init_lr: float,
    device: str = "cpu",
    replay: dict | None = None,
) -> dict[str, Any]:
    """Runs one job and returns its record (curves per decision, final metrics)."""
    instance = job.task.spec.build().sample(np.random.default_rng(job.seed))
    # every job runs with the pilot's K, action mode and controlled set
    settings = dataclasses.replace(bundle.settings(), device=device)
    if job.run in OPTIMIZERS:
        return _run_library_optimizer(job, instance, settings)
    engine = BatchedEngine(1, settings)
    episode = Episode(instance, init_lr, 0.9, bundle.default_clip, True)
    engine.start([0], [episode])
    record = _empty_record(job, instance)
    record["initial_val_loss"] = float(engine.first_val[0])
    ended = {"diverged": False}

    def on_decision(state, transition) -> None:
        _append(
            record,
            int(state.step[0]),
            transition.train_loss[0],
            transition.val_loss[0],
            transition.hparams,
            0,
        )
        ended["diverged"] |= bool(transition.terminated[0])

    run_episode(engine, _controller(job, bundle, init_lr, replay), on_decision)
    accuracy = engine.accuracy("test")
    return _finish(
        record,
        test_loss=float(engine.evaluate("test")[0]),
        test_accuracy=None if accuracy is None else float(accuracy[0]),
        diverged=ended["diverged"],
    )


def _empty_record(job: Job, instance: TaskInstance) -> dict[str, Any]:
    return {
        "task": job.task.label,
        "seed": job.seed,
        "run": job.run,
        "horizon": instance.horizon,
        **{k: [] for k in ("steps", "train_loss", "val_loss", "lr", "beta1", "clip")},
    }


def _append(
    record: dict, step: int, train: Any, val: Any, hparams: Any, i: int
) -> None:
    record["steps"].append(step)
    record["train_loss"].append(float(train))
    record["val_loss"].append(float(val))
    for key in ("lr", "beta1", "clip"):
        record[key].append(float(getattr(hparams, key)[i]))


def _finish(record: dict, **final: Any) -> dict[str, Any]:
    vals = [v for v in record["val_loss"] if math.isfinite(v)]
    record.update(final)
    record["best_val_loss"] = min(vals) if vals else math.inf
    record["final_val_loss"] = (
        record["val_loss"][-1] if record["val_loss"] else math.inf
    )
    record["inner_steps"] = record["steps"][-1] if record["steps"] else 0
    return record


def _run_library_optimizer(
    job: Job, instance: TaskInstance, settings: EnvSettings
) -> dict[str, Any]:
    """Schedule-Free AdamW or Prodigy with their library defaults, in a plain loop.

    Same instance, minibatch order, budget and divergence rule as the engine.
    """
    model = copy.deepcopy(instance.model)
    if job.run == "schedulefree":
        import schedulefree

        optimizer = schedulefree.AdamWScheduleFree(model.parameters())
    else:
        import prodigyopt

        optimizer = prodigyopt.Prodigy(model.parameters())
    order = MinibatchOrder(1, len(instance.x_train), instance.batch_size, "cpu")
    order.restart(0, instance.data_seed)
    record = _empty_record(job, instance)
    k = settings.decision_interval
    steps = math.ceil(instance.horizon / k) * k
    first, window, diverged = math.nan, [], False

    def evaluate(split: str) -> float:
        if hasattr(optimizer, "eval"):
            optimizer.eval()  # Schedule-Free evaluates at its averaged weights
        with torch.no_grad():
            x, y = getattr(instance, f"x_{split}"), getattr(instance, f"y_{split}")
            value = float(instance.loss(model(x), y))
        if hasattr(optimizer, "train"):
            optimizer.train()
        return value

    record["initial_val_loss"] = evaluate("val")
    for step in range(steps):
        index = order.next()[0]
        loss = instance.loss(model(instance.x_train[index]), instance.y_train[index])
        value = float(loss.detach())
        first = value if math.isnan(first) else first
        if not math.isfinite(value) or value > settings.divergence_factor * first:
            diverged = True
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window.append(value)
        if (step + 1) % k == 0:
            group = optimizer.param_groups[0]
            record["steps"].append(step + 1)
            record["train_loss"].append(float(np.mean(window)))
            record["val_loss"].append(evaluate("val"))
            record["lr"].append(float(group["lr"]) * float(group.get("d", 1.0)))
            record["beta1"].append(float(group["betas"][0]))
            record["clip"].append(math.inf)
            window = []
    if hasattr(optimizer, "eval"):
        optimizer.eval()
    with torch.no_grad():
        output = model(instance.x_test)
        test_loss = float(instance.loss(output, instance.y_test))
        accuracy = (
            None
            if instance.accuracy is None
            else float(instance.accuracy(output, instance.y_test))
        )
    return _finish(
        record, test_loss=test_loss, test_accuracy=accuracy, diverged=diverged
    )


# ------------------------------------------------------------ the whole run
def plan(methods: Sequence[str], tasks: Sequence[EvalTask], seeds: int) -> list[Job]:
    """The jobs `methods` need, pilot first (replay depends on it), replay last."""
    runs: list[str] = []
    for method in methods:
        if method in TUNED:
            base = TUNED[method]
            runs += [f"{base}@{lr:g}" for lr in baselines.TUNING_GRID]
        elif method not in ("replay",):
            runs.append(method)
    if "replay" in methods and "pilot" not in runs:
        runs.insert(0, "pilot")
    runs = sorted(dict.fromkeys(runs), key=lambda r: r != "pilot")
    if "replay" in methods:
        runs.append("replay")
    return [
        Job(task, seed, run) for run in runs for task in tasks for seed in range(seeds)
    ]


def load_record(path: Path) -> dict[str, Any] | None:
    """A cached job record, or None."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def save_record(path: Path, record: dict[str, Any]) -> None:
    """Writes a job record atomically (temp file, then rename)."""
    atomic_write_text(path, json.dumps(record))


@dataclass
class JobComputer:
    """Computes one job and caches its record: what a `runner` calls per job.

    A local runner calls it (`compute(job)`); a scale-out runner may call its two
    halves apart: `run_job(**compute.arguments(job))` anywhere, then
    `compute.finish(job, record)` here, which caches the record as a local run does.
    """

    bundle: PolicyBundle
    init_lr: float
    device: str
    out: Path
    records: dict[tuple, dict]
    """Records finished so far (the replay control reads the pilot's)."""

    def arguments(self, job: Job) -> dict[str, Any]:
        """The keyword arguments of `run_job` for `job`."""
        replay = None
        if job.run == "replay":
            pilot_runs = [
                r
                for (task, _, run), r in self.records.items()
                if run == "pilot" and task == job.task.label
            ]
            replay = baselines.median_schedule(
                [{k: r[k] for k in ("lr", "beta1", "clip")} for r in pilot_runs]
            )
        return {
            "job": job,
            "bundle": self.bundle,
            "init_lr": self.init_lr,
            "device": self.device,
            "replay": replay,
        }

    def finish(self, job: Job, record: dict[str, Any]) -> dict[str, Any]:
        """Caches `record` in the output folder and returns it."""
        save_record(job.path(self.out), record)
        return record

    def __call__(self, job: Job) -> dict[str, Any]:
        """Runs `job` here and caches its record."""
        return self.finish(job, run_job(**self.arguments(job)))


def evaluate(
    bundle_ref: str,
    tasks: Sequence[EvalTask],
    seeds: int,
    methods: Sequence[str],
    out: Path,
    init_lr: float = 1e-3,
    device: str = "cpu",
    progress: bool = True,
    runner: Callable[..., list[dict]] | None = None,
) -> list[dict[str, Any]]:
    """Runs (or reuses) every job and returns all records.

    Args:
        bundle_ref: The pilot: a bundle folder or a shipped name.
        tasks: The tasks.
        seeds: Seeds 0..seeds-1 per task.
        methods: Names from `METHODS`.
        out: The output folder; cached jobs there are reused.
        init_lr: Every run starts from this lr (beta1 0.9, the bundle's clip).
        device: Where the inner runs go.
        progress: Show a progress bar.
        runner: `runner(jobs, compute, progress=...)` maps the pending jobs to
            records, calling the `JobComputer` `compute` per job (default: one
            after another here; `hyperpilot.ray_backend.job_runner` fans out).
    """
    bundle = load_bundle(bundle_ref)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_evaluation(out, bundle_ref, bundle, init_lr)
    jobs = plan(methods, tasks, seeds)
    records: dict[tuple, dict] = {}
    for job in jobs:
        cached = load_record(job.path(out))
        if cached is not None:
            records[job.key] = cached
    pending = [job for job in jobs if job.key not in records]
    first = [job for job in pending if job.run != "replay"]
    replays = [job for job in pending if job.run == "replay"]

    compute = JobComputer(bundle, init_lr, device, out, records)
    run_all = runner or _run_here
    for batch in (first, replays):
        if batch:
            for job, record in zip(batch, run_all(batch, compute, progress=progress)):
                records[job.key] = record
    return [records[job.key] for job in jobs]


def _run_here(
    jobs: list[Job], compute: Callable[[Job], dict], progress: bool = True
) -> list[dict]:
    from tqdm import tqdm

    return [
        compute(job)
        for job in tqdm(jobs, disable=not progress, desc="jobs", unit="job")
    ]


def _check_same_evaluation(
    out: Path, bundle_ref: str, bundle: PolicyBundle, init_lr: float
) -> None:
    """Refuses to mix cached jobs of another pilot or start lr into this folder."""
    identity = {
        "pilot": str(bundle_ref),
        "created": bundle.meta.get("created"),
        "init_lr": init_lr,
    }
    path = out / "evaluation.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != identity:
            raise ValueError(
                f"{out} holds jobs of another evaluation ({previous}); choose another --out"
            )
    else:
        path.write_text(json.dumps(identity))


def task_records(records: Sequence[dict]) -> dict[str, dict[str, list[dict]]]:
    """Records grouped as `[task][run] -> list over seeds`."""
    grouped: dict[str, dict[str, list[dict]]] = {}
    for record in records:
        grouped.setdefault(record["task"], {}).setdefault(record["run"], []).append(
            record
        )
    return grouped
