"""`hyperpilot evaluate` end to end on tiny tasks."""

import json
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hyperpilot.cli import main
from hyperpilot.evaluation import Job, available_methods, load_record

SMOKE = ["--suite", "smoke", "--seeds", "2", "--no-progress"]


@pytest.fixture(scope="module")
def evaluation(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "smoke"
    assert (
        main(["evaluate", "--pilot", str(tiny_bundle), *SMOKE, "--out", str(out)]) == 0
    )
    return out


def test_every_method_reports_and_files_are_written(evaluation):
    results = json.loads((evaluation / "results.json").read_text())
    assert list(results["summary"]) == available_methods()
    assert len(results["runs"]) == 2 * len(available_methods())
    for name in (
        "results.csv",
        "plots/curves_quadratic_2d.png",
        "plots/schedule_quadratic_2d.png",
        "plots/profile.png",
    ):
        assert (evaluation / name).is_file(), name
    summary = results["summary"]
    pilot_steps = summary["pilot"]["inner_steps"]
    assert summary["tuned_cosine"]["inner_steps"] == 5 * pilot_steps  # tuning costs 5x
    assert summary["constant"]["median_test_loss_vs_constant"] is None
    assert 0.0 <= summary["pilot"]["wins_vs_constant"] <= 1.0
    events = EventAccumulator(
        str(evaluation / "tensorboard" / "pilot" / "quadratic_2d")
    )
    events.Reload()
    assert {"inner/val_loss", "hparams/lr", "hparams/clip"} <= set(
        events.Tags()["scalars"]
    )


def test_methods_see_the_same_instance_and_budget(evaluation):
    runs = {}
    # Schedule-Free runs only where its extra (`baselines`) is installed
    optional = ("schedulefree",) if "schedulefree" in available_methods() else ()
    for run in ("pilot", "constant", "cosine@0.001", "random", *optional):
        record = load_record(evaluation / "jobs" / "quadratic_2d" / run / "seed1.json")
        runs[run] = record
    assert len({r["horizon"] for r in runs.values()}) == 1
    assert len({r["steps"][-1] for r in runs.values()}) == 1
    assert len({r["initial_val_loss"] for r in runs.values()}) == 1  # same model, data
    other_seed = load_record(
        evaluation / "jobs" / "quadratic_2d" / "pilot" / "seed0.json"
    )
    assert other_seed["initial_val_loss"] != runs["pilot"]["initial_val_loss"]


def test_replay_repeats_the_pilots_median_schedule(tiny_bundle, tmp_path):
    out = tmp_path / "replay"
    args = [
        "evaluate",
        "--pilot",
        str(tiny_bundle),
        "--suite",
        "smoke",
        "--seeds",
        "1",
        "--methods",
        "pilot,replay",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    pilot = load_record(out / "jobs" / "quadratic_2d" / "pilot" / "seed0.json")
    replay = load_record(out / "jobs" / "quadratic_2d" / "replay" / "seed0.json")
    # one seed: the median schedule is the pilot's own, replayed open-loop, so the
    # values in force in each window are the pilot's
    np.testing.assert_allclose(replay["lr"], pilot["lr"], rtol=1e-5)
    np.testing.assert_allclose(replay["clip"], pilot["clip"], rtol=1e-5)


def test_a_rerun_reuses_finished_jobs(evaluation, tiny_bundle, capsys):
    job_file = evaluation / "jobs" / "quadratic_2d" / "pilot" / "seed0.json"
    before = job_file.stat().st_mtime_ns
    assert (
        main(
            ["evaluate", "--pilot", str(tiny_bundle), *SMOKE, "--out", str(evaluation)]
        )
        == 0
    )
    assert job_file.stat().st_mtime_ns == before
    assert "pilot" in capsys.readouterr().out


def test_family_with_knobs_and_a_users_data_file(tiny_bundle, tmp_path):
    family = [
        "evaluate",
        "--pilot",
        str(tiny_bundle),
        "--family",
        "mlp_digits",
        "--kw",
        "width=16",
        "--kw",
        "horizon=30",
        "--seeds",
        "1",
        "--methods",
        "pilot,constant",
        "--out",
        str(tmp_path / "f"),
        "--no-progress",
    ]
    assert main(family) == 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    label = (x[:, 0] + x[:, 1] > 0).astype(int)
    rows = ["a,b,c,label"] + [f"{a},{b},{c},{y}" for (a, b, c), y in zip(x, label)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    data = [
        "evaluate",
        "--pilot",
        str(tiny_bundle),
        "--data",
        str(tmp_path / "mine.csv"),
        "--target",
        "label",
        "--seeds",
        "1",
        "--methods",
        "pilot,constant",
        "--out",
        str(tmp_path / "d"),
        "--no-progress",
    ]
    assert main(data) == 0
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert results["runs"][0]["test_accuracy"] is not None  # classification: ce loss


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "pilot,magic"], "magic"),
        (["--suite", "nope"], "heldout"),
        (["--kw", "width=3"], "--family"),
        (["--family", "mlp_digit"], "mlp_digits"),
        (["--data", "missing.csv", "--target", "y"], "missing.csv"),
    ],
    ids=[
        "unknown-method",
        "unknown-suite",
        "kw-without-family",
        "unknown-family",
        "missing-data",
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_bundle, tmp_path, capsys, extra, message):
    args = [
        "evaluate",
        "--pilot",
        str(tiny_bundle),
        "--out",
        str(tmp_path / "o"),
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_another_pilot_in_the_same_folder_is_refused(evaluation, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(
        json.loads((evaluation / "evaluation.json").read_text())["pilot"], other
    )
    assert (
        main(["evaluate", "--pilot", str(other), *SMOKE, "--out", str(evaluation)]) == 2
    )
    assert "another evaluation" in capsys.readouterr().err


def test_job_paths_are_stable(tmp_path):
    from hyperpilot.envs.tasks.splits import FamilySpec
    from hyperpilot.evaluation import EvalTask

    task = EvalTask("mlp_digits(width=32)", FamilySpec("mlp_digits", {"width": 32}))
    job = Job(task, 3, "cosine@0.001")
    assert job.key == ("mlp_digits(width=32)", 3, "cosine@0.001")
    path = job.path(tmp_path)
    assert path.name == "seed3.json" and path.parent.name == "cosine@0.001"
