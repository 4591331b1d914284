"""The `hyperpilot` command: one entry point with subcommands, like `git`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hyperpilot._version import __version__


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def configure_process(threads: int = 1) -> None:
    """Process-wide torch settings for our own entry points (never set on import).

    One thread per engine process was fastest on 2-core CPUs (2 threads were 2-20x
    slower under load), and flushing denormals avoids a 1.7x slowdown from the tiny
    values aggressive learning rates produce.
    """
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def bench(argv: Sequence[str] | None = None) -> int:
    """`hyperpilot bench throughput ...`: runs a benchmark."""
    from hyperpilot import bench as benchmarks

    suites = {"throughput": benchmarks.throughput}
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
    args = parser.parse_args(argv)
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
                f"{config.run.name or Path(config.source).stem}"
                f"__s{config.run.seed}__{int(time.time())}"
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
    command = shlex.join(["hyperpilot", "train", *(argv or sys.argv[2:])])
    if args.resume is None:
        run_dir.mkdir(parents=True)
        dump_config(config, run_dir / "config.yaml")
        (run_dir / "command.txt").write_text(command + "\n")
    else:
        command = (run_dir / "command.txt").read_text().strip()
    print(f"run folder: {run_dir}", flush=True)
    result = run_training(
        config,
        run_dir,
        command=command,
        resume=args.resume is not None,
        init_from=init_from,
    )
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


COMMANDS = {
    "bench": bench,
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
