import subprocess
import sys
from pathlib import Path

from hyperpilot import __version__
from hyperpilot.cli import main


def test_installed_command_prints_its_version():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hyperpilot"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"hyperpilot {__version__}"


def test_user_errors_exit_2_with_one_line(capsys):
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "throughput" in err[0]


def test_throughput_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "bench.md"
    args = [
        "bench",
        "throughput",
        "--n",
        "1,2",
        "--seconds",
        "0",
        "--ppo-timesteps",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    table = out.read_text()
    assert "- command: `hyperpilot bench throughput --n 1,2" in table
    (row,) = [line for line in table.splitlines() if line.startswith("| 1 |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert "-" not in cells[:7]  # raw, DummyVecEnv and batched arms all measured
    assert cells[7] == "-"  # compiled only with --compiled
    assert cells[8:] == ["-", "-"]  # captured only with --capture (CUDA)


def test_operator_count_compares_the_env_with_the_raw_loop(tmp_path):
    from hyperpilot import bench

    out = tmp_path / "bench.md"
    env, raw = bench.operator_calls(4, windows=1, out=out, log=lambda _: None)
    assert raw > 0 and env > 0
    text = out.read_text()
    assert "## Operator calls" in text
    (row,) = [line for line in text.splitlines() if line.startswith("| 4 | 10 |")]
    assert row.endswith(f"| {env / raw:.2f}x |")
