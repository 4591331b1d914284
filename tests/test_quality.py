"""`hyperpilot bench quality` on a tiny suite: targets are measured and recorded."""

import json

import pytest

from hyperpilot.cli import main


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
        "beats constant Adam",
        "score B above replay",
        "score B above blind",
        "tuned cosine",
        "100x too small",
        "30x too large",
        "Schedule-Free",
        "Performance profile",
        "share of tasks within",
    ):
        assert needle in text, needle
    results = json.loads((tmp_path / "q" / "normal" / "results.json").read_text())
    divergences = results["summary"]["pilot"]["divergences"]
    verdict = "holds" if divergences == 0 else "does NOT hold"
    assert f"- floor, 0 pilot divergences: {divergences} -> {verdict}" in text
    assert (tmp_path / "q" / "normal" / "plots" / "profile.png").is_file()
    first = capsys.readouterr().out
    assert main(args) == 0  # a re-run reuses every job
    assert text in md.read_text()
    assert "holds" in first
