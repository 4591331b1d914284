"""`hyperpilot bench quality` on a tiny suite: targets are measured and recorded."""

import json
import math

import pytest

from hyperpilot.bundle import load_bundle
from hyperpilot.cli import main
from hyperpilot.quality import geomean_ratio, targets, task_medians


def _rows(method, losses, diverged=()):
    return [
        {
            "method": method,
            "task": task,
            "seed": seed,
            "test_loss": loss,
            "diverged": (task, seed) in diverged,
        }
        for task, per_seed in losses.items()
        for seed, loss in enumerate(per_seed)
    ]


def test_task_medians_and_geometric_means_by_hand():
    rows = _rows("pilot", {"a": [1.0, 3.0, 2.0], "b": [4.0, 4.0, 9.0]})
    rows += _rows("pilot", {"c": [1.0, 1.0]}, diverged={("c", 0), ("c", 1)})
    assert task_medians(rows, "pilot") == {"a": 2.0, "b": 4.0, "c": math.inf}
    assert geomean_ratio({"a": 2.0, "b": 8.0}, {"a": 1.0, "b": 2.0}) == pytest.approx(
        math.sqrt(2.0 * 4.0)
    )
    assert geomean_ratio({"a": math.inf}, {"a": 1.0}) == math.inf


def test_target_lines_say_holds_or_not_from_the_numbers():
    constant = {"a": [1.0], "b": [1.0], "c": [1.0]}
    rows = _rows("constant", constant)
    rows += _rows("pilot", {"a": [0.5], "b": [0.9], "c": [1.03]})
    rows += _rows("tuned_cosine", {"a": [0.5], "b": [0.9], "c": [1.0]})
    rows += _rows("tuned_onecycle", {"a": [0.6], "b": [0.9], "c": [1.0]})
    rows += _rows("replay_suite", {"a": [0.6], "b": [1.0], "c": [1.1]})
    summary = {"pilot": {"divergences": 0}}
    lines = "\n".join(targets(rows, summary))
    assert "0 pilot divergences: 0 -> holds" in lines
    assert "below on 2 of 3 (not: c) -> holds" in lines  # one task may lose
    assert "worst 1.030x (c) -> does NOT hold" in lines  # but by at most 2%
    assert "pilot / tuned_cosine = 1.010 -> holds" in lines
    assert (
        "stretch, below tuned OneCycle: pilot / tuned_onecycle = 0.950 -> holds"
        in lines
    )
    assert "geometric mean 0.889, lower median on 3 of 3 tasks -> holds" in lines
    summary = {"pilot": {"divergences": 2}}
    assert "0 pilot divergences: 2 -> does NOT hold" in "\n".join(
        targets(rows, summary)
    )


@pytest.mark.slow
def test_quality_benchmark_records_every_target(tiny_bundle, tmp_path, capsys):
    md = tmp_path / "BENCHMARKS.md"
    args = [
        "bench",
        "quality",
        "--pilot",
        str(tiny_bundle),
        "--suite",
        "smoke",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "q"),
        "--md",
        str(md),
        "--no-progress",
    ]
    assert main(args) == 0
    text = md.read_text()
    for needle in (
        "## Quality on `smoke`",
        "with-val:",
        "without-val:",
        "at most 1.02x constant Adam on every task",
        "at most 1.05x tuned cosine",
        "stretch, below tuned OneCycle",
        "suite-wide open-loop replay",
        "per-task open-loop replay",
        "Performance profile",
        "share of tasks within",
    ):
        assert needle in text, needle
    report = tmp_path / "q" / load_bundle(tiny_bundle).fingerprint
    for name in ("with-val", "without-val"):
        results = json.loads((report / name / "results.json").read_text())
        divergences = results["summary"]["pilot"]["divergences"]
        verdict = "holds" if divergences == 0 else "does NOT hold"
        assert f"- floor, 0 pilot divergences: {divergences} -> {verdict}" in text
        assert results["settings"]["validation"] == (name == "with-val")
    assert (report / "with-val" / "plots" / "profile.png").is_file()
    first = capsys.readouterr().out
    assert main(args) == 0  # a re-run reuses every job
    assert text in md.read_text()
    assert "holds" in first
