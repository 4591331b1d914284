"""The training config of `hyperpilot train`: one YAML file into frozen dataclasses.

A file has the sections `run`, `env`, `ppo`, `eval` and `logging`, each optional.
Unknown keys are errors (with a close match), and every error is one line naming
the key path. Nothing is `eval`'d: an activation is a name (`tanh`) and a schedule
a mapping (`{kind: linear, start: 3.0e-4, end: 0.0}`).

PyYAML reads `3e-4` as the *string* '3e-4' (YAML 1.1 wants `3.0e-4`), so wherever a
float is expected a numeric string is converted, and anything else fails clearly.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import yaml
from stable_baselines3 import PPO

from hyperpilot.bundle import ACTIVATIONS as ACTIVATION_CLASSES
from hyperpilot.envs.actions import ACTION_MODES, HPARAM_NAMES
from hyperpilot.envs.episodes import InitRanges
from hyperpilot.envs.reward import REWARD_KINDS, RewardConfig
from hyperpilot.envs.settings import DTYPES, EnvSettings
from hyperpilot.envs.tasks.splits import CONFIGS_DIR, load_split
from hyperpilot.envs.vec_env import groups_from
from hyperpilot.runtime import UserError

SECTIONS: Final = ("run", "env", "ppo", "eval", "logging")
HELDOUT_SPLIT: Final = "heldout"
ACTIVATIONS: Final = tuple(ACTIVATION_CLASSES)
SCHEDULE_KINDS: Final = ("linear", "constant")
POLICY_KWARGS: Final = ("net_arch", "activation_fn", "ortho_init", "log_std_init")
# SB3's defaults for PPO's MlpPolicy (ActorCriticPolicy).
DEFAULT_NET_ARCH: Final = (64, 64)
DEFAULT_ACTIVATION: Final = "tanh"

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
_DEVICE_PATTERN: Final = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(UserError):
    """A problem with a training config, as one line naming the key path."""


# ------------------------------------------------------------------ schedules
@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ConstantSchedule:
    """The same value throughout training."""

    value: float

    def __call__(self, progress_remaining: float) -> float:
        """The value, whatever `progress_remaining` is."""
        del progress_remaining
        return self.value


# ------------------------------------------------------------------ sections
@dataclass(frozen=True)
class RunSection:
    """What the run is called, how it is seeded, how long it lasts, where it runs."""

    name: str | None = None
    """Run-name prefix; None means the config file's stem."""
    seed: int = 0
    """Seed of PPO and of the inner runs' task draws."""
    total_timesteps: int = 200_000
    """Meta-env steps to train for: decisions summed over all parallel runs."""
    device: str = "auto"
    """Where the inner runs go: auto (CUDA when available), cpu, cuda or cuda:N."""
    policy_device: str = "cpu"
    """Where the PPO policy goes (an MLP this small is fastest on the CPU)."""
    threads: int = 1
    """Torch threads of the process (1 was fastest on 2-core machines)."""


