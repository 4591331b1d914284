"""The training config of `hyperpilot train`: one YAML file into frozen pydantic models.

A file has the sections `run`, `env`, `ppo`, `eval` and `logging`, each optional,
checked by `hyperpilot.schema`'s strict types. Nothing is `eval`'d: an activation is
a name (`tanh`), a schedule a mapping (`{kind: linear, start: 3.0e-4}`). Each env
knob is declared once, by the env: the `env` knobs are the fields of `EnvSettings`,
checked by its own checks; the `ppo` keys are those of SB3's `PPO`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from stable_baselines3 import PPO

from hyperpilot.bundle import ACTIVATIONS as ACTIVATION_CLASSES
from hyperpilot.envs.reward import RewardConfig
from hyperpilot.envs.settings import EnvSettings, resolve_device
from hyperpilot.envs.tasks.splits import (
    CONFIGS_DIR,
    HELDOUT_PREFIX,
    heldout_families,
    load_split,
)
from hyperpilot.envs.vec_env import groups_from
from hyperpilot.runtime import atomic_write_text
from hyperpilot.schema import (
    Bool,
    ConfigError,
    Float,
    Key,
    NonNegativeInt,
    PositiveInt,
    Str,
    StrictModel,
    by_kind,
    by_shape,
    choice,
    construct,
    expect,
    fields_of,
    integer,
    known_key,
    matching,
    number,
    one_line,
)

SECTIONS: Final = ("run", "env", "ppo", "eval", "logging")
_BUCKET_KEYS: Final = ("split", "family", "groups")  # the ways of naming env buckets
ACTIVATIONS: Final = tuple(ACTIVATION_CLASSES)

# EnvSettings fields that are no env keys: the device is run.device, and Adam's
# beta2 and eps are fixed.
_NOT_ENV_KEYS: Final = ("device", "beta2", "eps")
# Meta-training's own defaults where the env's suit evaluation and `gym.make`:
# a fifth of training episodes hide validation, so the pilot copes without it.
_TRAINING_DEFAULTS: Final = {"val_drop_prob": 0.2}
# A string stands for a mapping of this one field (YAML `reward: train_loss`).
_SHORTHANDS: Final = {RewardConfig: "kind"}
# PPO kwargs that hyperpilot sets itself, and where the user sets them instead.
_REFUSED_PPO_KEYS: Final = {
    "policy": "hyperpilot uses SB3's MlpPolicy; shape it with ppo.policy_kwargs",
    "env": "hyperpilot builds the env from the env section",
    "seed": "set run.seed instead",
    "device": "set run.policy_device instead",
    "verbose": "set logging.verbose instead",
    "tensorboard_log": "hyperpilot logs to the run folder (see the logging section)",
    "rollout_buffer_class": "a class cannot be named in a config",
    "_init_setup_model": "it is internal to SB3",
}
# (low, high, low_inclusive) for PPO kwargs whose SB3 asserts fail late or unclearly.
_PPO_RANGES: Final = {
    "learning_rate": (0.0, None, False),
    "n_steps": (1, None, True),
    "batch_size": (2, None, True),  # SB3 asserts batch_size > 1
    "n_epochs": (1, None, True),
    "gamma": (0.0, 1.0, True),
    "gae_lambda": (0.0, 1.0, True),
    "clip_range": (0.0, None, False),
    "clip_range_vf": (0.0, None, False),
    "ent_coef": (0.0, None, True),
    "vf_coef": (0.0, None, True),
    "max_grad_norm": (0.0, None, False),
    "target_kl": (0.0, None, False),
    "stats_window_size": (1, None, True),
}


# ------------------------------------------------------------------ schedules
@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """`start` at progress_remaining 1, `end` once `end_fraction` of training is done.

    A module-level class rather than a closure, so a saved PPO model pickles it.
    """

    start: float
    end: float = 0.0
    end_fraction: float = 1.0

    def __call__(self, progress_remaining: float) -> float:
        """The value at `progress_remaining` (1 at the start, 0 at the end)."""
        done = 1.0 - progress_remaining
        if done >= self.end_fraction:
            return self.end
        return self.start + done * (self.end - self.start) / self.end_fraction


@dataclasses.dataclass(frozen=True)
class ConstantSchedule:
    """The same value throughout training."""

    value: float

    def __call__(self, progress_remaining: float) -> float:
        """The value, whatever `progress_remaining` is."""
        del progress_remaining
        return self.value


# ------------------------------------------------------------------ sections
FolderName = matching(r"[\w.-]+", "a folder-safe name (letters, digits, _ . -)")
# Only the spelling is checked here: gpu.yaml must load on a CPU machine too.
Device = matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


class RunSection(StrictModel):
    """What the run is called, how it is seeded, how long it lasts, where it runs."""

    name: FolderName | None = None
    """Run-name prefix (letters, digits, _ . -); None means the config file's stem."""
    seed: NonNegativeInt = 0
    """Seed of PPO and of the inner runs' task draws."""
    total_timesteps: PositiveInt = 200_000
    """Meta-env steps to train for: decisions summed over all parallel runs."""
    device: Device = "auto"
    """Where the inner runs go: auto (CUDA when available), cpu, cuda or cuda:N."""
    policy_device: Device = "cpu"
    """Where the PPO policy goes (an MLP this small is fastest on the CPU)."""
    threads: PositiveInt = 1
    """Torch threads of the process (1 was fastest on 2-core machines)."""


