"""The Ray backend: `RayVecEnv`, `train --backend ray`, `evaluate --backend ray`.

One local Ray (2 CPUs) serves the whole module; every env made here is closed, so
no actor holds a CPU that a later test waits for.
"""

import functools
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from helpers import (  # noqa: E402
    CONTRACT_CASES,
    check_matches_single_envs,
    check_ppo_learns,
    compare_vec_envs,
)

from hyperpilot.agents import callbacks  # noqa: E402
from hyperpilot.agents.checkpoints import (  # noqa: E402
    list_checkpoints,
    load_checkpoint,
)
from hyperpilot.cli import main  # noqa: E402
from hyperpilot.envs import BatchedTrainingVecEnv  # noqa: E402
from hyperpilot.envs.ray_vec_env import (  # noqa: E402
    RayVecEnv,
    WorkerDiedError,
    plan_shards,
    plan_workers,
    worker_devices,
)
from hyperpilot.envs.tasks.splits import FamilySpec  # noqa: E402
from hyperpilot.envs.vec_env import Group  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    # The in-process references run beside the actors: one torch thread each, as the
    # commands do (two threads on two busy cores were up to 20x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture
def make_ray_env():
    made = []

    def make(**kwargs):
        made.append(RayVecEnv(**kwargs))
        return made[-1]

    yield make
    for venv in made:
        venv.close()


def _groups(*sizes):
    return [Group(FamilySpec(f"f{i}"), n) for i, n in enumerate(sizes)]


def test_buckets_are_dealt_out_whole_or_cut_in_slot_order():
    assert plan_shards(_groups(6, 2, 2), 2) == [_groups(6), _groups(6, 2, 2)[1:]]
    cut = plan_shards(_groups(6, 2), 4)
    assert [[(g.spec.family, g.n) for g in shard] for shard in cut] == [
        [("f0", 2)],
        [("f0", 2)],
        [("f0", 2)],
        [("f1", 2)],
    ]
    assert [len(w) for w in plan_workers(_groups(3, 1), 2, devices=2)] == [2, 2]
    with pytest.raises(ValueError, match="--workers 5 is more than the 4 inner runs"):
        plan_workers(_groups(4), 5)
    assert worker_devices("auto", 0) == ["cpu"]
    assert worker_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="needs --gpus-per-worker >= 1"):
        worker_devices("cuda", 0)
    with pytest.raises(ValueError, match="needs device auto or cuda"):
        worker_devices("cpu", 1)


@CONTRACT_CASES
def test_ray_vec_env_matches_a_dummy_vec_env_of_single_envs(family, settings):
    check_matches_single_envs(
        functools.partial(RayVecEnv, workers=2), family, settings, steps=12
    )


def test_ray_vec_env_equals_the_local_one_with_cut_buckets(make_ray_env):
    kwargs = {
        "groups": [
            {"family": "quadratic_2d", "n": 3},
            {"family": "logreg_blobs", "n": 2, "horizon": 30},
        ],
        "init": {"lr": [1e-3, 1.0]},
        "device": "cpu",
        "dtype": "float64",
    }
    # three workers for two buckets: quadratic_2d is cut into 2 + 1 runs
    remote = make_ray_env(workers=3, cpus_per_worker=0.5, **kwargs)
    assert [[g.n for g in a] for a in remote.assignment] == [[2], [1], [2]]
    local = BatchedTrainingVecEnv(**kwargs)
    assert compare_vec_envs(remote, local, steps=20, n=5) >= 5
    assert remote.reset_infos == local.reset_infos


def test_ppo_learns_on_the_ray_vec_env(make_ray_env):
    check_ppo_learns(make_ray_env(family="quadratic_2d", n=8, device="cpu", workers=2))


def test_a_killed_worker_is_named_with_its_runs(make_ray_env):
    venv = make_ray_env(family="quadratic_2d", n=4, device="cpu", workers=2)
    venv.reset()
    actions = np.zeros((4, 3), np.float32)
    venv.step(actions)
    ray.kill(venv.actors[1])
    message = r"Ray worker 1 of 2 died \(it ran slots 2-3: quadratic_2d x2\)"
    with pytest.raises(WorkerDiedError, match=message):
        venv.step(actions)
    with pytest.raises(WorkerDiedError, match=message):
        venv.reset()


