"""The `hyperpilot` command: one entry point with subcommands, like `git`.

Each command parses its flags, calls one workflow (`training`, `evaluation`,
`bench`, `quality`, `ablations`) and prints; the workflows never see argv, and
nothing imports this module. Process-wide torch settings are set here only.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from hyperpilot import ablations, evaluation, quality, report, training
from hyperpilot import bench as benchmarks
from hyperpilot._version import __version__
from hyperpilot.agents.methods import METHODS, methods_help
from hyperpilot.bundle import describe_bundle, load_bundle
from hyperpilot.config import load_config
from hyperpilot.envs.ray_vec_env import RAY_MISSING
from hyperpilot.ray_backend import RayOptions
from hyperpilot.runtime import UserError, configure_process


# ---------------------------------------------------------------- shared flags
def add_backend_flags(
    parser: argparse.ArgumentParser, workers_help: str
) -> argparse._ArgumentGroup:
    """`--backend`, `--workers` and `--ray-address`: where the work runs.

    Returns:
        The argument group, for command-specific Ray flags.
    """
    group = parser.add_argument_group(
        "scale out with Ray (pip install 'hyperpilot[ray]')"
    )
    group.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray actors or tasks",
    )
    group.add_argument("--workers", type=int, metavar="W", help=workers_help)
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join the Ray cluster at ADDR (HEAD:6379); default: start a local Ray",
    )
    return group


def ray_options(
    args: argparse.Namespace, ray_only: Sequence[str] = ()
) -> RayOptions | None:
    """The Ray options the flags ask for (None for `--backend local`).

    Args:
        args: Parsed arguments with `backend`, `workers`, `ray_address`.
        ray_only: Further attribute names that only go with `--backend ray`.

    Raises:
        UserError: For Ray flags without `--backend ray`, Ray missing, or
            `--workers` below 1.
    """
    names = ("workers", "ray_address", *ray_only)
    given = [n for n in names if getattr(args, n, None) is not None]
    if args.backend != "ray":
        if given:
            flags = " and ".join("--" + n.replace("_", "-") for n in given)
            verb = "goes" if len(given) == 1 else "go"
            raise UserError(f"{flags} {verb} with --backend ray")
        return None
    if importlib.util.find_spec("ray") is None:
        raise UserError(RAY_MISSING)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    gpus = getattr(args, "gpus_per_worker", None) or 0.0
    return RayOptions(args.workers, gpus, args.ray_address)


def _command(name: str, argv: Sequence[str] | None) -> str:
    """The command line as a user would type it again, e.g. for command.txt."""
    words = name.split() + list(sys.argv[2:] if argv is None else argv)
    return shlex.join(["hyperpilot", *words])


# ----------------------------------------------------------------------- train
def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperpilot train",
        description="Meta-train a pilot with PPO on a distribution of inner training "
        "tasks. Writes runs/<run>/ with config.yaml, command.txt, TensorBoard logs, "
        "checkpoints/ and the deployable bundles pilot/ and pilot-best/.",
    )
    parser.add_argument(
        "--config",
        help="a YAML file, or the name of a shipped config (default, smoke, gpu); "
        "keys a file leaves out take their values from configs/train/default.yaml; "
        "default: default",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set ppo.n_steps=64 (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="overrides run.seed")
    parser.add_argument(
        "--total-timesteps", type=int, help="overrides run.total_timesteps"
    )
    parser.add_argument(
        "--device", help="where the inner runs go: auto, cpu, cuda (run.device)"
    )
    parser.add_argument(
        "--policy-device", help="where the PPO policy goes (run.policy_device)"
    )
    parser.add_argument(
        "--runs-root", type=Path, default=Path("runs"), help="parent of run folders"
    )
    parser.add_argument(
        "--run-name", help="run folder name (default <config>__s<seed>__<unix time>)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its newest checkpoint, with its own config",
    )
    parser.add_argument(
        "--init-from",
        metavar="BUNDLE",
        help="start the actor from a saved pilot bundle (fine-tuning)",
    )
    ray_flags = add_backend_flags(
        parser, "Ray actors hosting the inner runs (needed with --backend ray)"
    )
    ray_flags.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="G",
        help="GPUs each Ray actor reserves (default 0: CPU actors); the actor's "
        "buckets spread over its GPUs",
    )
    return parser


_TRAIN_FLAGS = (
    ("seed", "run.seed"),
    ("total_timesteps", "run.total_timesteps"),
    ("device", "run.device"),
    ("policy_device", "run.policy_device"),
)


def train(argv: Sequence[str] | None = None) -> int:
    """Meta-trains a pilot with PPO from a YAML config (or resumes a run)."""
    args = _train_parser().parse_args(argv)
    ray = ray_options(args, ray_only=("gpus_per_worker",))
    if ray is not None and ray.workers is None:
        raise UserError("--backend ray needs --workers W")
    overrides = list(args.set)
    overrides += [
        f"{key}={getattr(args, flag)}"
        for flag, key in _TRAIN_FLAGS
        if getattr(args, flag) is not None
    ]
    if args.resume is not None:
        if args.config or args.init_from or args.set:
            raise UserError(
                "--resume continues with the run's own config; drop --config, "
                "--set and --init-from"
            )
        run_dir = args.resume
        config = training.load_run_config(run_dir, overrides)
    else:
        config = load_config(args.config or "default", overrides)
        run_dir = training.default_run_dir(config, args.runs_root, args.run_name)
    configure_process(config.run.threads)
    result = training.run(
        config,
        run_dir,
        command=_command("train", argv),
        resume=args.resume is not None,
        init_from=args.init_from,
        ray=ray,
    )
    if result.worker_died is not None:
        again = shlex.join(
            ["hyperpilot", "train", "--resume", str(run_dir), *ray.flags()]
        )
        print(
            f"hyperpilot train: error: {result.worker_died}; checkpoint at step "
            f"{result.checkpoint.step} kept in {result.checkpoint.path}; resume "
            f"with: {again}",
            file=sys.stderr,
        )
        return 1
    if result.interrupted_by is not None:
        print(
            f"stopped at step {result.timesteps}; checkpoint saved in "
            f"{result.checkpoint.path}.\nresume with: hyperpilot train --resume "
            f"{run_dir}"
        )
        return 128 + result.interrupted_by
    print(f"done: {result.timesteps} steps; pilot: {run_dir / 'pilot'}")
    print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    print(f"run folder: {run_dir}")
    return 0


# --------------------------------------------------------------- export, info
def export(argv: Sequence[str] | None = None) -> int:
    """Writes a deployable pilot bundle from a run's checkpoint."""
    parser = argparse.ArgumentParser(
        prog="hyperpilot export",
        description="Turn a training checkpoint into a pilot bundle (pilot.json + "
        "actor.safetensors), e.g. from an interrupted run.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder of hyperpilot train")
    parser.add_argument(
        "--checkpoint", type=int, metavar="STEPS", help="checkpoint step (newest)"
    )
    parser.add_argument(
        "--out", type=Path, help="bundle folder (default RUN_DIR/pilot-step<STEPS>)"
    )
    args = parser.parse_args(argv)
    out, step = training.export(args.run_dir, args.checkpoint, args.out)
    print(f"wrote {out} (checkpoint at step {step})")
    return 0


