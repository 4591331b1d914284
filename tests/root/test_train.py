"""`hyperpilot train` / `export` / `info` end to end on the smoke config."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hyperpilot.agents.checkpoints import list_checkpoints, load_newest
from hyperpilot.agents.pilot import Pilot
from hyperpilot.agents.ppo import PILOT_BEST, build_policy, bundle_score
from hyperpilot.cli import main
from hyperpilot.training import load_run_config

HYPERPILOT = str(Path(sys.executable).parent / "hyperpilot")
TAGS = [
    "inner/train_loss",
    "inner/val_loss",
    "inner/grad_norm",
    "hparams/lr",
    "hparams/beta1",
    "hparams/clip",
    "meta/final_val_loss",
    "meta/best_val_loss",
    "meta/diverged_frac",
    "meta/episode_reward",
    "meta/inner_steps_per_s",
    "eval/final_val_loss",
    "rollout/ep_rew_mean",
    "train/approx_kl",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert (
        main(
            [
                "train",
                "--config",
                "smoke",
                "--runs-root",
                str(root),
                "--run-name",
                "smoke",
            ]
        )
        == 0
    )
    return root / "smoke"


def test_run_folder_layout(smoke_run):
    for name in (
        "config.yaml",
        "command.txt",
        "progress.csv",
        "evaluations.npz",
        "pilot/pilot.json",
        "pilot/actor.safetensors",
        "pilot-best/pilot.json",
        "monitor/train.monitor.csv",
    ):
        assert (smoke_run / name).is_file(), name
    assert "--config smoke" in (smoke_run / "command.txt").read_text()
    assert [c.step for c in list_checkpoints(smoke_run)] == [640, 320]
    assert len(list((smoke_run / "eval").iterdir())) == 2  # one folder per evaluation


def test_tensorboard_has_our_tags_with_finite_values(smoke_run):
    events = EventAccumulator(str(smoke_run))
    events.Reload()
    for tag in TAGS:
        values = [e.value for e in events.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), tag
    assert "eval/schedules" in events.Tags()["images"]
    (evaluation, *_) = sorted((smoke_run / "eval").iterdir())
    run = EventAccumulator(str(next(evaluation.iterdir())))
    run.Reload()
    steps = [e.step for e in run.Scalars("hparams/lr")]
    assert steps == list(range(10, 101, 10))  # against the inner step
    assert "inner/val_loss" in run.Tags()["scalars"]


def test_pilot_bundle_acts_like_the_trained_policy(smoke_run):
    checkpoint = load_newest(smoke_run)
    policy = build_policy(load_run_config(smoke_run))
    policy.load_state_dict(checkpoint.policy_state())
    stats = checkpoint.obs_rms()
    pilot = Pilot.load(smoke_run / "pilot")
    obs = np.stack([policy.observation_space.sample() for _ in range(64)])
    normalized = np.clip(
        (obs - np.array(stats["mean"]))
        / np.sqrt(np.array(stats["var"]) + stats["epsilon"]),
        -stats["clip_obs"],
        stats["clip_obs"],
    ).astype(np.float32)
    expected = policy.predict(normalized, deterministic=True)[0]
    np.testing.assert_allclose(pilot.act(obs), expected, atol=1e-5)


def test_info_and_export(smoke_run, tmp_path, capsys):
    assert main(["info", str(smoke_run / "pilot")]) == 0
    out = capsys.readouterr().out
    assert "compound" in out and "every 10 inner steps" in out
    assert "training config:" in out and "total_timesteps: 640" in out
    assert (
        main(
            [
                "export",
                str(smoke_run),
                "--checkpoint",
                "320",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert Pilot.load(tmp_path / "p").decision_interval == 10
    assert main(["export", str(smoke_run), "--checkpoint", "7"]) == 2
    assert "320" in capsys.readouterr().err


def _evaluations(run_dir):
    with np.load(run_dir / "evaluations.npz") as saved:
        return {k: saved[k].tolist() for k in saved.files}


def test_resume_keeps_validation_state_and_schedules(smoke_run, tmp_path, capsys):
    run = Path(shutil.copytree(smoke_run, tmp_path / "run"))
    before = _evaluations(run)
    best = (run / PILOT_BEST / "pilot.json").read_bytes()
    assert before["timesteps"] == [320, 640]
    assert bundle_score(run / PILOT_BEST) == min(before["final_val_loss"])

    assert main(["train", "--resume", str(run), "--total-timesteps", "960"]) == 0
    path = list_checkpoints(smoke_run)[0].path.name
    assert (
        f"resuming from step 640 ({run / 'checkpoints' / path})"
        in (capsys.readouterr().out.splitlines()[0])
    )
    after = _evaluations(run)
    assert after["timesteps"] == [320, 640, 960]  # not 704: the schedules go on
    for key, values in before.items():
        assert after[key][:2] == values, key  # the history is kept
    assert [c.step for c in list_checkpoints(run)] == [960, 640]
    assert sorted(p.name[5:].lstrip("0") for p in (run / "eval").iterdir()) == [
        "320",
        "640",
        "960",
    ]
    # pilot-best is replaced only by a better score than the run's best so far
    if after["final_val_loss"][2] < min(before["final_val_loss"]):
        assert bundle_score(run / PILOT_BEST) == after["final_val_loss"][2]
    else:
        assert (run / PILOT_BEST / "pilot.json").read_bytes() == best


def test_same_seed_same_training(tmp_path):
    actors = []
    for name in ("a", "b"):
        args = [
            "train",
            "--config",
            "smoke",
            "--runs-root",
            str(tmp_path),
            "--run-name",
            name,
            "--total-timesteps",
            "128",
            "--set",
            "eval.freq=0",
        ]
        assert main(args) == 0
        actors.append(load_file(tmp_path / name / "pilot" / "actor.safetensors"))
    for key, value in actors[0].items():
        assert torch.equal(value, actors[1][key]), key


def test_init_from_a_bundle(smoke_run, tmp_path, capsys):
    args = [
        "train",
        "--config",
        "smoke",
        "--runs-root",
        str(tmp_path),
        "--total-timesteps",
        "64",
        "--set",
        "eval.freq=0",
    ]
    pilot = str(smoke_run / "pilot")
    assert main([*args, "--run-name", "ok", "--init-from", pilot]) == 0
    bad = [
        *args,
        "--run-name",
        "bad",
        "--init-from",
        pilot,
        "--set",
        "ppo.policy_kwargs.net_arch=[8]",
    ]
    assert main(bad) == 2
    assert "net_arch" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "ppo.n_step=8"], "n_steps"),
        (["--set", "env.split=heldout"], "heldout"),
        (["--config", "nope"], "smoke"),
    ],
    ids=["unknown-key", "heldout", "unknown-config"],
)
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, extra, message):
    args = ["train", "--runs-root", str(tmp_path)]
    if "--config" not in extra:
        args += ["--config", "smoke"]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def _start(tmp_path, name, *extra):
    args = [
        HYPERPILOT,
        "train",
        "--config",
        "smoke",
        "--runs-root",
        str(tmp_path),
        "--run-name",
        name,
        "--total-timesteps",
        "3200",
        "--set",
        "eval.freq=0",
        "--set",
        "logging.checkpoint_freq=256",
        *extra,
    ]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_checkpoint(run_dir, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if (run_dir / "checkpoints").is_dir() and list_checkpoints(run_dir):
            return
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def _last_logged_step(run_dir):
    lines = (run_dir / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("time/total_timesteps")
    return max(int(float(line.split(",")[column])) for line in lines[1:] if line)


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    process = _start(tmp_path, "int")
    _wait_for_checkpoint(tmp_path / "int", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    assert f"hyperpilot train --resume {tmp_path / 'int'}" in out
    step = list_checkpoints(tmp_path / "int")[0].step
    assert 0 < step < 3200


@pytest.mark.slow
def test_resume_after_sigkill_loses_at_most_one_interval(tmp_path):
    run_dir = tmp_path / "kill"
    process = _start(tmp_path, "kill")
    _wait_for_checkpoint(run_dir, process)
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    reached = _last_logged_step(run_dir)
    resumed_from = list_checkpoints(run_dir)[0].step
    rollout = 8 * 8  # n envs x n_steps of smoke.yaml
    assert reached - resumed_from <= 256 + rollout
    result = subprocess.run(
        [HYPERPILOT, "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert list_checkpoints(run_dir)[0].step >= 3200
    assert (run_dir / "pilot" / "pilot.json").is_file()
    assert (run_dir / f"progress_resume{resumed_from}.csv").is_file()