def _kill_a_worker_after_the_first_checkpoint(monkeypatch):
    """After the first checkpoint, one more step, then worker 0 dies."""
    period = callbacks.CheckpointCallback._on_period
    state = {"saved": False, "killed": False}

    def on_period(self):
        period(self)
        state["saved"] = True

    def on_step(self):
        if state["saved"] and not state["killed"]:
            ray.kill(self.training_env.unwrapped.actors[0])
            state["killed"] = True
        return True

    monkeypatch.setattr(callbacks.CheckpointCallback, "_on_period", on_period)
    monkeypatch.setattr(callbacks.CheckpointCallback, "_on_step", on_step)


def test_train_keeps_its_checkpoints_when_a_worker_dies_and_resumes(
    tmp_path, monkeypatch, capsys
):
    _kill_a_worker_after_the_first_checkpoint(monkeypatch)
    ray_flags = ["--backend", "ray", "--workers", "2"]
    args = ["train", "--config", "smoke", "--runs-root", str(tmp_path)]
    assert main([*args, "--run-name", "r", *ray_flags]) == 1
    run = tmp_path / "r"
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("hyperpilot train: error: Ray worker 0 of 2 died")
    assert errors[0].endswith(
        f"resume with: hyperpilot train --resume {run} --backend ray --workers 2"
    )
    # the periodic checkpoint is intact; the run's state at the death is saved too
    assert [c.step for c in list_checkpoints(run)] == [328, 320]
    first = load_checkpoint(list_checkpoints(run)[1])
    assert first.state.ppo.num_timesteps == 320 and first.obs_rms() is not None
    assert not (run / "pilot").exists()

    monkeypatch.undo()
    assert main(["train", "--resume", str(run), *ray_flags]) == 0
    assert (run / "pilot" / "pilot.json").is_file()
    assert list_checkpoints(run)[0].step >= 640


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--workers", "2"], "--workers goes with --backend ray"),
        (["train", "--gpus-per-worker", "1"], "--gpus-per-worker goes with"),
        (["train", "--backend", "ray"], "--backend ray needs --workers W"),
        (
            ["train", "--config", "smoke", "--backend", "ray", "--workers", "9"],
            "--workers 9 is more than the 8 inner runs",
        ),
        (
            ["evaluate", "--pilot", "x", "--ray-address", "h:6379"],
            "--ray-address goes with --backend ray",
        ),
        (
            ["evaluate", "--pilot", "x", "--backend", "ray", "--device", "cuda"],
            "runs evaluation jobs on CPUs",
        ),
    ],
    ids=[
        "workers-local",
        "gpus-local",
        "no-workers",
        "too-many-workers",
        "address-local",
        "eval-cuda",
    ],
)
def test_bad_backend_flags_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert (
        main([*args, "--runs-root", str(tmp_path)] if args[0] == "train" else args) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())


def test_without_ray_the_flag_says_how_to_install_it(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else find_spec(name, *a),
    )
    assert main(["train", "--backend", "ray", "--workers", "2"]) == 2
    assert "pip install 'hyperpilot[ray]'" in capsys.readouterr().err


def _records(out: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(out)): json.loads(p.read_text())
        for p in sorted((out / "jobs").rglob("*.json"))
    }


def _assert_close(a, b, path="record"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not (math.isinf(a) or math.isnan(a)):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


def test_evaluate_with_ray_tasks_equals_the_local_run(tiny_bundle, tmp_path):
    args = ["evaluate", "--pilot", str(tiny_bundle), "--suite", "smoke"]
    args += ["--seeds", "2", "--methods", "pilot,constant,replay"]
    assert main([*args, "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    ray_args = ["--backend", "ray", "--workers", "2"]
    assert main([*args, "--out", str(tmp_path / "ray"), *ray_args]) == 0
    local, remote = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert len(local) == 6 and local.keys() == remote.keys()
    for name in local:
        _assert_close(remote[name], local[name], name)
    results = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert set(results["summary"]) == {"pilot", "constant", "replay"}


def test_throughput_benchmark_compares_local_and_ray(tmp_path):
    out = tmp_path / "bench.md"
    args = [
        "bench",
        "throughput",
        "--backend",
        "ray",
        "--n",
        "2",
        "--seconds",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    table = out.read_text()
    assert "## Ray throughput" in table and "\n| 2 | 2 |" in table