def info(argv: Sequence[str] | None = None) -> int:
    """Prints what a pilot bundle holds."""
    parser = argparse.ArgumentParser(
        prog="hyperpilot info",
        description="Show a pilot bundle's features, action mode, K, training config "
        "and versions.",
    )
    parser.add_argument("bundle", help="a bundle folder, or a shipped pilot's name")
    args = parser.parse_args(argv)
    print(describe_bundle(load_bundle(args.bundle)))
    return 0


# -------------------------------------------------------------------- evaluate
def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperpilot evaluate",
        description="Run a saved pilot and the schedules a practitioner would use, "
        "plus controls, on the same task instances, data order and budget. Writes "
        "results.json, results.csv, plots/ and tensorboard/ to --out; finished jobs "
        "are reused when re-run with the same --out. Methods: " + methods_help(),
    )
    parser.add_argument(
        "--pilot", required=True, help="a bundle folder, or a shipped pilot's name"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--suite", help="configs/eval/<name>.yaml or a path (default: heldout)"
    )
    where.add_argument("--family", help="one task family, with its knobs in --kw")
    where.add_argument("--data", type=Path, help="your own .csv or .npz data file")
    parser.add_argument(
        "--kw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a knob of --family (repeatable), e.g. --kw width=32",
    )
    parser.add_argument("--target", help="the target column of --data")
    parser.add_argument(
        "--model", default="mlp:64x2", help="model for --data: mlp:WxD or linear"
    )
    parser.add_argument(
        "--loss",
        default="auto",
        choices=("auto", "ce", "mse"),
        help="loss for --data (auto: ce for few integer classes, else mse)",
    )
    parser.add_argument(
        "--seeds", type=int, help="run seeds 0..N-1 (default: the suite's, else 5)"
    )
    parser.add_argument(
        "--methods",
        help="comma-separated methods (default: all available; see above)",
    )
    parser.add_argument(
        "--init-lr", type=float, default=1e-3, help="lr every run starts from"
    )
    parser.add_argument(
        "--no-val",
        action="store_true",
        help="the pilot runs without validation features, as deployed without a "
        "val_fn (baselines are unaffected)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default runs/eval__<tasks>); one folder per pilot, "
        "init lr and --no-val",
    )
    parser.add_argument("--device", default="cpu", help="where the inner runs go")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs, CI)"
    )
    add_backend_flags(
        parser,
        "with --backend ray: jobs in flight at once (default: as many as Ray has CPUs)",
    )
    return parser


