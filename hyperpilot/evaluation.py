"""`hyperpilot evaluate`: a pilot beside the schedules practitioners use, on new tasks.

Every (task, seed, run) is one independent *job*: one task instance (drawn from
the seed, so every method sees the same model init, data and minibatch order),
one method, one inner-step budget. Jobs are cached as JSON in the output folder as
they finish, so an interrupted evaluation resumes where it stopped, and `run_job`
is a plain function that a scale-out backend can call anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from hyperpilot import ray_backend, report
from hyperpilot.agents import baselines
from hyperpilot.agents.controllers import Controller, HoldValues, run_episode
from hyperpilot.agents.methods import (
    METHODS,
    MethodContext,
    available_methods,
    method_of_run,
)
from hyperpilot.bundle import PolicyBundle, load_bundle
from hyperpilot.envs.actions import LR_RANGE
from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.tasks.base import TaskInstance
from hyperpilot.envs.tasks.splits import (
    CONFIGS_DIR,
    FamilySpec,
    load_split,
    parse_families,
)
from hyperpilot.envs.torch_run import TorchOptimizerRun
from hyperpilot.runtime import UserError, atomic_write_text, make_folder


@dataclass(frozen=True)
class EvalTask:
    """A task to evaluate on: a family with its knobs, and a readable label."""

    label: str
    spec: FamilySpec


@dataclass(frozen=True)
class Job:
    """One inner training run on one task instance.

    `run` is a method (`pilot`) or a tuned method's grid point (`cosine@3e-4`).
    `variant` tells apart the runs of methods that use the pilot: the pilot's
    fingerprint, plus `-noval` when it runs without validation features; it is
    empty for every other method, whose runs serve any pilot.
    """

    task: EvalTask
    seed: int
    run: str
    variant: str = ""

    @property
    def key(self) -> tuple[str, int, str, str]:
        """Identifies the job: (task label, seed, run, variant)."""
        return (self.task.label, self.seed, self.run, self.variant)

    def path(self, out: Path) -> Path:
        """Where the job's record is cached."""
        safe = "".join(
            c if c.isalnum() or c in "._-=@" else "_" for c in self.task.label
        )
        folder = out / "jobs" / safe / self.run
        if self.variant:
            folder = folder / self.variant
        return folder / f"seed{self.seed}.json"


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
def run_jobs(
    jobs: Sequence[Job],
    bundle: PolicyBundle,
    init_lr: float,
    device: str = "cpu",
    inputs: dict[str, Any] | None = None,
    validation: bool = True,
) -> list[dict[str, Any]]:
    """Runs jobs of one task and run (their seeds) side by side; one record each.

    The jobs' instances share the task's shapes, so they go into one engine as N
    independent runs (a run's trajectory does not depend on the others); an
    optimizer that replaces Adam runs one job at a time. Methods that use the
    pilot start from the bundle's default clip; the others run unclipped, so
    their results do not depend on the pilot.

    Args:
        jobs: Jobs that differ only in their seed (see `group_jobs`).
        bundle: The pilot under evaluation; every run uses its K, action mode and
            controlled set.
        init_lr: The lr every run starts from (a grid point replaces it).
        device: Where the inner runs go.
        inputs: What the method derived from other methods' records (replay).
        validation: Whether the pilot's features include the validation loss.
    """
    method, grid_lr = method_of_run(jobs[0].run)
    lr = init_lr if grid_lr is None else grid_lr
    family = jobs[0].task.spec.build()
    instances = [family.sample(np.random.default_rng(job.seed)) for job in jobs]
    settings = dataclasses.replace(bundle.settings(), device=device)
    context = MethodContext(lr, bundle, jobs[0].seed, inputs or {})
    if method.optimizer is not None:
        assert len(jobs) == 1, "an optimizer that replaces Adam runs one job"
        runs: BatchedEngine | TorchOptimizerRun = TorchOptimizerRun(
            method.optimizer(context), settings
        )
        controller: Controller = HoldValues()
    else:
        assert method.controller is not None
        runs = BatchedEngine(len(jobs), settings)
        controller = method.controller(context)
    clip = bundle.default_clip if method.uses_pilot else math.inf
    episodes = [Episode(i, init_lr, 0.9, clip, validation) for i in instances]
    runs.start(list(range(len(jobs))), episodes)
    records = [_empty_record(job, i) for job, i in zip(jobs, instances)]
    first_val = runs.first_val.tolist()
    ended = [False] * len(jobs)
    diverged = [False] * len(jobs)

    def on_decision(state, transition) -> None:
        finished = (transition.terminated | transition.truncated).tolist()
        for run, record in enumerate(records):
            if ended[run]:
                continue  # the others go on; this run's record is complete
            _append(
                record,
                int(state.step[run]),
                transition.train_loss[run],
                transition.val_loss[run],
                transition.hparams,
                run,
            )
            ended[run] = finished[run]
            diverged[run] = bool(transition.terminated[run])

    run_episode(runs, controller, on_decision)
    test_loss = runs.evaluate("test").tolist()
    accuracy = runs.accuracy("test")
    for run, record in enumerate(records):
        record["initial_val_loss"] = first_val[run]
        _finish(
            record,
            test_loss=test_loss[run],
            test_accuracy=None if accuracy is None else float(accuracy[run]),
            diverged=diverged[run],
        )
    return records


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs in groups that `run_jobs` runs together, in their order.

    Jobs of one task, run and variant form a group (their seeds), unless the
    method runs one job at a time (`Method.batchable`).
    """
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        batchable = method_of_run(job.run)[0].batchable
        key = (job.task.label, job.run, job.variant) if batchable else job.key
        groups.setdefault(key, []).append(job)
    return list(groups.values())


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


# ------------------------------------------------------------ the whole run
def plan(
    methods: Sequence[str], tasks: Sequence[EvalTask], seeds: int, variant: str = ""
) -> list[Job]:
    """The jobs `methods` need, in the order they can run.

    A tuned method expands into its grid points. Methods that read other methods'
    records (replay reads the pilot's) come last, and the methods they read first
    (added when not asked for). Jobs of methods that use the pilot get `variant`.
    """
    chosen = [METHODS[name] for name in methods]
    read = [m.reads for m in chosen if m.reads is not None]
    runs: list[str] = []
    for method in [METHODS[name] for name in read] + chosen:
        if method.reads is not None:
            continue
        if method.tuned_as is not None:
            runs += [f"{method.tuned_as}@{lr:g}" for lr in baselines.TUNING_GRID]
        else:
            runs.append(method.name)
    runs += [m.name for m in chosen if m.reads is not None]
    return [
        Job(task, seed, run, variant if method_of_run(run)[0].uses_pilot else "")
        for run in dict.fromkeys(runs)
        for task in tasks
        for seed in range(seeds)
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
    """Computes a group of jobs and caches their records: what a `runner` calls.

    A local runner calls it (`compute(group)`); a scale-out runner may call its two
    halves apart: `run_jobs(**compute.arguments(group))` anywhere, then
    `compute.finish(group, records)` here, which caches the records as a local
    run does.
    """

    bundle: PolicyBundle
    init_lr: float
    device: str
    out: Path
    records: dict[tuple, dict]
    """Records finished so far, by `Job.key` (the replay controls read the pilot's)."""
    validation: bool = True
    """Whether the pilot sees the validation loss."""

    def arguments(self, group: Sequence[Job]) -> dict[str, Any]:
        """The keyword arguments of `run_jobs` for `group` (see `group_jobs`)."""
        job = group[0]
        method, _ = method_of_run(job.run)
        inputs = None
        if method.reads is not None and method.inputs is not None:
            by_task: dict[str, list[dict]] = {}
            for (task, _, run, variant), record in self.records.items():
                if run == method.reads and variant == job.variant:
                    by_task.setdefault(task, []).append(record)
            inputs = method.inputs(by_task, job.task.label)
        return {
            "jobs": list(group),
            "bundle": self.bundle,
            "init_lr": self.init_lr,
            "device": self.device,
            "inputs": inputs,
            "validation": self.validation,
        }

    def finish(
        self, group: Sequence[Job], records: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Caches each job's record in the output folder and returns the records."""
        for job, record in zip(group, records):
            save_record(job.path(self.out), record)
        return list(records)

    def __call__(self, group: Sequence[Job]) -> list[dict[str, Any]]:
        """Runs `group` here and caches its records."""
        return self.finish(group, run_jobs(**self.arguments(group)))


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
    validation: bool = True,
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
        runner: `runner(groups, compute, progress=...)` maps the pending groups of
            jobs (`group_jobs`) to their records, calling the `JobComputer`
            `compute` per group (default: one after another here;
            `hyperpilot.ray_backend.job_runner` fans out).
        validation: Whether the pilot's features include the validation loss
            (False: as a pilot deployed without a `val_fn`).

    Raises:
        UserError: If `out` holds jobs of another evaluation.
    """
    bundle = load_bundle(bundle_ref)
    make_folder(out, "--out")
    _check_same_evaluation(out, bundle, init_lr)
    variant = bundle.fingerprint + ("" if validation else "-noval")
    jobs = plan(methods, tasks, seeds, variant)
    records: dict[tuple, dict] = {}
    for job in jobs:
        cached = load_record(job.path(out))
        if cached is not None:
            records[job.key] = cached
    pending = [job for job in jobs if job.key not in records]
    reads = [method_of_run(job.run)[0].reads is not None for job in pending]
    first = [job for job, later in zip(pending, reads) if not later]
    readers = [job for job, later in zip(pending, reads) if later]

    compute = JobComputer(bundle, init_lr, device, out, records, validation)
    run_all = runner or _run_here
    for stage in (first, readers):
        groups = group_jobs(stage)
        for group, done in zip(groups, run_all(groups, compute, progress=progress)):
            for job, record in zip(group, done):
                records[job.key] = record
    return [records[job.key] for job in jobs]


def _run_here(
    groups: list[list[Job]],
    compute: Callable[[list[Job]], list[dict]],
    progress: bool = True,
) -> list[list[dict]]:
    total = sum(len(group) for group in groups)
    results = []
    with tqdm(total=total, disable=not progress, desc="jobs", unit="job") as bar:
        for group in groups:
            results.append(compute(group))
            bar.update(len(group))
    return results


def _check_same_evaluation(out: Path, bundle: PolicyBundle, init_lr: float) -> None:
    """Refuses to mix cached jobs of another start lr or K into `out`.

    Every job depends on both; which pilot is evaluated (and whether it sees
    validation) is part of the paths of the jobs that use it, so one folder holds
    the baselines once for any number of pilots.
    """
    identity = {"init_lr": init_lr, "decision_interval": bundle.decision_interval}
    path = out / "evaluation.json"
    if path.exists():
        previous = json.loads(path.read_text())
        theirs = {key: previous.get(key) for key in identity}
        if theirs != identity:
            raise UserError(
                f"{out} holds jobs of another evaluation ({theirs}, not {identity}); "
                f"pass another --out, or delete {out} to start over"
            )
    else:
        atomic_write_text(path, json.dumps(identity))


# ------------------------------------------------------------- the workflow
@dataclass(frozen=True)
class TaskChoice:
    """What `resolve_tasks` found: the tasks, their default seed count, a name."""

    tasks: list[EvalTask]
    seeds: int
    name: str


def resolve_tasks(
    *,
    suite: str | None = None,
    family: str | None = None,
    knobs: dict[str, Any] | None = None,
    data: Path | None = None,
    target: str | None = None,
    model: str = "mlp:64x2",
    loss: str = "auto",
) -> TaskChoice:
    """The tasks of a suite (default `heldout`), of one family, or of a data file.

    Every task is built once here, so a bad name or knob fails before any job runs.

    Raises:
        UserError: For an unknown suite or family, a bad knob, or a bad data file.
    """
    try:
        if family is not None:
            spec = FamilySpec(family, dict(knobs or {}))
            choice = TaskChoice([EvalTask(spec.label, spec)], 5, family)
        elif data is not None:
            if target is None and data.suffix != ".npz":
                raise UserError("--data needs --target COLUMN")
            file_knobs = {"path": str(data), "model": model, "loss": loss}
            if target is not None:
                file_knobs["target"] = target
            spec = FamilySpec("data_file", file_knobs)
            choice = TaskChoice([EvalTask(data.name, spec)], 5, data.stem)
        else:
            if knobs:
                raise UserError("--kw goes with --family")
            tasks, seeds = load_suite(suite or "heldout")
            choice = TaskChoice(tasks, seeds, Path(suite or "heldout").stem)
        for task in choice.tasks:
            task.spec.build()
    except (ValueError, yaml.YAMLError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    return choice


def resolve_methods(names: Sequence[str] | None) -> list[str]:
    """The methods to run: `names` checked, or every available one.

    Raises:
        UserError: For an unknown method, or one whose library is missing.
    """
    if not names:
        return available_methods()
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    missing = [m for m in names if not METHODS[m].available]
    if missing:
        extras = sorted({METHODS[m].extra for m in missing if METHODS[m].extra})
        raise UserError(
            f"{missing} need their libraries: pip install 'hyperpilot[{','.join(extras)}]'"
        )
    return list(names)


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation: the job records, one row per run, the summary, files."""

    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    files: list[Path]


def run(
    pilot: str,
    tasks: Sequence[EvalTask],
    seeds: int,
    methods: Sequence[str],
    out: Path,
    *,
    init_lr: float = 1e-3,
    device: str = "cpu",
    progress: bool = True,
    ray: ray_backend.RayOptions | None = None,
    validation: bool = True,
    report_to: Path | None = None,
) -> Evaluation:
    """Evaluates `pilot` and `methods` on `tasks`, then writes the report to `out`.

    Args:
        pilot: A bundle folder or a shipped pilot's name.
        tasks: The tasks (see `resolve_tasks`).
        seeds: Seeds 0..seeds-1 per task.
        methods: Names from `METHODS` (see `resolve_methods`).
        out: The output folder: results.json / csv, plots/, tensorboard/, jobs/.
        init_lr: The lr every run starts from.
        device: Where the inner runs go (local backend).
        progress: Show a progress bar.
        ray: Run the jobs as Ray tasks (`workers` in flight at once).
        validation: Whether the pilot sees the validation loss (`--no-val`: as
            deployed without a `val_fn`).
        report_to: Where the report goes (default `out`; the jobs stay in `out`).

    Raises:
        UserError: For a bad pilot, seeds or lr, or an `out` of another evaluation.
    """
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if not LR_RANGE[0] <= init_lr <= LR_RANGE[1]:
        low, high = LR_RANGE
        raise UserError(f"--init-lr must be in [{low:g}, {high:g}], got {init_lr:g}")
    runner, started = None, False
    if ray is not None:
        runner = ray_backend.job_runner(ray.workers, run_jobs)
        started = ray_backend.connect(ray.address)
    try:
        records = evaluate(
            pilot,
            tasks,
            seeds,
            methods,
            out,
            init_lr,
            device,
            progress,
            runner,
            validation,
        )
    finally:
        if started:
            ray_backend.shutdown()
    rows = report.method_rows(records, methods)
    summary = report.summarize(rows, methods)
    settings = {
        "pilot": pilot,
        "init_lr": init_lr,
        "validation": validation,
        "seeds": seeds,
        "methods": list(methods),
        "tasks": [t.label for t in tasks],
    }
    files = report.write_outputs(report_to or out, rows, summary, records, settings)
    return Evaluation(records, rows, summary, files)
