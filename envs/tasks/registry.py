"""The task-family registry: a plain dict, a decorator to fill it, a factory to read it."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from hyperpilot.envs.tasks.base import TaskFamily

_FAMILIES: dict[str, type[TaskFamily]] = {}

F = TypeVar("F", bound=type[TaskFamily])


def register_family(name: str) -> Callable[[F], F]:
    """Class decorator that registers a `TaskFamily` subclass under `name`.

    Raises:
        ValueError: If `name` is already registered.
    """

    def decorator(cls: F) -> F:
        if name in _FAMILIES:
            raise ValueError(f"task family {name!r} is already registered")
        cls.name = name
        _FAMILIES[name] = cls
        return cls

    return decorator


def family_names() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def make_family(name: str, **kwargs: Any) -> TaskFamily:
    """Builds the family `name` with its knobs.

    Args:
        name: A registered name (`mlp_digits`) or an import path to a `TaskFamily`
            subclass or factory (`mypkg.tasks:my_family`).
        **kwargs: The family's shape and free knobs.

    Raises:
        ValueError: For an unknown name (with the valid ones and a close match) or a
            knob the family does not take.
    """
    if ":" in name:
        factory = _import(name)
        family_name = name
    else:
        if name not in _FAMILIES:
            close = difflib.get_close_matches(name, _FAMILIES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown task family {name!r}.{hint} "
                f"Valid: {', '.join(family_names())}, or an import path 'pkg.mod:obj'."
            )
        factory = _FAMILIES[name]
        family_name = name
    try:
        family = factory(**kwargs)
    except TypeError as error:
        raise ValueError(f"task family {family_name!r}: {error}") from None
    if not isinstance(family, TaskFamily):
        raise ValueError(f"{name!r} did not build a TaskFamily (got {type(family)})")
    if not family.name:
        family.name = family_name
    return family


def _import(path: str) -> Callable[..., TaskFamily]:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import task family {path!r}: {error}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attribute!r}") from None