def evaluate(argv: Sequence[str] | None = None) -> int:
    """Evaluates a pilot beside practitioners' schedules on tasks it never saw."""
    args = _evaluate_parser().parse_args(argv)
    if args.backend == "ray" and args.device != "cpu":
        raise UserError("--backend ray runs evaluation jobs on CPUs; drop --device")
    ray = ray_options(args)
    configure_process()
    load_bundle(args.pilot)  # a bad pilot fails before any task is built
    choice = evaluation.resolve_tasks(
        suite=args.suite,
        family=args.family,
        knobs=dict(_key_value(kv) for kv in args.kw),
        data=args.data,
        target=args.target,
        model=args.model,
        loss=args.loss,
    )
    names = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    methods = evaluation.resolve_methods(names)
    missing = [m for m in METHODS.values() if not names and not m.available]
    if missing:
        extras = sorted({m.extra for m in missing if m.extra})
        print(
            f"note: {', '.join(m.name for m in missing)} left out: their libraries "
            f"are not installed (pip install 'hyperpilot[{','.join(extras)}]')"
        )
    seeds = choice.seeds if args.seeds is None else args.seeds
    out = args.out or Path("runs") / f"eval__{choice.name}"
    print(
        f"evaluating {args.pilot} on {len(choice.tasks)} task(s) x {seeds} seed(s): "
        f"{', '.join(methods)}\noutput folder: {out}",
        flush=True,
    )
    result = evaluation.run(
        args.pilot,
        choice.tasks,
        seeds,
        methods,
        out,
        init_lr=args.init_lr,
        device=args.device,
        progress=not args.no_progress,
        ray=ray,
        validation=not args.no_val,
    )
    print(report.table(result.summary))
    print(
        "tuned_* methods chose their lr from 5 values on validation loss: 5x the "
        "compute (inner steps column)."
    )
    for path in result.files:
        print(f"wrote {path}")
    print(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return 0


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


# ----------------------------------------------------------------------- bench
def _throughput_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperpilot bench throughput",
        description="Measure inner steps/s on an MLP 64-128-10 on digits (batch 128, "
        "K=10): a raw batched loop, a DummyVecEnv of N InnerTrainingEnv, and "
        "BatchedTrainingVecEnv; plus the share of PPO's wall time spent in the env. "
        "With --ops: operator calls per inner step of the env and the raw loop. "
        "With --backend ray: the local BatchedTrainingVecEnv against RayVecEnv.",
    )
    parser.add_argument("--n", default="1,8,64,256", help="comma-separated run counts")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time per measurement"
    )
    parser.add_argument(
        "--dummy-max-n",
        type=int,
        default=256,
        help="largest N for the (slow) DummyVecEnv arm",
    )
    parser.add_argument(
        "--ppo-timesteps",
        type=int,
        default=4096,
        help="PPO timesteps for the wall-time share (0 skips it)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=benchmarks.BENCHMARKS_MD,
        help="markdown file the table is appended to",
    )
    parser.add_argument("--device", default="cpu", help="device of the inner runs")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also measure BatchedTrainingVecEnv with torch.compile (slow to start)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="also measure BatchedTrainingVecEnv with each window replayed as a "
        "CUDA graph (CUDA only)",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="instead count operator calls per inner step of the env and of the "
        "raw loop (N=64, K=10, eager) with torch.profiler",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="ray: compare the local BatchedTrainingVecEnv with RayVecEnv instead",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="Ray actors of the ray arm (default 2)"
    )
    parser.add_argument(
        "--ray-address", metavar="ADDR", help="join this Ray cluster (default: local)"
    )
    return parser