class _Group(StrictModel):
    """One bucket of `env.groups`: a family, its number of runs, the family's knobs."""

    model_config = ConfigDict(extra="allow")
    family: Str
    """Task family (registered name or `pkg.mod:obj`)."""
    n: PositiveInt
    """Parallel inner runs of this bucket."""


class _Buckets(StrictModel):
    """Which task buckets run: the first keys of the env section."""

    split: Str | None = "train"
    """Task split (name in configs/tasks/ or a .yaml path); None with family/groups."""
    family: Str | None = None
    """One task family (registered name or `pkg.mod:obj`) instead of a split."""
    family_kwargs: dict[Key, Any] = Field(default_factory=dict)
    """Knobs of `family`."""
    groups: (
        Annotated[list[_Group], Field(min_length=1), expect("a non-empty list")] | None
    ) = None
    """Explicit buckets `[{family: NAME, n: COUNT, <knob>: <value>}, ...]`."""
    n: PositiveInt = 64
    """Parallel inner runs (PPO's n_envs); with groups, the sum of their n."""


_ENV_KNOBS = fields_of(EnvSettings, _NOT_ENV_KEYS, _SHORTHANDS, **_TRAINING_DEFAULTS)


class EnvSection(create_model("_EnvKnobs", __base__=_Buckets, **_ENV_KNOBS)):
    """The parallel inner runs: which task buckets, and how they are controlled.

    Buckets are named by exactly one of `split` (with `n` shared out among its
    families), `family` (with `family_kwargs` and `n`) or `groups` (`[{family, n,
    <knobs>}, ...]`, `n` their sum). The keys after `n` are the fields of
    `EnvSettings` but device, beta2 and eps: `reward` is a kind or a mapping of
    `RewardConfig` fields, `init` a mapping of `InitRanges` (`{lr: [1e-5, 0.1]}`).
    """

    normalize_observations: Bool = True
    """Wrap the env in VecNormalize with observation normalization."""
    normalize_rewards: Bool = True
    """Wrap the env in VecNormalize with return-based reward scaling."""

    @model_validator(mode="after")
    def _resolve(self) -> EnvSection:
        """Checks the knobs by the env's own checks; resolves the buckets (once, here)."""
        settings = construct(EnvSettings, {**self._knob_values(), "device": "cpu"})
        for name in _ENV_KNOBS:  # as the env normalized them (controlled's order)
            object.__setattr__(self, name, getattr(settings, name))
        given = self.model_fields_set
        if "split" not in given and (self.family or self.groups) is not None:
            object.__setattr__(self, "split", None)  # the default split gives way
        ways = [k for k in _BUCKET_KEYS if getattr(self, k) is not None]
        if len(ways) != 1:
            which = f", not {' and '.join(ways)}" if ways else " (all are null)"
            raise ConfigError(f"env: give one of split, family or groups{which}")
        if self.family_kwargs and self.family is None:
            raise ConfigError("env.family_kwargs is given without env.family")
        if self.groups is not None:
            total = sum(group.n for group in self.groups)
            if "n" in given and self.n != total:
                raise ConfigError(
                    f"env.n={self.n} differs from the sum of the groups' n ({total}); "
                    "with groups, give n per group"
                )
            object.__setattr__(self, "n", total)
        if self.split is not None:
            _check_split(self.split, "env.split")
        try:
            buckets = groups_from(**self.buckets())
        except ValueError as error:
            raise ConfigError(f"env: {error}") from None
        for index, bucket in enumerate(buckets):
            path = (
                f"env.groups[{index}]" if self.groups is not None else f"env.{ways[0]}"
            )
            _refuse_heldout(bucket.spec.family, path)
            try:
                bucket.spec.build()  # families draw data at sample time (data_file reads its file)
            except ValueError as error:
                raise ConfigError(f"{path}: {error}") from None
        return self

    def _knob_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ENV_KNOBS}

    def settings(self, device: str) -> EnvSettings:
        """The engine settings, with `device` (`run.device` or a command-line override).

        Raises:
            ConfigError: If the device is invalid or not available here.
        """
        try:
            settings = EnvSettings(**self._knob_values(), device=device)
            settings.check_capture(resolve_device(device))
            return settings
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def buckets(self) -> dict[str, Any]:
        """The bucket kwargs of `BatchedTrainingVecEnv`: split, family or groups."""
        if self.groups is not None:
            return {"groups": _plain(self.groups)}
        if self.family is not None:
            kwargs = copy.deepcopy(self.family_kwargs)
            return {"family": self.family, "family_kwargs": kwargs, "n": self.n}
        return {"split": self.split, "n": self.n}

    def venv_kwargs(self, device: str) -> dict[str, Any]:
        """The kwargs of `BatchedTrainingVecEnv`: `buckets()` and `EnvSettings` fields."""
        kwargs = self.buckets()
        kwargs.update(_plain(self.settings(device).to_kwargs()))
        return kwargs


