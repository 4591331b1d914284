"""The task-family registry: a plain dict, a decorator to fill it, a factory to read it."""

from __future__ import annotations

import difflib
import importlib
import inspect
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
            subclass (`mypkg.tasks:MyFamily`).
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
                f"Valid: {', '.join(family_names())}, or an import path 'pkg.mod:Class'."
            )
        factory = _FAMILIES[name]
        family_name = name
    _check_knob_names(factory, family_name, kwargs)
    try:
        family = factory(**kwargs)
    except TypeError as error:
        raise ValueError(f"task family {family_name!r}: {error}") from None
    if not isinstance(family, TaskFamily):
        raise ValueError(f"{name!r} did not build a TaskFamily (got {type(family)})")
    if not family.name:
        family.name = family_name
    _check_horizon(family, family_name)
    return family


def _check_knob_names(
    factory: Callable[..., TaskFamily], name: str, kwargs: dict[str, Any]
) -> None:
    """An unknown knob is named with the family's knobs (and a close match)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # no signature to read: the call itself will tell
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    knobs = [k for k, p in parameters.items() if p.kind is not p.VAR_POSITIONAL]
    for key in kwargs:
        if key not in knobs:
            close = difflib.get_close_matches(key, knobs, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"task family {name!r} has no knob {key!r}{hint}; its knobs: "
                f"{', '.join(knobs) or 'none'}"
            )


def _check_horizon(family: TaskFamily, name: str) -> None:
    """A `horizon` knob (a value or `[low, high]`) must allow at least one step."""
    spec = getattr(family, "horizon", None)
    if spec is None:
        return
    values = [spec] if isinstance(spec, int | float) else list(spec)
    if not values or any(isinstance(v, bool) or not v >= 1 for v in values):
        raise ValueError(
            f"task family {name!r}: horizon must be >= 1 inner step, got {spec!r}"
        )


def _import(path: str) -> type[TaskFamily]:
    """The `TaskFamily` subclass at `pkg.mod:Class`.

    Only a subclass is accepted, and checked before anything is called: a config
    (say, a run folder someone hands you) must not be able to call an arbitrary
    function of an installed module (`os:system`) with arguments of its choosing.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import task family {path!r}: {error}") from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attribute!r}") from None
    if not (isinstance(found, type) and issubclass(found, TaskFamily)):
        raise ValueError(
            f"{path!r} is not a TaskFamily subclass; name a class that subclasses "
            "hyperpilot.envs.tasks.TaskFamily"
        )
    return found
