"""`hyperpilot evaluate` end to end on tiny tasks."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hyperpilot.agents.methods import available_methods, method_of_run
from hyperpilot.bundle import load_bundle
from hyperpilot.cli import main
from hyperpilot.evaluation import Job, load_record

SMOKE = ["--suite", "smoke", "--seeds", "2", "--no-progress"]


def job_file(out, run, seed, bundle=None, noval=False):
    """A job record's path; runs that use the pilot lie under its fingerprint."""
    folder = out / "jobs" / "quadratic_2d" / run
    if bundle is not None:
        folder = folder / (
            load_bundle(bundle).fingerprint + ("-noval" if noval else "")
        )
    return folder / f"seed{seed}.json"


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


def test_methods_see_the_same_instance_and_budget(evaluation, tiny_bundle):
    runs = {}
    # Schedule-Free runs only where its extra (`baselines`) is installed
    optional = ("schedulefree",) if "schedulefree" in available_methods() else ()
    for run in ("pilot", "constant", "cosine@0.001", "random", *optional):
        pilot = tiny_bundle if method_of_run(run)[0].uses_pilot else None
        record = load_record(job_file(evaluation, run, 1, pilot))
        runs[run] = record
    assert len({r["horizon"] for r in runs.values()}) == 1
    assert len({r["steps"][-1] for r in runs.values()}) == 1
    assert len({r["initial_val_loss"] for r in runs.values()}) == 1  # same model, data
    other_seed = load_record(job_file(evaluation, "pilot", 0, tiny_bundle))
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
    pilot = load_record(job_file(out, "pilot", 0, tiny_bundle))
    replay = load_record(job_file(out, "replay", 0, tiny_bundle))
    # one seed: the median schedule is the pilot's own, replayed open-loop, so the
    # values in force in each window are the pilot's
    np.testing.assert_allclose(replay["lr"], pilot["lr"], rtol=1e-5)
    np.testing.assert_allclose(replay["clip"], pilot["clip"], rtol=1e-5)


def test_a_rerun_reuses_finished_jobs(evaluation, tiny_bundle, capsys):
    pilot_job = job_file(evaluation, "pilot", 0, tiny_bundle)
    before = pilot_job.stat().st_mtime_ns
    assert (
        main(
            ["evaluate", "--pilot", str(tiny_bundle), *SMOKE, "--out", str(evaluation)]
        )
        == 0
    )
    assert pilot_job.stat().st_mtime_ns == before
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


def test_another_pilot_reuses_the_baselines_of_the_folder(tmp_path, tiny_bundle):
    out = tmp_path / "two-pilots"
    first = ["evaluate", "--pilot", str(tiny_bundle), "--suite", "smoke"]
    first += ["--seeds", "1", "--methods", "pilot,constant", "--no-progress"]
    assert main([*first, "--out", str(out)]) == 0
    constant = job_file(out, "constant", 0)
    stamp = constant.stat().st_mtime_ns
    assert main([*first, "--out", str(out), "--no-val"]) == 0  # the pilot blind to val
    second = ["evaluate", "--pilot", "default", "--suite", "smoke", "--seeds", "1"]
    second += ["--methods", "pilot,constant", "--no-progress", "--out", str(out)]
    assert main(second) == 0
    assert constant.stat().st_mtime_ns == stamp  # baselines serve every pilot
    for bundle, noval in (
        (tiny_bundle, False),
        (tiny_bundle, True),
        ("default", False),
    ):
        assert job_file(out, "pilot", 0, bundle, noval).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["pilot"] == "default"


def test_another_start_lr_in_the_same_folder_is_refused(
    evaluation, tiny_bundle, capsys
):
    args = ["evaluate", "--pilot", str(tiny_bundle), *SMOKE, "--out", str(evaluation)]
    assert main([*args, "--init-lr", "3e-3"]) == 2
    err = capsys.readouterr().err
    assert "another evaluation" in err and "--out" in err


def test_baselines_run_unclipped_and_the_pilot_from_its_clip(evaluation, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    constant = load_record(job_file(evaluation, "constant", 0))
    replay = load_record(job_file(evaluation, "replay", 0, tiny_bundle))
    assert all(clip == float("inf") for clip in constant["clip"])
    random = load_record(job_file(evaluation, "random", 0, tiny_bundle))
    assert random["clip"][0] != float("inf") and replay["clip"][0] != float("inf")
    assert bundle.default_clip > 0


def test_suite_replay_follows_the_pilots_schedule_by_progress(tiny_bundle, tmp_path):
    out = tmp_path / "suite"
    args = ["evaluate", "--pilot", str(tiny_bundle), "--suite", "smoke", "--seeds"]
    args += ["1", "--methods", "replay_suite", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    pilot = load_record(job_file(out, "pilot", 0, tiny_bundle))
    suite = load_record(job_file(out, "replay_suite", 0, tiny_bundle))
    # one task, one seed: every window's progress bin maps back to the pilot's
    # own value in that window
    np.testing.assert_allclose(suite["lr"], pilot["lr"], rtol=1e-5)
    np.testing.assert_allclose(suite["beta1"], pilot["beta1"], rtol=1e-5)


def test_job_paths_are_stable(tmp_path):
    from hyperpilot.envs.tasks.splits import FamilySpec
    from hyperpilot.evaluation import EvalTask

    task = EvalTask("mlp_digits(width=32)", FamilySpec("mlp_digits", {"width": 32}))
    job = Job(task, 3, "cosine@0.001")
    assert job.key == ("mlp_digits(width=32)", 3, "cosine@0.001", "")
    path = job.path(tmp_path)
    assert path.name == "seed3.json" and path.parent.name == "cosine@0.001"
    pilot = Job(task, 3, "pilot", "0123abcd4567-noval").path(tmp_path)
    assert pilot.parent.name == "0123abcd4567-noval"
    assert pilot.parent.parent.name == "pilot"


def test_default_methods_say_which_libraries_are_missing(
    tiny_bundle, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name in ("schedulefree", "prodigyopt") else real(name, *a)
        ),
    )
    args = ["evaluate", "--pilot", str(tiny_bundle), "--family", "quadratic_2d"]
    args += ["--kw", "horizon=20", "--seeds", "1", "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: schedulefree, prodigy left out" in out
    assert "hyperpilot[baselines]" in out