def _schedule(low: float | None, high: float | None) -> Any:
    """`{kind: linear, start, end, end_fraction}` or `{kind: constant, value}`."""
    value = number(low, high)  # a schedule may reach its lower bound, e.g. lr 0
    fraction = number(0.0, 1.0, low_inclusive=False)
    linear = create_model(
        "LinearSpec",
        __base__=StrictModel,
        kind=Literal["linear"],
        start=value,
        end=(value, 0.0),
        end_fraction=(fraction, 1.0),
    )
    constant = create_model(
        "ConstantSpec", __base__=StrictModel, kind=Literal["constant"], value=value
    )
    return by_kind(linear, constant)


Layers = Annotated[list[PositiveInt], expect("a list of layer sizes, e.g. [64, 64]")]
PerNetwork = dict[Annotated[str, AfterValidator(known_key(["pi", "vf"]))], Layers]


class _PolicyKwargs(StrictModel):
    """The `policy_kwargs` of SB3's MlpPolicy that a config can express."""

    net_arch: by_shape(Layers, PerNetwork) = (64, 64)  # SB3's default for PPO
    """Hidden layer sizes, shared or `{pi: [...], vf: [...]}`."""
    activation_fn: choice(ACTIVATIONS) = "tanh"  # SB3's default for PPO
    """Activation name."""
    ortho_init: Bool = True
    """Orthogonal initialization."""
    log_std_init: Float = 0.0
    """Initial log standard deviation of the Gaussian policy."""


def _ppo_fields() -> dict[str, Any]:
    """Fields of `PPO.__init__`'s kwargs, in its order, from its annotations."""
    fields = {}
    for name, param in inspect.signature(PPO.__init__).parameters.items():
        hint = param.annotation
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = typing.get_args(hint) if union else (hint,)
        parts = {typing.get_origin(p) or p for p in args}
        low, high, low_inclusive = _PPO_RANGES.get(name, (None, None, True))
        kinds = {
            float: number(low, high, low_inclusive),
            int: integer(low, high),
            bool: Bool,
            dict: _PolicyKwargs if name == "policy_kwargs" else dict[Key, Any],
        }
        value = next((kinds[k] for k in kinds if k in parts), None)
        if value is None or name in _REFUSED_PPO_KEYS:
            continue  # a class or an object that no config can name, or refused
        if Callable in parts:
            value = by_shape(value, _schedule(low, high))
        fields[name] = (value | None if type(None) in parts else value, None)
    return fields


