import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_holds_the_subpackages_and_the_task_splits(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("hyperpilot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "hyperpilot/__init__.py",
        "hyperpilot/cli.py",
        "hyperpilot/envs/__init__.py",
        "hyperpilot/envs/engine.py",
        "hyperpilot/envs/tasks/registry.py",
        "hyperpilot/agents/__init__.py",
        "hyperpilot/integrations/lightning.py",
        "hyperpilot/integrations/transformers.py",
        "hyperpilot/configs/tasks/train.yaml",
        "hyperpilot/configs/tasks/heldout.yaml",
        "hyperpilot/configs/train/smoke.yaml",
        "hyperpilot/configs/eval/heldout.yaml",
        "hyperpilot/pretrained/default/pilot.json",
        "hyperpilot/pretrained/default/actor.safetensors",
    ):
        assert module in names, module
    assert not any(name.startswith(("envs/", "agents/")) for name in names)
