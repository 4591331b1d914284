"""`hyperpilot bench quality` on a tiny suite: targets are measured and recorded."""

import pytest

from hyperpilot.cli import main
from hyperpilot.evaluation import available_methods


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
    # the Schedule-Free line needs its extra (`baselines`)
    optional = ("Schedule-Free",) if "schedulefree" in available_methods() else ()
    for needle in (
        "## Quality on `smoke`",
        "0 pilot divergences",
        "beats constant Adam",
        "score B above replay",
        "score B above blind",
        "tuned cosine",
        "100x too small",
        "30x too large",
        *optional,
        "Performance profile",
        "share of tasks within",
    ):
        assert needle in text, needle
    assert (tmp_path / "q" / "normal" / "plots" / "profile.png").is_file()
    first = capsys.readouterr().out
    assert main(args) == 0  # a re-run reuses every job
    assert text in md.read_text()
    assert "holds" in first
