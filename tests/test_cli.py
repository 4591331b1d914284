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


def test_demo_trains_one_task_and_prints_the_curve(capsys):
    assert main(["demo", "--family", "quadratic_2d"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(10, 101, 10))
    assert float(rows[-1][3]) < float(rows[0][3])  # validation loss fell
    assert lines[-1].startswith("test loss")


def test_user_errors_exit_2_with_one_line(capsys):
    assert main(["demo", "--family", "mlp_digit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mlp_digits" in err[0]
    assert main(["bench", "nope"]) == 2
