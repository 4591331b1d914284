"""Checkpoints: a full restore, nothing unpickled, broken ones skipped, kills survived."""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Payload

from hyperpilot.agents.checkpoints import (
    STATE,
    TENSORS,
    list_checkpoints,
    load_newest,
    restore,
    save_checkpoint,
)
from hyperpilot.agents.pilot import Pilot
from hyperpilot.agents.ppo import (
    PILOT_BEST,
    build_model,
    build_venv,
    bundle_score,
    recover_run_folder,
)
from hyperpilot.cli import main
from hyperpilot.config import load_config
from hyperpilot.runtime import KILL_AT, replace_directory

HYPERPILOT = str(Path(sys.executable).parent / "hyperpilot")
TINY = ["eval.freq=0", "logging.checkpoint_freq=64", "run.total_timesteps=128"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished smoke run of 128 steps with checkpoints at 64 and 128."""
    root = tmp_path_factory.mktemp("runs")
    sets = [x for s in TINY for x in ("--set", s)]
    args = ["train", "--config", "smoke", "--runs-root", str(root), "--run-name", "r"]
    assert main([*args, *sets]) == 0
    return root / "r"


@pytest.fixture
def run(run_folder, tmp_path):
    """A copy of `run_folder` to break."""
    return Path(shutil.copytree(run_folder, tmp_path / "run"))


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _rng_states():
    return (
        random.getstate(),
        np.random.get_state()[1].tolist(),
        torch.random.get_rng_state(),
    )


def test_a_checkpoint_restores_everything_a_run_learned(tmp_path):
    config = load_config("smoke", ["eval.freq=0"])
    trained = build_model(config, build_venv(config, tmp_path, "a"))
    trained.learn(128)  # two rollouts: optimizer moments, finished episodes
    before = _rng_states()
    validation = {"best": 0.5, "history": [(64, -1.0, 0.5)]}
    save_checkpoint(tmp_path, trained, keep=2, callbacks={"validation": validation})
    fresh = build_model(config, build_venv(config, tmp_path, "b"))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # as a new process would
    assert fresh.num_timesteps == 0 and _rng_states()[:2] != before[:2]

    loaded = load_newest(tmp_path)
    restore(fresh, loaded)
    assert loaded.step == fresh.num_timesteps == 128
    assert fresh._n_updates == trained._n_updates > 0
    assert list(fresh.ep_info_buffer) == list(trained.ep_info_buffer)
    assert len(fresh.ep_info_buffer) > 0
    for key, value in trained.policy.state_dict().items():
        assert torch.equal(fresh.policy.state_dict()[key], value), key
    ours, theirs = (m.policy.optimizer.state_dict() for m in (fresh, trained))
    assert ours["state"].keys() == theirs["state"].keys()
    for index, entries in theirs["state"].items():
        for key, value in entries.items():
            assert torch.equal(ours["state"][index][key], value), (index, key)
    assert json.dumps(ours["param_groups"]) == json.dumps(theirs["param_groups"])
    for name in ("obs_rms", "ret_rms"):
        ours, theirs = (
            getattr(m.get_vec_normalize_env(), name) for m in (fresh, trained)
        )
        np.testing.assert_array_equal(ours.mean, theirs.mean)
        np.testing.assert_array_equal(ours.var, theirs.var)
        assert ours.count == theirs.count
    after = _rng_states()
    assert after[:2] == before[:2] and torch.equal(after[2], before[2])
    assert loaded.callbacks == {"validation": validation}


def test_a_checkpoint_holds_no_pickle(run_folder):
    (checkpoint, *_) = list_checkpoints(run_folder)
    assert sorted(p.name for p in checkpoint.path.iterdir()) == [STATE, TENSORS]
    json.loads((checkpoint.path / STATE).read_text())
    assert (checkpoint.path / TENSORS).read_bytes()[8:9] == b"{"  # a JSON header


def _plant(path, marker, writer):
    if writer == "torch.save":
        torch.save({"policy/action_net.weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"num_timesteps": Payload(marker)}))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("name", [TENSORS, STATE])
def test_a_payload_in_a_checkpoint_is_refused(run, tmp_path, capsys, name, writer):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload is live
    assert control.exists()
    marker = tmp_path / "pwned"
    for checkpoint in list_checkpoints(run):
        _plant(checkpoint.path / name, marker, writer)
    for command in (["export", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2
        error = _one_line_error(capsys)
        assert f"no checkpoint of {run} loads" in error and name in error
    assert not marker.exists()


def test_checkpoints_of_the_pickle_format_are_refused(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    for checkpoint in list_checkpoints(run):
        for name in (STATE, TENSORS):
            (checkpoint.path / name).unlink()
        _plant(checkpoint.path / "model.zip", marker, "pickle.dump")
        _plant(checkpoint.path / "vecnormalize.pkl", marker, "pickle.dump")
        (checkpoint.path / "meta.json").write_text(json.dumps({"step": 64}))
    for command in (["export", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2
        error = _one_line_error(capsys)
        assert "cannot be loaded safely" in error and "start a new run" in error
    assert not marker.exists()
    assert Pilot.load(run / "pilot").decision_interval == 10  # bundles still load


def test_resume_before_the_first_checkpoint_says_nothing_to_resume(run, capsys):
    shutil.rmtree(run / "checkpoints")
    assert main(["train", "--resume", str(run)]) == 2
    error = _one_line_error(capsys)
    command = (run / "command.txt").read_text().strip()
    assert "nothing to resume" in error and error.endswith(command)


@pytest.mark.parametrize("name", [TENSORS, STATE])
def test_a_broken_newest_checkpoint_falls_back_to_the_previous(run, capsys, name):
    newest, previous = list_checkpoints(run)
    broken = newest.path / name
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    assert main(["export", str(run), "--out", str(run / "p")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("note: skipped a broken checkpoint") and name in out[0]
    assert out[1].endswith(f"(checkpoint at step {previous.step})")
    assert main(["export", str(run), "--checkpoint", str(newest.step)]) == 2
    assert name in _one_line_error(capsys)

    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "note: skipped a broken checkpoint" in out
    assert f"resuming from step {previous.step} ({previous.path})" in out
    assert [c.step for c in list_checkpoints(run)] == [128, 64]
    load_newest(run)  # the broken one was replaced by a whole one


def test_replace_directory_killed_between_renames_is_put_back(tmp_path):
    target = tmp_path / PILOT_BEST
    target.mkdir()
    (target / "old").write_text("old")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "new").write_text("new")
    code = (
        "import sys; from pathlib import Path; "
        "from hyperpilot.runtime import replace_directory; "
        "replace_directory(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    env = {**os.environ, KILL_AT: f"replace-{PILOT_BEST}"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(staging), str(target)], env=env, timeout=60
    )
    assert result.returncode == -signal.SIGKILL
    assert not target.exists()  # the window: old aside, new not yet in
    assert recover_run_folder(tmp_path) == [str(target)]
    assert (target / "old").read_text() == "old"
    replace_directory(staging, target)  # without the hook it goes through
    assert (target / "new").read_text() == "new"


# ------------------------------------------------------------- fault test
FAULT = [
    "--total-timesteps",
    "384",
    *("--set", "eval.freq=128"),
    *("--set", "logging.checkpoint_freq=64"),
    *("--set", "logging.plots=false"),
]
EVALUATED = [128, 256, 384]


def _hyperpilot(*args, kill_at=None, timeout=180):
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at is not None:
        env[KILL_AT] = kill_at
    return subprocess.run(
        [HYPERPILOT, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _history(run_dir):
    path = run_dir / "evaluations.npz"
    if not path.exists():
        return []
    with np.load(path) as saved:
        return list(zip(*(saved[k].tolist() for k in ("timesteps", "final_val_loss"))))


# Each stage resumes the run the previous one killed, and is killed in turn: a kill
# point's count is per process. `None`: the resume that ends the stage finishes.
STAGES = [
    ("checkpoint-files:1", 64),  # step 128, in the checkpoint writer, after pilot-best
    ("validation:2", 64),  # step 256: evaluated, saved nowhere else yet
    ("rollout:2", 192),  # step 320, after the rollout's checkpoint
    ("replace-step_000000000384:2", 320),  # the final checkpoint's swap, old one aside
    ("replace-pilot", 384),  # inside the last bundle's writer
    (None, 384),
]


@pytest.mark.slow
def test_killed_anywhere_a_run_resumes_without_losing_anything(tmp_path):
    run_dir = tmp_path / "run"
    start = ["train", "--config", "smoke", "--runs-root", str(tmp_path)]
    start += ["--run-name", "run", *FAULT]
    # Killed before its first checkpoint: nothing to resume, start again.
    killed = _hyperpilot(*start, kill_at="checkpoint-files:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _hyperpilot("train", "--resume", str(run_dir))
    assert resumed.returncode == 2
    assert "nothing to resume" in resumed.stderr.strip().splitlines()[0]
    shutil.rmtree(run_dir)
    # Killed inside the bundle writer at the first evaluation (step 128).
    killed = _hyperpilot(*start, kill_at=f"replace-{PILOT_BEST}:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    said = []
    for kill_at, resumed_from in STAGES:
        best = bundle_score(run_dir / PILOT_BEST)
        history = _history(run_dir)
        resumed = _hyperpilot("train", "--resume", str(run_dir), kill_at=kill_at)
        said.append(resumed.stdout)
        stage = f"resume killed at {kill_at}: {resumed.stderr}"
        assert f"resuming from step {resumed_from} " in resumed.stdout, stage
        assert resumed.returncode == (0 if kill_at is None else -signal.SIGKILL), stage
        after = bundle_score(run_dir / PILOT_BEST)
        assert best is None or (after is not None and after <= best), stage
        kept = [h for h in history if h[0] <= resumed_from]
        assert _history(run_dir)[: len(kept)] == kept, stage
    # the checkpoint set aside at 384 (and only that) was put back
    assert [i for i, out in enumerate(said) if "note: put back" in out] == [4]
    assert list_checkpoints(run_dir)[0].step == 384
    assert not list((run_dir / "checkpoints").glob(".*"))  # no leftovers
    assert (run_dir / "pilot" / "pilot.json").is_file()
    assert [step for step, _ in _history(run_dir)] == EVALUATED
    assert bundle_score(run_dir / PILOT_BEST) <= min(s for _, s in _history(run_dir))
