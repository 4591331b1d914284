"""The `hyperpilot` command: one entry point with subcommands, like `git`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hyperpilot._version import __version__
from hyperpilot.runtime import configure_process


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


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


def check_backend(args: argparse.Namespace, ray_only: Sequence[str] = ()) -> None:
    """One-line errors for Ray flags without `--backend ray`, or Ray missing.

    Args:
        args: Parsed arguments with `backend`, `workers`, `ray_address`.
        ray_only: Further attribute names that only go with `--backend ray`.
    """
    names = ("workers", "ray_address", *ray_only)
    given = [n for n in names if getattr(args, n, None) is not None]
    if args.backend != "ray":
        if given:
            flags = " and ".join("--" + n.replace("_", "-") for n in given)
            verb = "goes" if len(given) == 1 else "go"
            raise UserError(f"{flags} {verb} with --backend ray")
        return
    import importlib.util

    from hyperpilot.envs.ray_vec_env import RAY_MISSING

    if importlib.util.find_spec("ray") is None:
        raise UserError(RAY_MISSING)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")


def connect_ray(address: str | None) -> bool:
    """Joins (or starts) Ray; True when this call started it (shut it down after)."""
    from hyperpilot import ray_backend

    try:
        return ray_backend.connect(address)
    except ConnectionError as error:
        raise UserError(str(error)) from None


def bench(argv: Sequence[str] | None = None) -> int:
    """`hyperpilot bench throughput|quality|ablations ...`: runs a benchmark."""
    from hyperpilot import ablations, quality
    from hyperpilot import bench as benchmarks

    suites = {
        "throughput": benchmarks.throughput,
        "quality": quality.quality,
        "ablations": ablations.ablations,
    }
    argv = list(argv or [])
    if not argv or argv[0] not in suites:
        raise UserError(f"choose a benchmark: {', '.join(suites)}")
    return suites[argv[0]](argv[1:])


def train(argv: Sequence[str] | None = None) -> int:
    """Meta-trains a pilot with PPO from a YAML config (or resumes a run)."""
    parser = argparse.ArgumentParser(
        prog="hyperpilot train",
        description="Meta-train a pilot with PPO on a distribution of inner training "
        "tasks. Writes runs/<run>/ with config.yaml, command.txt, TensorBoard logs, "
        "checkpoints/ and the deployable bundles pilot/ and pilot-best/.",
    )
    parser.add_argument(
        "--config",
        help="a YAML file, or the name of a shipped config (default, smoke, gpu); "
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
    args = parser.parse_args(argv)
    check_backend(args, ray_only=("gpus_per_worker",))
    if args.backend == "ray" and args.workers is None:
        raise UserError("--backend ray needs --workers W")
    from hyperpilot.config import ConfigError, dump_config, load_config

    overrides = list(args.set)
    for flag, key in (
        ("seed", "run.seed"),
        ("total_timesteps", "run.total_timesteps"),
        ("device", "run.device"),
        ("policy_device", "run.policy_device"),
    ):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    try:
        if args.resume is not None:
            if args.config or args.init_from or args.set:
                raise UserError(
                    "--resume continues with the run's own config; drop --config, "
                    "--set and --init-from"
                )
            run_dir = args.resume
            if not (run_dir / "config.yaml").is_file():
                raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
            config = load_config(run_dir / "config.yaml", overrides)
        else:
            config = load_config(args.config or "default", overrides)
            name = args.run_name or (
                f"{config.name}__s{config.run.seed}__{int(time.time())}"
            )
            run_dir = args.runs_root / name
            if run_dir.exists():
                raise UserError(
                    f"run folder {run_dir} exists; choose another --run-name"
                )
    except ConfigError as error:
        raise UserError(str(error)) from None
    configure_process(config.run.threads)

    from hyperpilot.agents.ppo import check_init_bundle
    from hyperpilot.agents.ppo import train as run_training
    from hyperpilot.bundle import BundleError

    init_from = None
    try:
        if args.init_from:
            init_from = check_init_bundle(config, args.init_from)
    except BundleError as error:
        raise UserError(str(error)) from None
    backend = None
    started_ray = False
    if args.backend == "ray":
        from hyperpilot.ray_backend import RayOptions, check_options

        backend = RayOptions(
            args.workers, args.gpus_per_worker or 0.0, args.ray_address
        )
        started_ray = connect_ray(args.ray_address)
        try:
            check_options(backend, config.env.buckets(), config.run.device)
        except ValueError as error:
            _shutdown_ray(started_ray)
            raise UserError(str(error)) from None
    command = shlex.join(["hyperpilot", "train", *(argv or sys.argv[2:])])
    if args.resume is None:
        run_dir.mkdir(parents=True)
        dump_config(config, run_dir / "config.yaml")
        (run_dir / "command.txt").write_text(command + "\n")
    else:
        command = (run_dir / "command.txt").read_text().strip()
    print(f"run folder: {run_dir}", flush=True)
    try:
        result = run_training(
            config,
            run_dir,
            command=command,
            resume=args.resume is not None,
            init_from=init_from,
            backend=backend,
        )
    finally:
        _shutdown_ray(started_ray)
    if result.worker_died is not None:
        again = shlex.join(
            ["hyperpilot", "train", "--resume", str(run_dir), *backend.flags()]
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


def _shutdown_ray(started: bool) -> None:
    if started:
        from hyperpilot import ray_backend

        ray_backend.shutdown()


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
    from hyperpilot.agents.checkpoints import find_checkpoint
    from hyperpilot.config import ConfigError, load_config

    try:
        config = load_config(args.run_dir / "config.yaml")
        checkpoint = find_checkpoint(args.run_dir, args.checkpoint)
    except (ConfigError, ValueError) as error:
        raise UserError(str(error)) from None
    from stable_baselines3 import PPO

    from hyperpilot.agents.ppo import export_pilot

    model = PPO.load(checkpoint.model, device="cpu")
    out = args.out or args.run_dir / f"pilot-step{checkpoint.step}"
    command_file = args.run_dir / "command.txt"
    command = command_file.read_text().strip() if command_file.exists() else ""
    export_pilot(model, config, out, command, checkpoint.obs_rms())
    print(f"wrote {out} (checkpoint at step {checkpoint.step})")
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
    from hyperpilot.bundle import BundleError, describe_bundle, load_bundle

    try:
        print(describe_bundle(load_bundle(args.bundle)))
    except BundleError as error:
        raise UserError(str(error)) from None
    return 0


def evaluate(argv: Sequence[str] | None = None) -> int:
    """Evaluates a pilot beside practitioners' schedules on tasks it never saw."""
    from hyperpilot.evaluation import METHODS

    parser = argparse.ArgumentParser(
        prog="hyperpilot evaluate",
        description="Run a saved pilot and the schedules a practitioner would use "
        "(constant Adam, tuned constant / cosine / OneCycle, plateau, AutoClip, "
        "hypergradient, Schedule-Free AdamW and Prodigy when installed) plus three "
        "controls (replay, random, blind) on the same task instances, data order and "
        "budget. Writes results.json, results.csv, plots/ and tensorboard/ to --out; "
        "finished jobs are reused when re-run with the same --out.",
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
        help=f"comma-separated subset of: {', '.join(METHODS)} (default: all available)",
    )
    parser.add_argument(
        "--init-lr", type=float, default=1e-3, help="lr every run starts from"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default runs/eval__<tasks>)"
    )
    parser.add_argument("--device", default="cpu", help="where the inner runs go")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs, CI)"
    )
    add_backend_flags(
        parser,
        "with --backend ray: jobs in flight at once (default: as many as Ray has CPUs)",
    )
    args = parser.parse_args(argv)
    check_backend(args)
    if args.backend == "ray" and args.device != "cpu":
        raise UserError("--backend ray runs evaluation jobs on CPUs; drop --device")
    configure_process()

    import yaml

    from hyperpilot import evaluation as ev
    from hyperpilot import report
    from hyperpilot.bundle import BundleError, load_bundle
    from hyperpilot.envs.tasks.splits import FamilySpec

    try:
        load_bundle(args.pilot)
        if args.family:
            knobs = dict(_key_value(kv) for kv in args.kw)
            spec = FamilySpec(args.family, knobs)
            tasks, seeds, name = [ev.EvalTask(spec.label, spec)], 5, args.family
        elif args.data:
            if not args.target and args.data.suffix != ".npz":
                raise UserError("--data needs --target COLUMN")
            knobs = {"path": str(args.data), "model": args.model, "loss": args.loss}
            if args.target:
                knobs["target"] = args.target
            spec = FamilySpec("data_file", knobs)
            tasks, seeds, name = [ev.EvalTask(args.data.name, spec)], 5, args.data.stem
        else:
            suite = args.suite or "heldout"
            tasks, seeds = ev.load_suite(suite)
            name = Path(suite).stem
        if args.kw and not args.family:
            raise UserError("--kw goes with --family")
        for task in tasks:
            task.spec.build()
        available = ev.available_methods()
        methods = available
        if args.methods:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            unknown = [m for m in methods if m not in ev.METHODS]
            missing = [m for m in methods if m not in available]
            if unknown:
                raise UserError(
                    f"unknown methods {unknown}; choose from {list(ev.METHODS)}"
                )
            if missing:
                raise UserError(
                    f"{missing} need their libraries: pip install 'hyperpilot[baselines]'"
                )
        if args.seeds is not None:
            seeds = args.seeds
        if seeds < 1 or not args.init_lr > 0:
            raise UserError("--seeds must be >= 1 and --init-lr > 0")
        out = args.out or Path("runs") / f"eval__{name}"
        print(
            f"evaluating {args.pilot} on {len(tasks)} task(s) x {seeds} seed(s): "
            f"{', '.join(methods)}\noutput folder: {out}",
            flush=True,
        )
        runner, started_ray = None, False
        if args.backend == "ray":
            from hyperpilot.ray_backend import job_runner

            runner = job_runner(args.workers)
            started_ray = connect_ray(args.ray_address)
        try:
            records = ev.evaluate(
                args.pilot,
                tasks,
                seeds,
                methods,
                out,
                args.init_lr,
                args.device,
                progress=not args.no_progress,
                runner=runner,
            )
        finally:
            _shutdown_ray(started_ray)
    except (BundleError, ValueError, yaml.YAMLError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    rows = report.method_rows(records, methods)
    summary = report.summarize(rows, methods)
    print(report.table(summary))
    print(
        "tuned_* methods chose their lr from 5 values on validation loss: 5x the "
        "compute (inner steps column)."
    )
    settings = {
        "pilot": args.pilot,
        "init_lr": args.init_lr,
        "seeds": seeds,
        "methods": methods,
        "tasks": [t.label for t in tasks],
    }
    for path in report.write_outputs(out, rows, summary, records, settings):
        print(f"wrote {path}")
    print(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return 0


def _key_value(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


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
