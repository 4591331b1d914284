"""Mutation check of the math (`make mutation`): runs mutmut and rewrites docs/MUTATION.md.

mutmut names a module after its file's path, and the tests import the installed names
(`hyperpilot.envs.reward`, which setuptools maps from `envs/reward.py`). So the run
happens in a staged copy with the installed layout (`hyperpilot/envs/...`), where the
two agree and the editable install never hands the tests the unmutated files.

Survivors keep the reasons written in docs/MUTATION.md: a reason belongs to the
mutated function and the changed lines, not to mutmut's numbering, so it survives a
rerun after the code moves. New survivors get `TODO`.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutation"
DOC = ROOT / "docs" / "MUTATION.md"
MUTMUT = Path(sys.executable).parent / "mutmut"
# What is mutated: whole modules, and the engine's divergence and reward parts
# (fnmatch patterns of mutmut's mutant names; `?` stands for mutmut's `ǁ`).
PATTERNS = (
    "hyperpilot.envs.reward.*",
    "hyperpilot.envs.features.*",
    "hyperpilot.envs.actions.*",
    "hyperpilot.envs.optim.*",
    "hyperpilot.envs.engine.x?BatchedEngine?start__mutmut_*",
    "hyperpilot.envs.engine.x?BatchedEngine?advance__mutmut_*",
    "hyperpilot.envs.engine.x?BatchedEngine?decisions_left__mutmut_*",
    "hyperpilot.envs.engine.x?BatchedEngine?progress__mutmut_*",
    "hyperpilot.agents.pilot.*",
)
KILLED = ("killed", "timeout", "caught by type check", "segfault")
PACKAGES = {"envs": "envs", "agents": "agents", "configs": "configs"}


def stage() -> None:
    """Copies the project into STAGE in its installed layout."""
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hyperpilot", "tests"):
        shutil.copytree(ROOT / name, STAGE / name, ignore=ignore)
    for source, target in PACKAGES.items():
        shutil.copytree(ROOT / source, STAGE / "hyperpilot" / target, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", STAGE / "pyproject.toml")


def mutmut(*args: str) -> str:
    """Runs `mutmut ARGS` in STAGE and returns its standard output."""
    done = subprocess.run(
        [str(MUTMUT), *args], cwd=STAGE, capture_output=True, text=True, check=True
    )
    return done.stdout


def results() -> dict[str, str]:
    """Status of every selected mutant, by name."""
    statuses = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and any(fnmatch.fnmatch(name, p) for p in PATTERNS):
            statuses[name] = status
    return statuses


# mutmut's own `show`, for many mutants in one process (a `mutmut show` call each
# takes seconds).
_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
names = json.load(sys.stdin)
json.dump({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in names}, sys.stdout)
"""


def changes(names: list[str]) -> dict[str, tuple[str, str]]:
    """The mutated function and the changed lines (`- old / + new`) of each mutant."""
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=STAGE,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    for name, diff in json.loads(done.stdout).items():
        lines = [
            line[0] + " " + line[1:].strip()
            for line in diff.splitlines()
            if line[:1] in "-+" and not line.startswith(("---", "+++"))
        ]
        function = re.sub(r"__mutmut_\d+$", "", name).replace("ǁ", ".")
        found[name] = (function, " / ".join(lines))
    return found