@dataclass(frozen=True)
class EnvSection:
    """The parallel inner runs: which task buckets, and how they are controlled.

    Buckets are named by exactly one of `split` (with `n` shared out among its
    families), `family` (with `family_kwargs` and `n`) or `groups`
    (`[{family, n, <knobs>}, ...]`, where `n` is the sum of the groups' n).
    """

    split: str | None = "train"
    """Task split (name in configs/tasks/ or a .yaml path); None with family/groups."""
    family: str | None = None
    """One task family (registered name or `pkg.mod:obj`) instead of a split."""
    family_kwargs: dict[str, Any] = field(default_factory=dict)
    """Knobs of `family`."""
    groups: list[dict[str, Any]] | None = None
    """Explicit buckets `[{family: NAME, n: COUNT, <knob>: <value>}, ...]`."""
    n: int = 64
    """Parallel inner runs (PPO's n_envs); with groups, the sum of their n."""
    decision_interval: int = 10
    """K: inner optimizer steps between two decisions."""
    action_mode: str = "compound"
    """`compound` (deltas accumulate) or `residual` (deltas act on warmup + cosine)."""
    controlled: tuple[str, ...] = HPARAM_NAMES
    """Hyperparameters the policy moves, a subset of (lr, beta1, clip)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward definition (YAML: a kind string or a mapping of RewardConfig fields)."""
    init: InitRanges = field(default_factory=InitRanges)
    """Ranges of the initial hyperparameters (YAML: `{lr: [lo, hi], ...}`)."""
    val_drop_prob: float = 0.2
    """Share of episodes whose observation hides validation, so the pilot copes."""
    divergence_factor: float = 100.0
    """A run diverges when its loss exceeds this times its first loss."""
    dtype: str = "float32"
    """Dtype of the inner runs: float32 or float64."""
    compile: bool = False
    """`torch.compile` the batched gradient step (pays off on long GPU runs)."""
    normalize_observations: bool = True
    """Wrap the env in VecNormalize with observation normalization."""
    normalize_rewards: bool = True
    """Wrap the env in VecNormalize with return-based reward scaling."""

    def settings(self, device: str) -> EnvSettings:
        """Builds the engine settings.

        Args:
            device: Where the inner runs go (`run.device`, or a command-line override).

        Returns:
            The `EnvSettings` of this section.

        Raises:
            ConfigError: If the device is invalid or not available here.
        """
        try:
            return EnvSettings(
                decision_interval=self.decision_interval,
                reward=self.reward,
                action_mode=self.action_mode,
                controlled=self.controlled,
                init=self.init,
                val_drop_prob=self.val_drop_prob,
                divergence_factor=self.divergence_factor,
                device=device,
                dtype=self.dtype,
                compile=self.compile,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def buckets(self) -> dict[str, Any]:
        """The bucket kwargs of `BatchedTrainingVecEnv`: split, family or groups."""
        if self.groups is not None:
            return {"groups": copy.deepcopy(self.groups)}
        if self.family is not None:
            return {
                "family": self.family,
                "family_kwargs": copy.deepcopy(self.family_kwargs),
                "n": self.n,
            }
        return {"split": self.split, "n": self.n}

    def venv_kwargs(self, device: str) -> dict[str, Any]:
        """Exactly the kwargs of `BatchedTrainingVecEnv(**kwargs)`, as plain values.

        Args:
            device: Where the inner runs go (`run.device`, or a command-line override).

        Returns:
            The bucket kwargs (see `buckets`) plus every `EnvSettings` field.
        """
        settings = self.settings(device)
        kwargs = self.buckets()
        kwargs.update((k, _plain(v)) for k, v in settings.to_kwargs().items())
        return kwargs


@dataclass(frozen=True)
class PPOSection:
    """SB3 `PPO` constructor kwargs, spelled exactly as SB3 spells them.

    `values` holds them as validated, YAML-safe values: schedules stay mappings and
    activations names; `kwargs()` turns them into what `PPO` takes.
    """

    values: dict[str, Any] = field(default_factory=dict)
    """The validated kwargs, e.g. `{n_steps: 16, learning_rate: 0.0003}`."""

    def kwargs(self) -> dict[str, Any]:
        """Kwargs ready for `PPO(policy, env, **kwargs)`.

        Returns:
            A fresh dict; schedule mappings become callables of `progress_remaining`
            (1 at the start, 0 at the end) and activation names `torch.nn` classes.
        """
        result = copy.deepcopy(self.values)
        for key, value in result.items():
            if isinstance(value, Mapping) and "kind" in value:
                result[key] = make_schedule(value)
        policy_kwargs = result.get("policy_kwargs")
        if policy_kwargs and "activation_fn" in policy_kwargs:
            policy_kwargs["activation_fn"] = activation_class(
                policy_kwargs["activation_fn"]
            )
        return result

    def activation_name(self) -> str:
        """The policy's activation name (SB3's default for PPO is tanh)."""
        policy_kwargs = self.values.get("policy_kwargs") or {}
        return policy_kwargs.get("activation_fn", DEFAULT_ACTIVATION)

    def net_arch_pi(self) -> list[int]:
        """The actor's hidden layer sizes (SB3's default for PPO is [64, 64])."""
        policy_kwargs = self.values.get("policy_kwargs") or {}
        net_arch = policy_kwargs.get("net_arch", DEFAULT_NET_ARCH)
        if isinstance(net_arch, Mapping):
            return list(net_arch.get("pi", []))
        return list(net_arch)


@dataclass(frozen=True)
class EvalSection:
    """Periodic evaluation on a task split, which picks the best checkpoint."""

    split: str = "val"
    """Task split evaluated on (never heldout: that is for the final judgement)."""
    freq: int = 20_000
    """Meta-env steps between evaluations; 0 disables them."""
    instances: int = 2
    """Instances drawn per family of the split."""
    seed: int = 12345
    """Seed of the evaluation draws, the same at every evaluation."""
    deterministic: bool = True
    """Act with the policy's mean action, as SB3 advises for evaluation."""


@dataclass(frozen=True)
class LoggingSection:
    """Checkpoints, console output and plots."""

    checkpoint_freq: int = 20_000
    """Meta-env steps between checkpoints; 0 disables them."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept on disk."""
    progress_bar: bool = True
    """Show SB3's progress bar."""
    verbose: int = 0
    """SB3's verbosity: 0 quiet, 1 info, 2 debug."""
    plots: bool = True
    """Write PNG plots of the learned schedules."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run: the five sections and the file they came from."""

    run: RunSection = field(default_factory=RunSection)
    """Naming, seeding, length and devices of the run."""
    env: EnvSection = field(default_factory=EnvSection)
    """The parallel inner runs."""
    ppo: PPOSection = field(default_factory=PPOSection)
    """SB3 PPO kwargs."""
    eval: EvalSection = field(default_factory=EvalSection)
    """Periodic evaluation."""
    logging: LoggingSection = field(default_factory=LoggingSection)
    """Checkpoints and output."""
    source: str = "<dict>"
    """The file the config came from."""

    @property
    def name(self) -> str:
        """The run-name prefix: `run.name`, else the config file's stem."""
        if self.run.name is not None:
            return self.run.name
        stem = Path(self.source).stem
        return stem if re.fullmatch(r"[\w.-]+", stem) else "config"

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain YAML-safe values (without `source`)."""
        env = {
            f.name: _plain(getattr(self.env, f.name))
            for f in dataclasses.fields(EnvSection)
        }
        return {
            "run": _plain(dataclasses.asdict(self.run)),
            "env": env,
            "ppo": _plain(self.ppo.values),
            "eval": _plain(dataclasses.asdict(self.eval)),
            "logging": _plain(dataclasses.asdict(self.logging)),
        }


# ------------------------------------------------------------------ loading
def available_configs() -> list[str]:
    """Names of the training configs shipped in configs/train/."""
    return sorted(p.stem for p in (CONFIGS_DIR / "train").glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """Resolves a bare name (`smoke`) to configs/train/smoke.yaml, or keeps a path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    return CONFIGS_DIR / "train" / f"{name_or_path}.yaml"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Reads a training config and applies `--set` overrides.

    Args:
        path: A .yaml path, or a bare name of a shipped config (`default`, `smoke`).
        overrides: `a.b=value` strings; the value is parsed with `yaml.safe_load`
            (`ppo.n_steps=64`, `env.controlled=[lr]`).

    Returns:
        The validated config; a null `run.name` becomes the file's stem.

    Raises:
        ConfigError: If the file is missing or malformed, or a value is invalid.
    """
    file = config_path(path)
    if not file.is_file():
        raise ConfigError(
            f"training config {str(path)!r} not found ({file}); shipped configs: "
            f"{', '.join(available_configs())}, or a path to a .yaml file"
        )
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{file}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: expected a mapping of sections {list(SECTIONS)}")
    config = load_config_dict(apply_overrides(data, overrides), source=str(file))
    if config.run.name is None:  # resolved here, so the written config keeps it
        run = dataclasses.replace(config.run, name=config.name)
        config = dataclasses.replace(config, run=run)
    return config


def load_config_dict(data: Mapping[str, Any], source: str = "<dict>") -> TrainConfig:
    """Validates a nested mapping (as read from YAML) into a `TrainConfig`.

    Args:
        data: `{run: {...}, env: {...}, ppo: {...}, eval: {...}, logging: {...}}`.
        source: Where the mapping came from, kept in `TrainConfig.source`.

    Returns:
        The validated config.

    Raises:
        ConfigError: For an unknown key, a wrong type or an invalid value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of sections {list(SECTIONS)}")
    _check_keys(data, SECTIONS, "")
    sections = {name: _section(data, name) for name in SECTIONS}
    return TrainConfig(
        run=_run_section(sections["run"]),
        env=_env_section(sections["env"]),
        ppo=_ppo_section(sections["ppo"]),
        eval=_eval_section(sections["eval"]),
        logging=_logging_section(sections["logging"]),
        source=str(source),
    )


def dump_config(config: TrainConfig, path: Path) -> None:
    """Writes the resolved config as YAML (to a temp file, then renamed into place).

    Args:
        config: The config to write.
        path: The destination, e.g. `runs/<run>/config.yaml`.
    """
    path = Path(path)
    text = f"# resolved from {config.source}\n" + yaml.dump(
        config.to_dict(), Dumper=_Dumper, sort_keys=False
    )
    descriptor, temp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


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
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif parts[: depth + 1] == ["env", "reward"] and isinstance(child, str):
                child = node[part] = {"kind": child}  # the kind-string shorthand
            elif isinstance(child, Mapping):
                child = node[part] = dict(child)
            else:
                raise ConfigError(
                    f"override {override!r}: {'.'.join(parts[: depth + 1])} "
                    "is not a mapping"
                )
            node = child
        node[parts[-1]] = value
        if parts[:1] == ["env"] and parts[1:] in (["split"], ["family"], ["groups"]):
            _replace_buckets(node, parts[1], value)
    return result


def _replace_buckets(env: dict[str, Any], key: str, value: Any) -> None:
    """An override naming buckets one way drops the file's other way of naming them."""
    if value is None:
        return
    for other in ("split", "family", "groups"):
        if other != key:
            env.pop(other, None)
    if key != "family":
        env.pop("family_kwargs", None)
    if key == "groups":
        env.pop("n", None)  # with groups, n is their sum


def make_schedule(spec: Mapping[str, Any]) -> Callable[[float], float]:
    """Turns a validated schedule mapping into a callable of `progress_remaining`."""
    if spec["kind"] == "linear":
        return LinearSchedule(
            float(spec["start"]),
            float(spec.get("end", 0.0)),
            float(spec.get("end_fraction", 1.0)),
        )
    return ConstantSchedule(float(spec["value"]))


def activation_class(name: str) -> type:
    """The `torch.nn` activation class of a name in `ACTIVATIONS`."""
    return ACTIVATION_CLASSES[name]


# ------------------------------------------------------------------ sections
def _run_section(data: Mapping[str, Any]) -> RunSection:
    values = _fields(RunSection, data, "run")
    checks = {
        "name": _optional(_name),
        "seed": _int(0),
        "total_timesteps": _int(1),
        "device": _device,
        "policy_device": _device,
        "threads": _int(1),
    }
    return RunSection(**_convert(values, checks, "run"))


def _eval_section(data: Mapping[str, Any]) -> EvalSection:
    values = _fields(EvalSection, data, "eval")
    checks = {
        "split": _str,
        "freq": _int(0),
        "instances": _int(1),
        "seed": _int(0),
        "deterministic": _bool,
    }
    values = _convert(values, checks, "eval")
    if "split" in values:
        _check_split(values["split"], "eval.split")
    return EvalSection(**values)


def _logging_section(data: Mapping[str, Any]) -> LoggingSection:
    values = _fields(LoggingSection, data, "logging")
    checks = {
        "checkpoint_freq": _int(0),
        "keep_checkpoints": _int(1),
        "progress_bar": _bool,
        "verbose": _choice_int((0, 1, 2)),
        "plots": _bool,
    }
    return LoggingSection(**_convert(values, checks, "logging"))


def _env_section(data: Mapping[str, Any]) -> EnvSection:
    values = _fields(EnvSection, data, "env")
    checks: dict[str, Callable[[Any, str], Any]] = {
        "split": _optional(_str),
        "family": _optional(_str),
        "family_kwargs": _plain_mapping,
        "groups": _optional(_groups),
        "n": _int(1),
        "decision_interval": _int(1),
        "action_mode": _choice(ACTION_MODES),
        "controlled": _controlled,
        "reward": _reward,
        "init": _init,
        "val_drop_prob": _float(0.0, 1.0),
        "divergence_factor": _float(1.0, None, low_inclusive=False),
        "dtype": _choice(tuple(DTYPES)),
        "compile": _bool,
        "normalize_observations": _bool,
        "normalize_rewards": _bool,
    }
    values = _convert(values, checks, "env")
    _resolve_buckets(values)
    section = EnvSection(**values)
    try:  # the engine's own checks, as a backstop for the ones above
        section.settings("cpu")
    except ConfigError as error:
        raise ConfigError(f"env.{error}") from None
    return section


def _resolve_buckets(values: dict[str, Any]) -> None:
    """Picks one of split/family/groups and checks the buckets they name."""
    given = [k for k in ("split", "family", "groups") if values.get(k) is not None]
    if len(given) > 1:
        raise ConfigError(
            f"env: give one of split, family or groups, not {' and '.join(given)}"
        )
    if not given and "split" in values:
        raise ConfigError("env: give one of split, family or groups (all are null)")
    if given and given[0] != "split":
        values["split"] = None
    if values.get("family_kwargs") and values.get("family") is None:
        raise ConfigError("env.family_kwargs is given without env.family")
    groups = values.get("groups")
    if groups is not None:
        total = sum(g["n"] for g in groups)
        if "n" in values and values["n"] != total:
            raise ConfigError(
                f"env.n={values['n']} differs from the sum of the groups' n ({total}); "
                "with groups, give n per group"
            )
        values["n"] = total
        for index, group in enumerate(groups):
            _check_not_heldout(group["family"], f"env.groups[{index}].family")
    if values.get("family") is not None:
        _check_not_heldout(values["family"], "env.family")
    split = values.get("split", EnvSection.split)
    if split is not None:
        _check_split(split, "env.split")
    kwargs = {k: values.get(k) for k in ("family", "family_kwargs", "groups")}
    kwargs["split"] = split
    if groups is None:
        kwargs["n"] = values.get("n", EnvSection.n)
    try:
        buckets = groups_from(**kwargs)
    except ValueError as error:
        raise ConfigError(f"env: {error}") from None
    for index, bucket in enumerate(buckets):
        if groups is not None:
            path = f"env.groups[{index}]"
        else:
            path = "env.family" if split is None else "env.split"
        try:
            bucket.spec.build()  # families draw data at sample time (data_file reads its file)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None


def _ppo_section(data: Mapping[str, Any]) -> PPOSection:
    params = _ppo_parameters()
    values = {}
    for key, value in data.items():
        path = f"ppo.{key}"
        if key in _REFUSED_PPO_KEYS:
            raise ConfigError(
                f"{path} cannot be set under ppo: {_REFUSED_PPO_KEYS[key]}"
            )
        if key not in params:
            raise ConfigError(
                _unknown(path, key, [k for k in params if k not in _REFUSED_PPO_KEYS])
            )
        if key == "policy_kwargs":
            values[key] = _policy_kwargs(value, path)
        else:
            values[key] = _ppo_value(value, _kinds(params[key]), path)
    return PPOSection(values)


@cache
def _ppo_parameters() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(PPO.__init__).parameters
    return {k: p for k, p in parameters.items() if k != "self"}


def _kinds(param: inspect.Parameter) -> frozenset[str]:
    """What a PPO kwarg takes, from its annotation (or, failing that, its default)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        default = param.default
        if default is None:
            return frozenset({"none"})
        return frozenset({type(default).__name__})
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = typing.get_args(annotation)
    else:
        parts = (annotation,)
    kinds = set()
    for part in parts:
        origin = typing.get_origin(part) or part
        if part is type(None):
            kinds.add("none")
        elif part in (bool, int, float, str):
            kinds.add(part.__name__)
        elif origin is Callable:
            kinds.add("schedule")
        elif origin in (dict, Mapping):
            kinds.add("dict")
        else:
            kinds.add("other")
    return frozenset(kinds)


def _ppo_value(value: Any, kinds: frozenset[str], path: str) -> Any:
    name = path.rpartition(".")[2]
    low, high, low_inclusive = _PPO_RANGES.get(name, (None, None, True))
    if value is None and "none" in kinds:
        return None
    if isinstance(value, Mapping) and "schedule" in kinds:
        return _schedule(value, path)
    if isinstance(value, Mapping) and "dict" in kinds:
        return _plain_mapping(value, path)
    if "bool" in kinds and isinstance(value, bool):
        return value
    if "float" in kinds:
        return _float(low, high, low_inclusive=low_inclusive)(value, path)
    if "int" in kinds:
        return _int(low, high)(value, path)
    if "str" in kinds and isinstance(value, str):
        return value
    wanted = [
        {
            "float": "a float",
            "int": "an int",
            "bool": "a bool",
            "str": "a string",
            "none": "null",
            "schedule": "a schedule {kind: linear, start, end} or {kind: constant, value}",
            "dict": "a mapping",
        }[kind]
        for kind in sorted(kinds - {"other"})
    ]
    raise ConfigError(f"{path} must be {' or '.join(wanted)}, got {value!r}")


def _schedule(value: Mapping[str, Any], path: str) -> dict[str, Any]:
    name = path.rpartition(".")[2]
    low, high, _ = _PPO_RANGES.get(name, (None, None, True))
    kind = value.get("kind")
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(
            f"{path}.kind must be one of {list(SCHEDULE_KINDS)}, got {kind!r}"
            + _did_you_mean(str(kind), SCHEDULE_KINDS)
        )
    number = _float(low, high)  # a schedule may reach its lower bound, e.g. lr 0
    if kind == "linear":
        _check_keys(value, ("kind", "start", "end", "end_fraction"), path)
        if "start" not in value:
            raise ConfigError(f"{path}: a linear schedule needs start")
        return {
            "kind": "linear",
            "start": number(value["start"], f"{path}.start"),
            "end": number(value.get("end", 0.0), f"{path}.end"),
            "end_fraction": _float(0.0, 1.0, low_inclusive=False)(
                value.get("end_fraction", 1.0), f"{path}.end_fraction"
            ),
        }
    _check_keys(value, ("kind", "value"), path)
    if "value" not in value:
        raise ConfigError(f"{path}: a constant schedule needs value")
    return {"kind": "constant", "value": number(value["value"], f"{path}.value")}


def _policy_kwargs(value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping of {list(POLICY_KWARGS)}")
    _check_keys(value, POLICY_KWARGS, path)
    result: dict[str, Any] = {}
    for key, item in value.items():
        key_path = f"{path}.{key}"
        if key == "net_arch":
            result[key] = _net_arch(item, key_path)
        elif key == "activation_fn":
            result[key] = _choice(ACTIVATIONS)(item, key_path)
        elif key == "ortho_init":
            result[key] = _bool(item, key_path)
        else:
            result[key] = _float()(item, key_path)
    return result


def _net_arch(value: Any, path: str) -> list[int] | dict[str, list[int]]:
    def layers(item: Any, item_path: str) -> list[int]:
        if not isinstance(item, list | tuple):
            raise ConfigError(
                f"{item_path} must be a list of layer sizes, e.g. [64, 64]; "
                f"got {item!r}"
            )
        return [_int(1)(size, f"{item_path}[{i}]") for i, size in enumerate(item)]

    if isinstance(value, Mapping):
        _check_keys(value, ("pi", "vf"), path)
        return {key: layers(item, f"{path}.{key}") for key, item in value.items()}
    return layers(value, path)


# ------------------------------------------------------------------ env values
def _groups(value: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(
            f"{path} must be a non-empty list of {{family: NAME, n: COUNT, ...}}"
        )
    result = []
    for index, entry in enumerate(value):
        entry_path = f"{path}[{index}]"
        if not isinstance(entry, Mapping) or "family" not in entry or "n" not in entry:
            raise ConfigError(f"{entry_path} must be a mapping with family and n")
        group = _plain_mapping(entry, entry_path)
        group["family"] = _str(entry["family"], f"{entry_path}.family")
        group["n"] = _int(1)(entry["n"], f"{entry_path}.n")
        result.append(group)
    return result


def _controlled(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(
            f"{path} must be a non-empty list from {list(HPARAM_NAMES)}, got {value!r}"
        )
    names = [_choice(HPARAM_NAMES)(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path} lists a hyperparameter twice: {names}")
    return tuple(name for name in HPARAM_NAMES if name in names)


def _reward(value: Any, path: str) -> RewardConfig:
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{path} must be a kind from {list(REWARD_KINDS)} or a mapping of "
            f"{[f.name for f in dataclasses.fields(RewardConfig)]}"
        )
    values = _fields(RewardConfig, value, path)
    checks = {
        "kind": _choice(REWARD_KINDS),
        "terminal_weight": _float(),
        "divergence_penalty": _float(0.0),
        "max_normalized_loss": _float(0.0, None, low_inclusive=False),
    }
    try:
        return RewardConfig(**_convert(values, checks, path))
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _init(value: Any, path: str) -> InitRanges:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{path} must be a mapping like {{lr: [1.0e-5, 1.0e-1]}} of "
            f"{list(HPARAM_NAMES)}"
        )
    values = _fields(InitRanges, value, path)
    ranges = {}
    for key, item in values.items():
        key_path = f"{path}.{key}"
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ConfigError(f"{key_path} must be a range [low, high], got {item!r}")
        ranges[key] = tuple(_float()(v, f"{key_path}[{i}]") for i, v in enumerate(item))
    try:
        return InitRanges(**ranges)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _check_split(split: str, path: str) -> None:
    _check_not_heldout(split, path)
    try:
        load_split(split)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _check_not_heldout(name: str, path: str) -> None:
    if name == HELDOUT_SPLIT or Path(name).stem == HELDOUT_SPLIT:
        raise ConfigError(
            f"{path} names {name!r}: the {HELDOUT_SPLIT} split is reserved for final "
            "evaluation (hyperpilot evaluate) and never used in training; "
            "use train for env.split and val for eval.split"
        )


# ------------------------------------------------------------------ checks
def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"section {name!r} must be a mapping, got {value!r}")
    return value


def _fields(cls: type, data: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The mapping's items, after checking every key is a field of `cls`."""
    _check_keys(data, [f.name for f in dataclasses.fields(cls)], path)
    return dict(data)


def _check_keys(data: Mapping[str, Any], valid: Sequence[str], path: str) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(_unknown(f"{path}.{key}" if path else key, key, valid))


def _unknown(path: str, key: Any, valid: Sequence[str]) -> str:
    hint = _did_you_mean(str(key), valid)
    return f"unknown key {path!r}{hint or ''}; valid keys: {', '.join(valid)}"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _convert(
    values: Mapping[str, Any],
    checks: Mapping[str, Callable[[Any, str], Any]],
    path: str,
) -> dict[str, Any]:
    return {key: checks[key](value, f"{path}.{key}") for key, value in values.items()}


def _number(value: Any, path: str, expected: str) -> float:
    """A finite-or-infinite float from an int, a float or a numeric string."""
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or math.isnan(number):
        raise ConfigError(f"{path} must be {expected}, got {value!r}")
    return number


def _range_text(low: Any, high: Any, low_inclusive: bool) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]" if low_inclusive else f" in ({low}, {high}]"
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def _in_range(
    number: float, low: Any, high: Any, low_inclusive: bool, path: str, kind: str
) -> None:
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and number > high
    if too_low or too_high:
        raise ConfigError(
            f"{path} must be {kind}{_range_text(low, high, low_inclusive)}, "
            f"got {number!r}"
        )


