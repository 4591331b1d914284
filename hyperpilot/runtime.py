"""The runtime layer under everything else: process settings and atomic writes.

Nothing here imports another hyperpilot module, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import torch


class UserError(ValueError):
    """Bad input from the user: the CLI prints it as one line and exits with code 2.

    Workflows raise it (or a subclass: `ConfigError`, `BundleError`) for anything a
    user can fix; any other exception is a bug and keeps its traceback.
    """

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


KILL_AT: Final = "HYPERPILOT_KILL_AT"
"""The environment variable of `kill_point`: `<name>[:<count>]`."""

_passed: dict[str, int] = {}


def kill_point(name: str) -> None:
    """A test hook: SIGKILLs the process the count-th time it passes `name`.

    `HYPERPILOT_KILL_AT=<name>[:<count>]` (count 1 by default) names the place; the
    fault tests set it to stop a run where a power cut could, without the clean-up
    a signal handler or `finally` would do. Unset, it costs one lookup.
    """
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    target, _, count = wanted.partition(":")
    if target != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def configure_process(threads: int = 1) -> None:
    """Process-wide torch settings for our own entry points (never set on import).

    One thread per engine process was fastest on 2-core CPUs (2 threads were 2-20x
    slower under load), and flushing denormals avoids a 1.7x slowdown from the tiny
    values aggressive learning rates produce. Library code a user imports (the
    `Pilot`, the envs) never calls this.
    """
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def make_folder(path: Path, what: str) -> Path:
    """Creates the folder `path` (and its parents) or says in one line why not.

    Args:
        path: The folder.
        what: How the user named it, for the message (e.g. `--out`).

    Raises:
        UserError: If `path` (or a parent) is a file, or it cannot be created or
            written to.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(
            f"{what} {path} is a file, not a folder; choose a folder"
        ) from None
    except OSError as error:
        raise UserError(
            f"{what} {path} cannot be created ({error.strerror}); choose a folder "
            "you can write to"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(
            f"{what} {path} is not writable; choose a folder you can write to"
        )
    return path


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path` at once.

    Write the file to the yielded path. If the block raises, the temporary file is
    removed and `path` is left as it was, so a reader sees the old file or the new
    one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (temporary file, then rename)."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def replace_directory(staging: Path, path: Path) -> None:
    """Moves the complete directory `staging` to `path`, replacing what is there.

    An existing `path` is renamed aside first and deleted only once the new one is
    in place, so a crash leaves the old or the new directory at `path` (plus, at
    worst, a hidden `.<name>.old-*` directory beside it), never a half-written one;
    only a crash between the two renames leaves nothing at `path`, and
    `restore_directory` then puts the old one back. The files in `staging` are
    flushed to disk before the rename.
    """
    for file in staging.rglob("*"):
        if file.is_file():
            _fsync(file)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
        path.rename(old)
    kill_point(f"replace-{path.name}")
    try:
        staging.rename(path)
    except OSError:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def restore_directory(path: Path) -> bool:
    """Puts back what a crash inside `replace_directory` left aside, if `path` is gone.

    Returns:
        Whether a directory was put back at `path`.
    """
    if path.exists():
        return False
    aside = sorted(
        path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime
    )
    if not aside:
        return False
    aside[-1].rename(path)
    return True