# SB3 `PPO` kwargs: a field per kwarg of `PPO.__init__` that a config can express.
_PPO_KWARGS: Final = create_model(
    "PPOKwargs",
    __base__=StrictModel,
    refused=(ClassVar[Mapping[str, str]], _REFUSED_PPO_KEYS),
    **_ppo_fields(),
)


def _ppo_values(data: Any) -> Any:
    """The YAML's PPO kwargs, validated, as `PPOSection(values=...)`'s mapping."""
    if isinstance(data, PPOSection):
        return data
    kwargs = _PPO_KWARGS.model_validate(data)
    values = _given(kwargs, data)  # the kwargs given (in their order), no defaults
    if kwargs.policy_kwargs is not None:
        values["policy_kwargs"] = _given(kwargs.policy_kwargs, data["policy_kwargs"])
    return {"values": values}


class PPOSection(StrictModel):
    """SB3 `PPO` constructor kwargs, spelled exactly as SB3 spells them.

    `values` holds them as validated, YAML-safe values: schedules stay mappings and
    activations names; `kwargs()` turns them into what `PPO` takes.
    """

    values: dict[str, Any] = Field(default_factory=dict)
    """The validated kwargs, e.g. `{n_steps: 16, learning_rate: 0.0003}`."""

    def kwargs(self) -> dict[str, Any]:
        """Kwargs ready for `PPO(policy, env, **kwargs)`, in a fresh dict.

        Schedule mappings become callables of `progress_remaining` (1 at the start,
        0 at the end) and activation names `torch.nn` classes.
        """
        result = copy.deepcopy(self.values)
        for key, value in result.items():
            if isinstance(value, Mapping) and "kind" in value:
                result[key] = make_schedule(value)
        if "activation_fn" in (result.get("policy_kwargs") or {}):
            activation = ACTIVATION_CLASSES[self.activation_name()]
            result["policy_kwargs"]["activation_fn"] = activation
        return result

    def activation_name(self) -> str:
        """The policy's activation name (SB3's default for PPO is tanh)."""
        return self._policy_kwargs().activation_fn

    def net_arch_pi(self) -> list[int]:
        """The actor's hidden layer sizes (SB3's default for PPO is [64, 64])."""
        net_arch = self._policy_kwargs().net_arch
        pi = net_arch.get("pi", []) if isinstance(net_arch, Mapping) else net_arch
        return list(pi)

    def _policy_kwargs(self) -> _PolicyKwargs:
        return _PolicyKwargs.model_validate(self.values.get("policy_kwargs") or {})


class EvalSection(StrictModel):
    """Periodic evaluation on a task split, which picks the best checkpoint."""

    split: Str = "val"
    """Task split evaluated on (never heldout: that is for the final judgement)."""
    freq: NonNegativeInt = 20_000
    """Meta-env steps between evaluations; 0 disables them."""
    instances: PositiveInt = 2
    """Instances drawn per family of the split."""
    seed: NonNegativeInt = 12345
    """Seed of the evaluation draws, the same at every evaluation."""
    deterministic: Bool = True
    """Act with the policy's mean action, as SB3 advises for evaluation."""

    @field_validator("split")
    @classmethod
    def _usable(cls, split: str) -> str:
        _check_split(split, "eval.split")
        return split


class LoggingSection(StrictModel):
    """Checkpoints, console output and plots."""

    checkpoint_freq: NonNegativeInt = 20_000
    """Meta-env steps between checkpoints; 0 disables them."""
    keep_checkpoints: PositiveInt = 3
    """Most recent checkpoints kept on disk."""
    progress_bar: Bool = True
    """Show SB3's progress bar."""
    verbose: choice((0, 1, 2)) = 0
    """SB3's verbosity: 0 quiet, 1 info, 2 debug."""
    plots: Bool = True
    """Write PNG plots of the learned schedules."""