def _float(
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
) -> Callable[[Any, str], float]:
    def check(value: Any, path: str) -> float:
        expected = f"a float{_range_text(low, high, low_inclusive)}"
        number = _number(value, path, expected)
        _in_range(number, low, high, low_inclusive, path, "a float")
        return number

    return check


def _int(low: int | None = None, high: int | None = None) -> Callable[[Any, str], int]:
    def check(value: Any, path: str) -> int:
        expected = f"an int{_range_text(low, high, True)}"
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            as_float = _number(value, path, expected)
            if not as_float.is_integer():
                raise ConfigError(f"{path} must be {expected}, got {value!r}")
            number = int(as_float)
        _in_range(number, low, high, True, path, "an int")
        return number

    return check


def _choice_int(choices: Sequence[int]) -> Callable[[Any, str], int]:
    def check(value: Any, path: str) -> int:
        number = _int()(value, path)
        if number not in choices:
            raise ConfigError(f"{path} must be one of {list(choices)}, got {value!r}")
        return number

    return check


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path} must be a non-empty string, got {value!r}")
    return value


def _name(value: Any, path: str) -> str:
    text = _str(value, path)
    if not re.fullmatch(r"[\w.-]+", text):
        raise ConfigError(
            f"{path} must be a folder-safe name (letters, digits, _ . -), got {text!r}"
        )
    return text


def _choice(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(
                f"{path} must be one of {list(choices)}, got {value!r}"
                + _did_you_mean(str(value), choices)
            )
        return value

    return check


def _device(value: Any, path: str) -> str:
    # Only the spelling is checked here: gpu.yaml must load on a CPU machine too.
    if not isinstance(value, str) or not _DEVICE_PATTERN.fullmatch(value):
        raise ConfigError(f"{path} must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def optional(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return optional


def _plain_mapping(value: Any, path: str) -> dict[str, Any]:
    """A mapping of YAML-safe values (string keys), deep-copied."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path} has a non-string key {key!r}")
    return _plain(value)


def _plain(value: Any) -> Any:
    """YAML-safe plain values: dataclasses and mappings to dicts, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
