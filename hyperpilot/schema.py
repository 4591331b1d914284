"""Strict pydantic building blocks for YAML files, and their errors as one line.

PyYAML reads `3e-4` as the *string* '3e-4' (YAML 1.1 wants `3.0e-4`), so wherever a
number is expected a numeric string is converted; a bool stays strict (`yes`, `1`
and "true" are not `true`). An unknown key is refused with a close match and the
valid keys, and `one_line` turns a `ValidationError` into one line naming the key
path (`env.reward.kind must be one of [...], got 'x'; did you mean 'val_loss'?`).
`fields_of` makes model fields of a dataclass, which then checks its own values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    ValidationError,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hyperpilot.runtime import UserError

# Parts of pydantic's error locations that are no keys: the tags of the unions
# below (a schedule's kinds join them).
_NOT_KEYS: set[str] = {"scalar", "mapping"}


class ConfigError(UserError):
    """A problem with a config, as one line naming the key path."""


def _number(value: Any) -> Any:
    """A numeric string as its number; a bool or NaN is refused (infinity passes)."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a number")
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN is not a number here")
    return value


def expect(expected: str, choices: Sequence[Any] = ()) -> WrapValidator:
    """Any failure of the value itself reads `must be <expected>, got <value>`.

    A failure inside it (`net_arch[1]`, an unknown key) keeps its own, deeper error.
    """

    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as error:
            if any(e["loc"] or e["type"] == "unknown_key" for e in error.errors()):
                raise
            hint = did_you_mean(str(value), [str(c) for c in choices])
            message = f"must be {expected}, got {value!r}{hint}"
            raise PydanticCustomError("expected", message) from None

    return WrapValidator(check)


def _bounds(low: Any, high: Any, low_inclusive: bool = True) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]" if low_inclusive else f" in ({low}, {high}]"
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {low}"
    return f" <= {high}" if high is not None else ""


def integer(low: int | None = None, high: int | None = None) -> Any:
    """An int in [low, high]: 16.0 and '1e3' are ints, 1.5 and true are not."""
    message = expect(f"an int{_bounds(low, high)}")
    return Annotated[int, BeforeValidator(_number), Field(ge=low, le=high), message]


def number(low: Any = None, high: Any = None, low_inclusive: bool = True) -> Any:
    """A float from low to high: '3e-4' is one, true is not."""
    message = expect(f"a float{_bounds(low, high, low_inclusive)}")
    low_bound = Field(ge=low) if low_inclusive else Field(gt=low)
    return Annotated[
        float, BeforeValidator(_number), low_bound, Field(le=high), message
    ]


def choice(choices: Sequence[Any]) -> Any:
    """One of `choices`, with a close match in the error; `1.0` is the choice 1."""
    numeric = all(isinstance(c, int) for c in choices)
    convert = BeforeValidator(_number if numeric else lambda value: value)
    message = expect(f"one of {list(choices)}", choices)
    return Annotated[Literal[tuple(choices)], convert, message]


def matching(pattern: str, expected: str) -> Any:
    """A string that matches the regular expression `pattern` as a whole."""
    shape = StringConstraints(pattern=f"^(?:{pattern})$")
    return Annotated[str, Strict(), shape, expect(expected)]


def known_key(valid: Sequence[str]) -> Callable[[Any], Any]:
    """A check that raises the unknown-key error for a key not in `valid`."""

    def check(key: Any) -> Any:
        if key not in valid:
            hint = did_you_mean(str(key), valid)
            message = f"{hint}; valid keys: {', '.join(valid)}"
            raise PydanticCustomError("unknown_key", message, {"key": key})
        return key

    return check


def by_shape(scalar: Any, mapping: Any) -> Any:
    """`mapping` validates a mapping, `scalar` anything else: one error, not two."""
    return Annotated[
        Annotated[scalar, Tag("scalar")] | Annotated[mapping, Tag("mapping")],
        Discriminator(lambda v: "mapping" if isinstance(v, Mapping) else "scalar"),
    ]


def by_kind(*models: type[BaseModel]) -> Any:
    """Models told apart by their `kind` (a one-value `Literal`)."""
    kinds = [typing.get_args(m.model_fields["kind"].annotation)[0] for m in models]
    _NOT_KEYS.update(kinds)
    return Annotated[typing.Union[models], Field(discriminator="kind")]  # noqa: UP007


Bool = Annotated[bool, Strict(), expect("true or false")]
Int, NonNegativeInt, PositiveInt, Float = integer(), integer(0), integer(1), number()
Key = Annotated[str, Strict(), expect("a string key")]
Str = Annotated[str, Strict(), Field(min_length=1), expect("a non-empty string")]