class TrainConfig(StrictModel):
    """One training run: the five sections and the file they came from."""

    run: RunSection = Field(default_factory=RunSection)
    """Naming, seeding, length and devices of the run."""
    env: EnvSection = Field(default_factory=EnvSection)
    """The parallel inner runs."""
    ppo: Annotated[PPOSection, BeforeValidator(_ppo_values)] = Field(
        default_factory=PPOSection
    )
    """SB3 PPO kwargs."""
    eval: EvalSection = Field(default_factory=EvalSection)
    """Periodic evaluation."""
    logging: LoggingSection = Field(default_factory=LoggingSection)
    """Checkpoints and output."""
    source: str = Field("<dict>", exclude=True)
    """The file the config came from (not a key of the file)."""

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section written as `ppo:` with nothing under it keeps its defaults."""
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @property
    def name(self) -> str:
        """The run-name prefix: `run.name`, else the config file's stem."""
        if self.run.name is not None:
            return self.run.name
        stem = Path(self.source).stem
        return stem if re.fullmatch(r"[\w.-]+", stem) else "config"

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain YAML-safe values (without `source`)."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        return _plain({**sections, "ppo": self.ppo.values})


# ------------------------------------------------------------------ loading
DEFAULT_CONFIG: Final = CONFIGS_DIR / "train" / "default.yaml"
"""What an empty or partial config resolves onto."""