def _throughput(argv: Sequence[str]) -> int:
    args = _throughput_parser().parse_args(argv)
    try:
        ns = [int(v) for v in args.n.split(",")]
    except ValueError:
        raise UserError(f"--n takes comma-separated integers, got {args.n!r}") from None
    command = _command("bench throughput", argv)
    if args.ops:
        benchmarks.operator_calls(device=args.device, out=args.out, command=command)
    elif args.backend == "ray":
        benchmarks.ray_throughput(
            ns,
            workers=args.workers,
            address=args.ray_address,
            seconds=args.seconds,
            device=args.device,
            out=args.out,
            command=command,
        )
    else:
        benchmarks.throughput(
            ns,
            seconds=args.seconds,
            dummy_max_n=args.dummy_max_n,
            ppo_timesteps=args.ppo_timesteps,
            device=args.device,
            compiled=args.compiled,
            captured=args.capture,
            out=args.out,
            command=command,
        )
    return 0


def _quality(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hyperpilot bench quality",
        description="Evaluate a pilot on the frozen heldout suite against every "
        "method, with validation features and without (as deployed without a "
        "val_fn), and append the results and the quality targets to "
        "docs/BENCHMARKS.md. Resumable: finished jobs are reused.",
    )
    parser.add_argument(
        "--pilot", default="default", help="bundle folder or shipped name"
    )
    parser.add_argument("--suite", default="heldout", help="evaluation suite")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task (>= 5)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench-quality"), help="job cache"
    )
    parser.add_argument(
        "--train-run",
        type=Path,
        help="the pilot's training run folder, to report meta-training wall time",
    )
    parser.add_argument(
        "--md", type=Path, default=benchmarks.BENCHMARKS_MD, help="results file"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    quality.run(
        args.pilot,
        suite=args.suite,
        seeds=args.seeds,
        out=args.out,
        train_run=args.train_run,
        md=args.md,
        progress=not args.no_progress,
        command=_command("bench quality", argv),
    )
    return 0


def _ablations(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hyperpilot bench ablations",
        description="Short meta-training arms (action mode, reward, discount, "
        "controlled set, K, validation features, task diversity), several seeds "
        "each, evaluated on the val split against constant Adam. Resumable.",
    )
    parser.add_argument(
        "--arms",
        default=",".join(ablations.ARMS),
        help=f"comma-separated, from: {', '.join(ablations.ARMS)}",
    )
    parser.add_argument(
        "--seeds", type=int, default=2, help="meta-training seeds per arm"
    )
    parser.add_argument(
        "--timesteps", type=int, default=40_000, help="meta-training steps per run"
    )
    parser.add_argument("--eval-seeds", type=int, default=3, help="task seeds")
    parser.add_argument(
        "--config", default="default", help="the training config the arms override"
    )
    parser.add_argument(
        "--split", default="val", help="the task split the pilots are judged on"
    )
    parser.add_argument(
        "--root", type=Path, default=Path("runs/ablations"), help="runs and caches"
    )
    parser.add_argument(
        "--md", type=Path, default=benchmarks.BENCHMARKS_MD, help="results file"
    )
    args = parser.parse_args(argv)
    result = ablations.run(
        [a.strip() for a in args.arms.split(",") if a.strip()],
        seeds=args.seeds,
        timesteps=args.timesteps,
        eval_seeds=args.eval_seeds,
        config=args.config,
        split=args.split,
        root=args.root,
        md=args.md,
        command=_command("bench ablations", argv),
    )
    if result.stopped is not None:
        print(f"stopped: {result.stopped.run_dir}; run the same command to resume")
        return (
            128 + (result.stopped.interrupted_by or 0)
            if result.stopped.interrupted_by
            else 1
        )
    return 0


BENCHMARKS = {"throughput": _throughput, "quality": _quality, "ablations": _ablations}


def bench(argv: Sequence[str] | None = None) -> int:
    """`hyperpilot bench throughput|quality|ablations ...`: runs a benchmark."""
    argv = list(argv or [])
    if not argv or argv[0] not in BENCHMARKS:
        raise UserError(f"choose a benchmark: {', '.join(BENCHMARKS)}")
    configure_process()
    return BENCHMARKS[argv[0]](argv[1:])


# ------------------------------------------------------------------------ main
COMMANDS = {
    "bench": bench,
    "evaluate": evaluate,
    "export": export,
    "info": info,
    "train": train,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches `hyperpilot <command> ...`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="hyperpilot",
        description="Learn to steer an optimizer's hyperparameters while a network trains.",
    )
    parser.add_argument(
        "--version", action="version", version=f"hyperpilot {__version__}"
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="the command's arguments"
    )
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv[:1])
    try:
        return COMMANDS[args.command](argv[1:])
    except UserError as error:
        print(f"hyperpilot {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
