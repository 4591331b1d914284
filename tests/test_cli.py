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