def available_configs() -> list[str]:
    """Names of the training configs shipped in configs/train/."""
    return sorted(p.stem for p in (CONFIGS_DIR / "train").glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """Resolves a bare name (`smoke`) to configs/train/smoke.yaml, or keeps a path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    return CONFIGS_DIR / "train" / f"{name_or_path}.yaml"


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, onto_default: bool = True
) -> TrainConfig:
    """Reads a training config and applies `--set` overrides.

    An empty or partial file resolves onto `configs/train/default.yaml`: the keys it
    leaves out take the default run's values (not SB3's defaults, which are sized
    for other problems). Naming the buckets one way (`env.family`) drops the default
    file's other way (`env.split`), as `--set` does.

    Args:
        path: A .yaml path, or a bare name of a shipped config (`default`, `smoke`).
        overrides: `a.b=value` strings; the value is parsed with `yaml.safe_load`
            (`ppo.n_steps=64`, `env.controlled=[lr]`).
        onto_default: Resolve onto `default.yaml` (False for a run folder's own,
            complete `config.yaml`).

    Returns:
        The validated config; a null `run.name` becomes the file's stem.

    Raises:
        ConfigError: If the file is missing or malformed, or a value is invalid.
    """
    file = config_path(path)
    data = _read(file, path)
    if onto_default and file.resolve() != DEFAULT_CONFIG.resolve():
        data = _merged(_read(DEFAULT_CONFIG, DEFAULT_CONFIG), data)
    config = load_config_dict(apply_overrides(data, overrides), source=str(file))
    if config.run.name is None:  # resolved here, so the written config keeps it
        run = config.run.model_copy(update={"name": config.name})
        config = config.model_copy(update={"run": run})
    return config


def _read(file: Path, asked: str | Path) -> dict[str, Any]:
    """The mapping of sections in a YAML file (empty for an empty file)."""
    if not file.is_file():
        raise ConfigError(
            f"training config {str(asked)!r} not found ({file}); shipped configs: "
            f"{', '.join(available_configs())}, or a path to a .yaml file"
        )
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{file}: invalid YAML{where}: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: expected a mapping of sections {list(SECTIONS)}")
    return dict(data)


def _merged(base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` laid over `base`: mappings merge key by key, other values replace."""
    result = copy.deepcopy(dict(base))
    for key, value in data.items():
        old = result.get(key)
        if key == "env" and isinstance(old, dict) and isinstance(value, Mapping):
            old = dict(old)
            for bucket in _BUCKET_KEYS:
                if value.get(bucket) is not None:
                    _replace_buckets(old, bucket, value[bucket])
            if isinstance(value.get("reward"), str):  # the kind-string shorthand
                value = {**value, "reward": {"kind": value["reward"]}}
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            result[key] = _merged(old, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def load_config_dict(data: Mapping[str, Any], source: str = "<dict>") -> TrainConfig:
    """Validates a nested mapping (as read from YAML) into a `TrainConfig`.

    Args:
        data: `{run: {...}, env: {...}, ppo: {...}, eval: {...}, logging: {...}}`.
        source: Where the mapping came from, kept in `TrainConfig.source`.

    Raises:
        ConfigError: For an unknown key, a wrong type or an invalid value.
    """
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as error:
        raise one_line(error) from None
    return config.model_copy(update={"source": str(source)})


def dump_config(config: TrainConfig, path: Path) -> None:
    """Writes the resolved config as YAML to `path` (e.g. `runs/<run>/config.yaml`)."""
    text = yaml.dump(config.to_dict(), Dumper=_Dumper, sort_keys=False)
    atomic_write_text(path, f"# resolved from {config.source}\n{text}")


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, with lists of scalars on one line (`[64, 64]`)."""

    def represent_list(self, data: list[Any]) -> yaml.Node:
        flow = all(not isinstance(item, list | dict) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str]
) -> dict[str, Any]:
    """Applies `a.b=value` overrides onto a copy of a nested mapping.

    Setting one of `env.split`, `env.family` or `env.groups` drops the others (and
    `env.family_kwargs`, or `env.n` for groups), so `--set env.family=mlp_digits`
    works on a config that names a split.

    Raises:
        ConfigError: For a malformed override.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        key, equals, text = str(override).partition("=")
        parts = key.strip().split(".")
        if not equals or not all(re.fullmatch(r"\w+", p) for p in parts):
            raise ConfigError(
                f"override {override!r} is malformed; write section.key=value, "
                "e.g. ppo.n_steps=64"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(
                f"override {override!r}: the value is not valid YAML"
            ) from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child, where = node.get(part), parts[: depth + 1]
            if where == ["env", "reward"] and isinstance(child, str):
                child = {"kind": child}  # the kind-string shorthand
            if child is not None and not isinstance(child, Mapping):
                raise ConfigError(
                    f"override {override!r}: {'.'.join(where)} is not a mapping"
                )
            node[part] = node = dict(child or {})
        node[parts[-1]] = value
        if len(parts) == 2 and parts[0] == "env" and parts[1] in _BUCKET_KEYS:
            _replace_buckets(node, parts[1], value)
    return result


def _replace_buckets(env: dict[str, Any], key: str, value: Any) -> None:
    """An override naming buckets one way drops the file's other way of naming them."""
    if value is None:
        return
    dropped = set(_BUCKET_KEYS) - {key}
    dropped |= {"family_kwargs"} if key != "family" else set()
    dropped |= {"n"} if key == "groups" else set()  # with groups, n is their sum
    for other in dropped:
        env.pop(other, None)


def make_schedule(spec: Mapping[str, Any]) -> Callable[[float], float]:
    """Turns a validated schedule mapping into a callable of `progress_remaining`."""
    values = {key: float(value) for key, value in spec.items() if key != "kind"}
    return (LinearSchedule if spec["kind"] == "linear" else ConstantSchedule)(**values)


def _check_split(name: str, path: str) -> None:
    """Refuses a held-out split, or one that does not load or names held-out families."""
    if Path(name).stem.startswith(HELDOUT_PREFIX):
        raise ConfigError(
            f"{path} names {name!r}: held-out splits are reserved for final "
            "evaluation (hyperpilot evaluate) and never used in training; "
            "use train for env.split and val for eval.split"
        )
    try:
        specs = load_split(name)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    for spec in specs:
        _refuse_heldout(spec.family, f"{path} ({name})")


def _refuse_heldout(family: str, path: str) -> None:
    """Refuses a family that only held-out splits list (`heldout_families`)."""
    if family in heldout_families():
        raise ConfigError(
            f"{path} names the held-out family {family!r}: held-out tasks judge a "
            "pilot and are never trained or validated on; choose a family of the "
            "train or val split"
        )


def _given(model: BaseModel, data: Mapping[str, Any]) -> dict[str, Any]:
    """The validated values of the keys `data` gives, in its order, as plain values."""
    return {key: _plain(getattr(model, key)) for key in data}


def _plain(value: Any) -> Any:
    """YAML-safe values: models, dataclasses and mappings as dicts, tuples as lists."""
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        value = {**fields, **(value.model_extra or {})}
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