def old_reasons() -> dict[tuple[str, str], str]:
    """Reasons already written in docs/MUTATION.md, by (function, change)."""
    if not DOC.exists():
        return {}
    reasons = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`hyperpilot."):
            function = cells[0].strip("`").rsplit(" #", 1)[0]
            reasons[(function, cells[1].strip("`"))] = cells[2]
    return reasons


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_doc(
    statuses: dict[str, str], seconds: float, test_args: str, rerun: bool
) -> float:
    """Rewrites docs/MUTATION.md and returns the score."""
    counts = Counter(statuses.values())
    killed = sum(counts[s] for s in KILLED)
    score = killed / max(len(statuses), 1)
    reasons = old_reasons()
    by_module: dict[str, Counter] = {}
    for name, status in statuses.items():
        module = name.split(".x")[0]
        by_module.setdefault(module, Counter())[status in KILLED] += 1
    rows = []
    survivors = sorted(n for n, s in statuses.items() if s not in KILLED)
    for name, (function, diff) in changes(survivors).items():
        reason = reasons.get((function, cell(diff)), "TODO: equivalent, or add a test")
        number = name.rsplit("_", 1)[1]
        status = "" if statuses[name] == "survived" else f" ({statuses[name]})"
        rows.append(
            f"| `{function} #{number}`{status} | `{cell(diff)}` | {cell(reason)} |"
        )
    today = datetime.date.today().isoformat()
    lines = [
        "# Mutation check",
        "",
        "mutmut changes one thing at a time in the math modules (an operator, a constant,",
        "an argument) and runs the fast tests; a mutant that no test notices *survived*.",
        "Each survivor below is either equivalent (no input can tell it apart) or names",
        "the test added for it. Regenerate with `make mutation` (it keeps the reasons",
        "below, matched by function and change, and marks new survivors `TODO`).",
        "",
        f"- Score: **{score:.1%}** ({killed} of {len(statuses)} mutants killed; a",
        "  mutant that no test reaches counts as a survivor).",
        "- Command: `make mutation` (`scripts/mutation.py`, mutmut "
        f"{mutmut('--version').split()[-1]}), tests `{test_args}`.",
        f"- Run time: {seconds / 60:.0f} min on {os.cpu_count()} cores "
        f"({platform.machine()}, shared, `nice -n 10`), {today}"
        + (
            " (the full run's time; the survivors were then rerun against added "
            "tests with `scripts/mutation.py --rerun-survivors`)."
            if rerun
            else "."
        ),
        "- Scope: envs/reward.py, envs/features.py, envs/actions.py, envs/optim.py,",
        "  agents/pilot.py, and `start`, `advance`, `decisions_left`, `progress` of",
        "  envs/engine.py (by method name: a new engine method that holds",
        "  divergence or reward logic must join `PATTERNS` in scripts/mutation.py).",
        "  mutmut mutates function bodies, not module constants.",
        "",
        "| module | killed | survived |",
        "|---|---|---|",
        *(f"| {m} | {c[True]} | {c[False]} |" for m, c in sorted(by_module.items())),
        "",
        "## Survivors",
        "",
        "| mutant | change | reason |",
        "|---|---|---|",
        *rows,
        "",
    ]
    DOC.write_text("\n".join(lines))
    return score


def run(names: list[str] | tuple[str, ...]) -> None:
    """`mutmut run NAMES` in STAGE, logged to STAGE/mutmut.log."""
    # One thread: torch starts no OpenMP pool, so mutmut's forks cannot deadlock
    # on it, and two workers share two cores without oversubscribing them.
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(STAGE / "mutmut.log", "a") as log:
        subprocess.run(
            [str(MUTMUT), "run", *names],
            cwd=STAGE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="run the last run's survivors again against the current tests (the "
        "code under test must not have changed since)",
    )
    mode.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/MUTATION.md from the last run in build/mutation",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="the full run's time, to report with --rerun-survivors or --report-only",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.rerun_survivors:
        survivors = [n for n, s in results().items() if s not in KILLED]
        shutil.rmtree(STAGE / "tests")
        shutil.copytree(ROOT / "tests", STAGE / "tests")
        # the tests changed: mutmut must map tests to functions afresh
        (STAGE / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        if survivors:
            run(survivors)
    elif not args.report_only:
        stage()
        run(PATTERNS)
    full_run = args.rerun_survivors or args.report_only
    seconds = (args.minutes or 0) * 60 if full_run else time.monotonic() - start
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    test_args = " ".join(config["pytest_add_cli_args_test_selection"])
    score = write_doc(results(), seconds, test_args, args.rerun_survivors)
    print(f"mutation score {score:.1%}; survivors in {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
