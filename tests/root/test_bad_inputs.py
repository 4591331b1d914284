"""Bad input, command by command: exit code 2, one line naming it, nothing half-written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperpilot.cli import main
from hyperpilot.config import dump_config, load_config
from hyperpilot.envs.tasks.splits import heldout_families

HELDOUT = sorted(heldout_families())[0]
SMOKE = ["train", "--config", "smoke", "--runs-root", "{runs}", "--run-name", "r"]


def _file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _csv(tmp: Path, name: str = "data.csv", cell: str = "1.0") -> str:
    rows = ["a,b,label"] + [
        f"{i % 7},{cell if i == 3 else i % 5},{i % 2}" for i in range(40)
    ]
    return _file(tmp, name, "\n".join(rows) + "\n")


def _npz(tmp: Path) -> str:
    path = tmp / "data.npz"
    np.savez(path, x=np.zeros((40, 3)), y=np.arange(40) % 2)
    return str(path)


def _run_folder(tmp: Path) -> str:
    run = tmp / "empty-run"
    run.mkdir()
    dump_config(load_config("smoke"), run / "config.yaml")
    return str(run)


def _bundle_with(tmp: Path, bundle: Path, change: Callable[[dict], None]) -> str:
    copy = tmp / "edited-bundle"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "pilot.json").read_text())
    change(meta)
    (copy / "pilot.json").write_text(json.dumps(meta))
    return str(copy)


def _claim(net_arch: list[int]) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["policy"]["net_arch"] = net_arch

    return change


def _evaluated(tmp: Path, bundle: Path) -> str:
    out = tmp / "evaluated"
    argv = ["evaluate", "--pilot", str(bundle), "--suite", "smoke", "--seeds", "1"]
    assert (
        main([*argv, "--methods", "constant", "--out", str(out), "--no-progress"]) == 0
    )
    return str(out)


# (command words with {placeholders}, text the one line must hold). Placeholders:
# {runs} the runs root, {out} an evaluation folder, {bundle} a tiny bundle, and
# {file:...} / {csv} / {npz} / ... filled in by `_fill`.
CASES: dict[str, tuple[list[str], str]] = {
    # train: config and flags
    "train-unknown-config": (["train", "--config", "nope"], "not found"),
    "train-unknown-key": ([*SMOKE, "--set", "ppo.n_step=8"], "n_steps"),
    "train-heldout-split": ([*SMOKE, "--set", "env.split=heldout"], "held-out"),
    "train-heldout-family": (
        [*SMOKE, "--set", f"env.family={HELDOUT}"],
        "held-out family",
    ),
    "train-heldout-group": (
        [*SMOKE, "--set", f"env.groups=[{{family: {HELDOUT}, n: 2}}]"],
        "held-out family",
    ),
    "train-negative-seed": ([*SMOKE, "--seed", "-1"], "run.seed"),
    "train-zero-runs": ([*SMOKE, "--set", "env.n=0"], "env.n"),
    "train-lr-not-a-number": (
        [*SMOKE, "--set", "ppo.learning_rate=abc"],
        "learning_rate",
    ),
    "train-bool-as-one": (
        [*SMOKE, "--set", "logging.progress_bar=1"],
        "true or false",
    ),
    "train-reward-typo": ([*SMOKE, "--set", "env.reward.kind=val_los"], "did you mean"),
    "train-zero-interval": (
        [*SMOKE, "--set", "env.decision_interval=0"],
        "decision_interval",
    ),
    "train-cuda-missing": ([*SMOKE, "--device", "cuda"], "cuda"),
    "train-policy-cuda-missing": ([*SMOKE, "--policy-device", "cuda"], "policy_device"),
    "train-below-one-rollout": (
        [*SMOKE, "--total-timesteps", "8"],
        "below one PPO rollout",
    ),
    "train-run-name-escapes": (
        [
            "train",
            "--config",
            "smoke",
            "--runs-root",
            "{runs}",
            "--run-name",
            "../../x",
        ],
        "--run-name",
    ),
    "train-runs-root-is-a-file": (
        ["train", "--config", "smoke", "--runs-root", "{file:root}", "--run-name", "r"],
        "is a file",
    ),
    "train-resume-not-a-run": (["train", "--resume", "{runs}"], "not a run folder"),
    "train-resume-with-config": (
        ["train", "--resume", "{runs}", "--config", "smoke"],
        "drop --config",
    ),
    "train-init-from-missing": (
        [*SMOKE, "--init-from", "{runs}/nope"],
        "not a directory",
    ),
    "train-horizon-zero": (
        [
            *SMOKE,
            "--set",
            "env.family=quadratic_2d",
            "--set",
            "env.family_kwargs={horizon: 0}",
        ],
        "horizon must be >= 1",
    ),
    "train-unknown-knob": (
        [
            *SMOKE,
            "--set",
            "env.family=quadratic_2d",
            "--set",
            "env.family_kwargs={foo: 1}",
        ],
        "has no knob 'foo'",
    ),
    "train-malformed-set": ([*SMOKE, "--set", "ppo.n_steps"], "malformed"),
    "train-workers-without-ray": ([*SMOKE, "--workers", "2"], "--backend ray"),
    "train-invalid-yaml": (
        ["train", "--config", "{file:bad.yaml:run: [}"],
        "invalid YAML",
    ),
    "train-config-a-list": (["train", "--config", "{file:list.yaml:- 1}"], "mapping"),
    # evaluate: tasks, methods, numbers, folders, pilots
    "evaluate-unknown-method": (
        ["evaluate", "--pilot", "{bundle}", "--methods", "pilot,magic"],
        "magic",
    ),
    "evaluate-unknown-suite": (
        ["evaluate", "--pilot", "{bundle}", "--suite", "nope"],
        "heldout",
    ),
    "evaluate-kw-without-family": (
        ["evaluate", "--pilot", "{bundle}", "--kw", "width=3"],
        "--family",
    ),
    "evaluate-family-typo": (
        ["evaluate", "--pilot", "{bundle}", "--family", "mlp_digit"],
        "mlp_digits",
    ),
    "evaluate-unknown-knob": (
        [
            "evaluate",
            "--pilot",
            "{bundle}",
            "--family",
            "quadratic_2d",
            "--kw",
            "foo=1",
        ],
        "has no knob 'foo'",
    ),
    "evaluate-horizon-zero": (
        [
            "evaluate",
            "--pilot",
            "{bundle}",
            "--family",
            "quadratic_2d",
            "--kw",
            "horizon=0",
        ],
        "horizon",
    ),
    "evaluate-missing-data": (
        [
            "evaluate",
            "--pilot",
            "{bundle}",
            "--data",
            "{runs}/missing.csv",
            "--target",
            "y",
        ],
        "missing.csv",
    ),
    "evaluate-csv-without-target": (
        ["evaluate", "--pilot", "{bundle}", "--data", "{csv}"],
        "--target",
    ),
    "evaluate-csv-wrong-target": (
        ["evaluate", "--pilot", "{bundle}", "--data", "{csv}", "--target", "Label"],
        "--target label",
    ),
    "evaluate-csv-text-cell": (
        [
            "evaluate",
            "--pilot",
            "{bundle}",
            "--data",
            "{csv:text}",
            "--target",
            "label",
        ],
        "data.csv",
    ),
    "evaluate-npz-target": (
        ["evaluate", "--pilot", "{bundle}", "--data", "{npz}", "--target", "foo"],
        "--target",
    ),
    "evaluate-init-lr-inf": (
        ["evaluate", "--pilot", "{bundle}", "--suite", "smoke", "--init-lr", "inf"],
        "--init-lr",
    ),
    "evaluate-init-lr-too-large": (
        ["evaluate", "--pilot", "{bundle}", "--suite", "smoke", "--init-lr", "1e6"],
        "--init-lr",
    ),
    "evaluate-zero-seeds": (
        ["evaluate", "--pilot", "{bundle}", "--suite", "smoke", "--seeds", "0"],
        "--seeds",
    ),
    "evaluate-out-is-a-file": (
        ["evaluate", "--pilot", "{bundle}", "--suite", "smoke", "--out", "{file:out}"],
        "is a file",
    ),
    "evaluate-missing-pilot": (
        ["evaluate", "--pilot", "{runs}/nope"],
        "not a directory",
    ),
    "evaluate-other-init-lr-in-folder": (
        [
            "evaluate",
            "--pilot",
            "{bundle}",
            "--suite",
            "smoke",
            "--out",
            "{evaluated}",
            "--init-lr",
            "3e-3",
        ],
        "another evaluation",
    ),
    "evaluate-ray-on-cuda": (
        ["evaluate", "--pilot", "{bundle}", "--backend", "ray", "--device", "cuda"],
        "drop --device",
    ),
    # export, info: run folders and bundles
    "export-not-a-run": (["export", "{runs}"], "not a run folder"),
    "export-no-checkpoint": (["export", "{run_folder}"], "checkpoint"),
    "info-missing": (["info", "{runs}/nope"], "not a directory"),
    "info-not-json": (["info", "{bundle:not-json}"], "not valid JSON"),
    "info-huge-net-arch": (["info", "{bundle:huge}"], "does not match"),
    "info-unknown-pretrained": (["info", "nope"], "no pretrained pilot"),
    # bench
    "bench-unknown": (["bench", "nope"], "choose a benchmark"),
    "bench-unknown-arm": (["bench", "ablations", "--arms", "nope"], "unknown arms"),
}


def _fill(word: str, tmp: Path, bundle: Path) -> str:
    runs = tmp / "runs"
    if word.startswith("{file:"):
        name, _, text = word[len("{file:") : -1].partition(":")
        return _file(tmp, name, text)
    special = {
        "{csv}": lambda: _csv(tmp),
        "{csv:text}": lambda: _csv(tmp, cell="oops"),
        "{npz}": lambda: _npz(tmp),
        "{run_folder}": lambda: _run_folder(tmp),
        "{evaluated}": lambda: _evaluated(tmp, bundle),
        "{bundle:huge}": lambda: _bundle_with(tmp, bundle, _claim([20000, 20000])),
    }
    if word in special:
        return special[word]()
    if word == "{bundle:not-json}":
        copy = Path(_bundle_with(tmp, bundle, lambda meta: None))
        (copy / "pilot.json").write_text("{not json")
        return str(copy)
    return word.replace("{runs}", str(runs)).replace("{bundle}", str(bundle))


def test_the_table_holds_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case, tmp_path, tiny_bundle, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # default output folders land in tmp_path/runs
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    words, expected = CASES[case]
    argv = [_fill(word, tmp_path, tiny_bundle) for word in words]
    capsys.readouterr()
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hyperpilot {argv[0]}: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    after = sorted(p for p in tmp_path.rglob("*"))
    assert after == before, f"{case} wrote {set(after) - set(before)}"
