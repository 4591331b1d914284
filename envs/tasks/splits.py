"""Task splits: named lists of families with their knobs, stored as YAML in configs/tasks/."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyperpilot.envs.tasks.base import TaskFamily
from hyperpilot.envs.tasks.registry import make_family

# configs/ sits beside envs/ in a checkout and installs as hyperpilot/configs/ beside
# hyperpilot/envs/, so the same relative path finds it in both layouts.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class FamilySpec:
    """One entry of a split: a family name (or import path) and its knobs."""

    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> TaskFamily:
        """Builds the family."""
        return make_family(self.family, **self.kwargs)

    @property
    def label(self) -> str:
        """A short readable name, e.g. `mlp_digits(width=32)`."""
        if not self.kwargs:
            return self.family
        knobs = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.family}({knobs})"


def split_path(name_or_path: str | Path) -> Path:
    """Resolves a split name (`train`) to `configs/tasks/train.yaml`, or keeps a path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return CONFIGS_DIR / "tasks" / f"{name_or_path}.yaml"


def available_splits() -> list[str]:
    """Names of the splits shipped in configs/tasks/."""
    return sorted(p.stem for p in (CONFIGS_DIR / "tasks").glob("*.yaml"))


def load_split(name_or_path: str | Path) -> list[FamilySpec]:
    """Reads a split: `families:` is a list of `{family: NAME, <knob>: <value>, ...}`.

    Raises:
        ValueError: If the file is missing or malformed.
    """
    path = split_path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"task split {str(name_or_path)!r} not found ({path}); "
            f"shipped splits: {', '.join(available_splits())}, or a path to a .yaml file"
        )
    data = yaml.safe_load(path.read_text()) or {}
    return parse_families(
        data.get("families") if isinstance(data, dict) else None, path
    )


def parse_families(entries: object, source: Path) -> list[FamilySpec]:
    """The `families:` list of a split or suite file as `FamilySpec`s.

    Raises:
        ValueError: If it is not a non-empty list of mappings with a `family:` key.
    """
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty list under 'families:'")
    specs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "family" not in entry:
            raise ValueError(f"{source}: families[{index}] needs a 'family:' key")
        kwargs = {k: v for k, v in entry.items() if k != "family"}
        specs.append(FamilySpec(str(entry["family"]), kwargs))
    return specs


HELDOUT_PREFIX = "heldout"
"""Split files named `heldout*.yaml` hold the final judgement's tasks."""


@functools.cache
def heldout_families(folder: Path | None = None) -> frozenset[str]:
    """Families a training config may never name, read from the split files.

    A family is held out when a held-out split (`configs/tasks/heldout*.yaml`) lists
    it and no other split there (train, val, smoke) does: the same family may serve
    meta-training in one split and be a held-out task of an older one.
    """
    folder = folder or CONFIGS_DIR / "tasks"
    listed: dict[bool, set[str]] = {True: set(), False: set()}
    for path in sorted(folder.glob("*.yaml")):
        specs = load_split(path)
        listed[path.stem.startswith(HELDOUT_PREFIX)].update(s.family for s in specs)
    return frozenset(listed[True] - listed[False])