class StrictModel(BaseModel):
    """Frozen; an unknown key is an error that suggests a close one.

    `refused` names keys that are refused with a reason (where to set them instead).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    refused: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and cls.model_config["extra"] == "forbid":
            check = known_key([k for k, f in cls.model_fields.items() if not f.exclude])
            for key in data:
                if key in cls.refused:
                    message = f"cannot be set here: {cls.refused[key]}"
                    raise PydanticCustomError("refused_key", message, {"key": key})
                check(key)
        return data


def fields_of(
    cls: type,
    skip: Iterable[str] = (),
    shorthands: Mapping[type, str] | None = None,
    **defaults: Any,
) -> dict[str, Any]:
    """`create_model` fields of the dataclass `cls`: its names, order, types, defaults.

    Args:
        cls: A dataclass whose own checks (`__post_init__`) validate its values.
        skip: Fields that are no keys.
        shorthands: `{dataclass: field}`: a string given for a nested dataclass of
            this type stands for that one field (YAML `reward: train_loss`).
        **defaults: Defaults that differ from the dataclass's.
    """
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name in defaults or f.default_factory is dataclasses.MISSING:
            default = Field(defaults.get(f.name, f.default))
        else:
            default = Field(default_factory=f.default_factory)
        fields[f.name] = (_field_type(hints[f.name], shorthands or {}), default)
    return {name: field for name, field in fields.items() if name not in skip}


def _field_type(hint: Any, shorthands: Mapping[type, str]) -> Any:
    """The strict type of a dataclass field's annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (bool, int, float, str):
        return {bool: Bool, int: Int, float: Float, str: Str}[hint]
    if origin is Literal:
        return choice(args)
    if origin is tuple:  # `(a, ...)`: a list, a string a list of one; `(a, b)`: a range
        variadic = args[1:] == (Ellipsis,)
        size = {} if variadic else {"min_length": len(args), "max_length": len(args)}
        return Annotated[
            list[_field_type(args[0], shorthands)],
            BeforeValidator(lambda v: [v] if variadic and isinstance(v, str) else v),
            Field(**size),
            AfterValidator(tuple),
            expect("a list" if variadic else "a range [low, high]"),
        ]
    if dataclasses.is_dataclass(hint):
        fields = create_model(
            hint.__name__, __base__=StrictModel, **fields_of(hint, (), shorthands)
        )
        shorthand = shorthands.get(hint)
        mapping = f"a mapping of {list(fields.model_fields)}"
        return Annotated[
            fields,
            expect(f"a {shorthand} or {mapping}" if shorthand else mapping),
            BeforeValidator(
                lambda v: {shorthand: v} if shorthand and isinstance(v, str) else v
            ),
            AfterValidator(lambda values: construct(hint, dict(values))),
        ]
    raise TypeError(f"no strict type for a dataclass field of type {hint!r}")


def construct(cls: Callable[..., Any], values: Mapping[str, Any]) -> Any:
    """`cls(**values)`; an error of its own checks that starts with a key names it."""
    try:
        return cls(**values)
    except ValueError as error:
        key, _, rest = str(error).partition(" ")
        if key not in values:
            raise
        raise PydanticCustomError("checked", rest, {"key": key}) from None


def one_line(error: ValidationError) -> ConfigError:
    """The first error pydantic found, as one line naming its key path."""
    first = error.errors()[0]
    kind, context, got = first["type"], first.get("ctx", {}), first["input"]
    loc = list(first["loc"])
    if loc[-1:] == ["[key]"]:  # about a mapping's key: the error names the key itself
        del loc[-2:]
    loc = [part for part in loc if part not in _NOT_KEYS]
    path = _dotted([*loc, context["key"]] if "key" in context else loc)
    if kind == "value_error":  # a ConfigError names its own path; the env's do not
        cause = context["error"]
        return (
            cause if isinstance(cause, ConfigError) else ConfigError(f"{path}: {cause}")
        )
    if kind == "unknown_key":
        return ConfigError(f"unknown key {path!r}{first['msg']}")
    if kind == "union_tag_invalid":  # a kind that no model of `by_kind` has
        choices = [c.strip("' ") for c in context["expected_tags"].split(",")]
        got = f"{context['tag']!r}{did_you_mean(context['tag'], choices)}"
        return ConfigError(f"{path}.kind must be one of {choices}, got {got}")
    if kind in ("model_type", "dict_type"):
        where = f"section {path!r}" if len(loc) == 1 else path or "the file"
        return ConfigError(f"{where} must be a mapping, got {got!r}")
    tails = {"missing": "is required", "union_tag_not_found": "needs a kind"}
    return ConfigError(f"{path} {tails.get(kind, first['msg'])}")


def _dotted(loc: Iterable[Any]) -> str:
    """`('env', 'groups', 0, 'n')` as `env.groups[0].n`."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return text.removeprefix(".")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
