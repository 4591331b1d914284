"""`hyperpilot bench ablations` trains an arm, evaluates it on val, and resumes."""

import shutil

import pytest

from hyperpilot.cli import main


@pytest.mark.slow
def test_an_ablation_arm_trains_evaluates_and_is_reused(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    args = [
        "bench",
        "ablations",
        "--arms",
        "lr_only",
        "--seeds",
        "1",
        "--timesteps",
        "128",
        "--eval-seeds",
        "1",
        "--config",
        "smoke",
        "--split",
        "smoke",
        "--root",
        str(tmp_path / "r"),
        "--md",
        str(md),
    ]
    assert main(args) == 0
    run = tmp_path / "r" / "lr_only__s0"
    assert "controlled: [lr]" in (run / "config.yaml").read_text()
    table = md.read_text()
    assert "| lr_only | env.controlled=[lr] |" in table
    stamp = (run / "pilot" / "pilot.json").stat().st_mtime_ns
    assert main(args) == 0  # finished runs and evaluations are reused
    assert (run / "pilot" / "pilot.json").stat().st_mtime_ns == stamp
    # a run stopped before its first checkpoint starts over
    shutil.rmtree(run / "pilot")
    shutil.rmtree(run / "checkpoints")
    assert main(args) == 0
    assert (run / "pilot" / "pilot.json").is_file()
    assert main(["bench", "ablations", "--arms", "nope"]) == 2
