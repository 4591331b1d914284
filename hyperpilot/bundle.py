"""The deployable policy format: a directory with `pilot.json` and the actor's weights.

A *bundle* is everything a trained pilot needs at deployment and nothing else:

    my-pilot/
        pilot.json          format and package versions, feature names and version,
                            action mode, bounds and controlled set, K, the default
                            starting clip, observation normalization statistics,
                            the actor's architecture and how it was trained
        actor.safetensors   the actor's weights (or `*.pt`, a plain tensor file)

Loading never unpickles: `actor.safetensors` is read with `safetensors`, a `*.pt`
file only with `torch.load(weights_only=True)`, and any other weights file is
refused. A training checkpoint (`agents/checkpoints.py`: JSON plus safetensors too)
holds the whole run; `hyperpilot export` turns one into a bundle with `save_bundle`.

A bundle whose format *major* version or feature version differs from this
package's fails to load with a `BundleError` that says what to do; a newer *minor*
version only adds fields, so it loads. Format 1.1 carries the action bounds the
policy was trained with (`action.steps`, `action.ranges`); a 1.0 bundle holds the
defaults there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import numpy as np
import safetensors.torch
import torch
import yaml
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from hyperpilot._version import __version__
from hyperpilot.envs.actions import (
    ACTION_MODES,
    ACTION_RANGES,
    ACTION_STEPS,
    DEFAULT_BOUNDS,
    ActionBounds,
    validate_controlled,
)
from hyperpilot.envs.features import FEATURES_VERSION, N_FEATURES, OBS_NAMES
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.runtime import UserError, replace_directory

FORMAT_VERSION: Final = "1.1"
"""`major.minor`: bump the major when an older package could misread a bundle."""

META_FILE: Final = "pilot.json"
SAFETENSORS_FILE: Final = "actor.safetensors"

ACTIVATIONS: Final[dict[str, type[nn.Module]]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}

_REEXPORT: Final = "re-export it with `hyperpilot export`"


class BundleError(UserError):
    """A bundle cannot be written or read; the message names the file and the fix."""


# ---------------------------------------------------------------------- actor
class Actor(nn.Module):
    """The deterministic part of an SB3 `ActorCriticPolicy`: latent MLP + action head.

    `policy_net` is laid out exactly like SB3's `policy.mlp_extractor.policy_net`
    (Linear, activation, Linear, activation, ...), so state-dict keys match
    (`policy_net.0.weight`, `policy_net.2.weight`, ..., `action_net.weight`).

    Building one draws no random numbers (the layers are made on the `meta` device
    and then zero-filled on the CPU), so loading a pilot leaves a user's RNG alone;
    the weights come from `load_state_dict`.

    Args:
        n_obs: Length of the (normalized) observation.
        n_actions: Number of action entries (controlled hyperparameters).
        net_arch: Hidden layer widths, e.g. `[64, 64]`; `[]` for a linear policy.
        activation: One of tanh, relu, elu, leaky_relu, gelu.

    Raises:
        BundleError: If the activation or a width is invalid.
    """

    def __init__(
        self, n_obs: int, n_actions: int, net_arch: list[int], activation: str
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise BundleError(
                f"activation {activation!r} is unknown; choose from {list(ACTIVATIONS)}"
            )
        sizes = [n_obs, *net_arch, n_actions]
        if any(not _is_int(s) or s < 1 for s in sizes):
            raise BundleError(
                f"layer sizes {sizes} are invalid; every width must be an integer >= 1"
            )
        self.n_obs = n_obs
        self.n_actions = n_actions
        self.net_arch = list(net_arch)
        self.activation = activation
        with torch.device("meta"):
            layers: list[nn.Module] = []
            for width_in, width_out in itertools.pairwise(sizes[:-1]):
                layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
            self.policy_net = nn.Sequential(*layers)
            self.action_net = nn.Linear(sizes[-2], n_actions)
        self.to_empty(device="cpu")
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action (before clipping to `[-1, 1]`) for normalized `obs`."""
        return self.action_net(self.policy_net(obs))


def actor_from_policy(policy: Any) -> Actor:
    """Copies the actor of an SB3 `ActorCriticPolicy` into an `Actor` on the CPU.

    Args:
        policy: E.g. `PPO(...).policy`, with a flatten features extractor, separate
            (unshared) latent layers and a Gaussian action head.

    Returns:
        An `Actor` whose `forward` equals the policy's deterministic mean action.

    Raises:
        BundleError: If the policy has a shape this format cannot represent.
    """
    name = type(policy).__name__

    def refuse(why: str) -> BundleError:
        return BundleError(
            f"cannot export the policy ({name}) as a pilot bundle: {why}; "
            "train with the default MlpPolicy and net_arch=dict(pi=[...], vf=[...])"
        )

    extractor = getattr(policy, "mlp_extractor", None)
    policy_net = getattr(extractor, "policy_net", None)
    action_net = getattr(policy, "action_net", None)
    if not isinstance(policy_net, nn.Sequential) or not isinstance(
        action_net, nn.Linear
    ):
        raise refuse("it has no mlp_extractor.policy_net / action_net")
    shared = getattr(extractor, "shared_net", None)
    if isinstance(shared, nn.Module) and any(True for _ in shared.parameters()):
        raise refuse("it has layers shared between actor and critic")
    for attr in ("pi_features_extractor", "features_extractor"):
        features = getattr(policy, attr, None)
        if features is not None and type(features) is not FlattenExtractor:
            raise refuse(f"its {attr} is {type(features).__name__}, not a flatten")
    if getattr(policy, "squash_output", False):
        raise refuse("it squashes its output (gSDE with squash_output=True)")
    dist = getattr(policy, "action_dist", None)
    if not isinstance(dist, DiagGaussianDistribution | StateDependentNoiseDistribution):
        raise refuse(f"its action distribution is {type(dist).__name__}")

    modules = list(policy_net)
    linears = modules[0::2]
    activations = modules[1::2]
    if len(linears) != len(activations) or not all(
        isinstance(m, nn.Linear) and m.bias is not None for m in linears
    ):
        raise refuse("its policy_net is not Linear, activation, Linear, ...")
    activation = "tanh"
    if activations:
        kinds = {type(m) for m in activations}
        names = [k for k, cls in ACTIVATIONS.items() if {cls} == kinds]
        # A non-default slope or approximation would change the function silently.
        if not names or any(repr(m) != repr(type(m)()) for m in activations):
            raise refuse(
                f"its activations {sorted(repr(m) for m in activations)} are not one "
                f"default {list(ACTIVATIONS)}"
            )
        activation = names[0]
    if action_net.bias is None:
        raise refuse("its action_net has no bias")
    n_obs = linears[0].in_features if linears else action_net.in_features
    actor = Actor(
        n_obs=n_obs,
        n_actions=action_net.out_features,
        net_arch=[m.out_features for m in linears],
        activation=activation,
    )
    state = {f"policy_net.{k}": v for k, v in policy_net.state_dict().items()} | {
        f"action_net.{k}": v for k, v in action_net.state_dict().items()
    }
    try:
        actor.load_state_dict(
            {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
        )
    except RuntimeError as error:
        raise refuse(f"its layers do not chain ({error})") from None
    return actor


# --------------------------------------------------------------------- bundle
@dataclass(frozen=True, eq=False)
class PolicyBundle:
    """A loaded bundle: the parsed `pilot.json`, the actor and the observation stats.

    Attributes:
        meta: The parsed `pilot.json`.
        actor: The policy's deterministic actor, on the CPU.
        obs_mean: `[F]` float64 running mean of observations, or None (no
            normalization).
        obs_var: `[F]` float64 running variance, or None.
        obs_clip: Normalized observations are clipped to +-this.
        obs_epsilon: Added to the variance before the square root.
        fingerprint: 12 hex digits of the SHA-256 of `pilot.json` and the weights
            file: equal for equal bundles wherever they lie (evaluation caches
            a pilot's runs under it).
        bounds: The action steps and ranges the policy was trained with: what its
            actions mean.
    """

    meta: dict
    actor: Actor
    obs_mean: torch.Tensor | None
    obs_var: torch.Tensor | None
    obs_clip: float
    obs_epsilon: float
    fingerprint: str = ""
    bounds: ActionBounds = DEFAULT_BOUNDS

    @property
    def decision_interval(self) -> int:
        """K: inner steps between two decisions."""
        return int(self.meta["decision_interval"])

    @property
    def action_mode(self) -> str:
        """`compound` or `residual`."""
        return str(self.meta["action"]["mode"])

    @property
    def controlled(self) -> tuple[str, ...]:
        """The hyperparameters the action moves, one action column each."""
        return tuple(self.meta["action"]["controlled"])

    @property
    def default_clip(self) -> float:
        """The starting clip threshold when the user gives none."""
        return float(self.meta["default_clip"])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The observation's entries, in order."""
        return tuple(self.meta["features"]["names"])

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """SB3 `VecNormalize`'s observation normalization, as float32.

        `clip((obs - mean) / sqrt(var + epsilon), -clip, clip)`, computed in float64
        as VecNormalize does; the identity (cast to float32) without statistics.
        """
        obs = torch.as_tensor(obs)
        if self.obs_mean is None or self.obs_var is None:
            return obs.to(torch.float32)
        mean = self.obs_mean.to(obs.device)
        var = self.obs_var.to(obs.device)
        scaled = (obs.to(torch.float64) - mean) / torch.sqrt(var + self.obs_epsilon)
        return scaled.clamp(-self.obs_clip, self.obs_clip).to(torch.float32)

    def act(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Deterministic actions for raw observations.

        Args:
            obs: `[F]` or `[N, F]` raw (unnormalized) observations.

        Returns:
            `[A]` or `[N, A]` float32 actions in `[-1, 1]`, on the device of `obs`
            (the actor itself runs on the CPU).

        Raises:
            ValueError: If `obs` does not have `F` entries per row.
        """
        device = obs.device if isinstance(obs, torch.Tensor) else torch.device("cpu")
        obs = torch.as_tensor(
            np.asarray(obs) if not isinstance(obs, torch.Tensor) else obs
        )
        n_features = len(self.feature_names)
        if obs.ndim not in (1, 2) or obs.shape[-1] != n_features:
            raise ValueError(
                f"observation has shape {tuple(obs.shape)}, expected ({n_features},) "
                f"or (N, {n_features})"
            )
        with torch.no_grad():
            normalized = self.normalize(obs.detach().to("cpu"))
            action = self.actor(normalized).clamp(-1.0, 1.0)
        return action.to(device)

    def settings(self) -> EnvSettings:
        """The env settings the policy was trained with (K, action mode, controlled)."""
        return EnvSettings(
            decision_interval=self.decision_interval,
            action_mode=self.action_mode,
            controlled=self.controlled,
            action_bounds=self.bounds,
        )


# ---------------------------------------------------------------------- save
def save_bundle(
    path: str | Path,
    *,
    policy: Any,
    obs_rms: Any = None,
    clip_obs: float = 10.0,
    epsilon: float = 1e-8,
    settings: EnvSettings,
    default_clip: float,
    training: dict | None = None,
) -> Path:
    """Writes a policy as a bundle directory, atomically.

    Everything is written into a sibling temporary directory first; then an existing
    bundle at `path` is renamed aside, the new one renamed in, and the old one
    deleted. A crash leaves either the old or the new bundle at `path` (plus,
    at worst, a hidden `.<name>.*` directory beside it), never a half-written one.

    Args:
        path: The bundle directory. If it exists it must be a bundle (it holds
            `pilot.json`) or empty: it is replaced.
        policy: An SB3 `ActorCriticPolicy`, e.g. `model.policy`.
        obs_rms: SB3's `RunningMeanStd` (`VecNormalize.obs_rms`), or None when the
            policy saw raw observations.
        clip_obs: `VecNormalize.clip_obs`.
        epsilon: `VecNormalize.epsilon`.
        settings: The env settings the policy was trained with.
        default_clip: The clip threshold a deployment starts from by default.
        training: How it was trained (config, command, timesteps), stored as given
            (made JSON-safe).

    Returns:
        The bundle directory.

    Raises:
        BundleError: If the policy or statistics do not fit this format, or `path`
            is something other than a bundle.
    """
    path = Path(path)
    actor = actor_from_policy(policy)
    if actor.n_obs != N_FEATURES:
        raise BundleError(
            f"cannot export to {path}: the policy takes {actor.n_obs} observation "
            f"entries, but this package's features have {N_FEATURES}"
        )
    if actor.n_actions != len(settings.controlled):
        raise BundleError(
            f"cannot export to {path}: the policy has {actor.n_actions} action entries,"
            f" but settings control {list(settings.controlled)}"
        )
    if not (_is_number(default_clip) and 0 < default_clip < math.inf):
        raise BundleError(
            f"cannot export to {path}: default_clip must be > 0, got {default_clip!r}"
        )
    normalization = None
    if obs_rms is not None:
        mean = np.asarray(obs_rms.mean, dtype=np.float64)
        var = np.asarray(obs_rms.var, dtype=np.float64)
        if mean.shape != (N_FEATURES,) or var.shape != (N_FEATURES,):
            raise BundleError(
                f"cannot export to {path}: observation statistics have shapes "
                f"{mean.shape} and {var.shape}, expected ({N_FEATURES},)"
            )
        if not (
            np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all()
        ):
            raise BundleError(
                f"cannot export to {path}: observation statistics are not finite"
            )
        normalization = {
            "mean": mean.tolist(),
            "var": var.tolist(),
            "clip": float(clip_obs),
            "epsilon": float(epsilon),
        }
    meta = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "features": {"version": FEATURES_VERSION, "names": list(OBS_NAMES)},
        "action": {
            "mode": settings.action_mode,
            "controlled": list(settings.controlled),
            "steps": settings.action_bounds.steps(),
            "ranges": {k: list(v) for k, v in settings.action_bounds.ranges().items()},
        },
        "decision_interval": int(settings.decision_interval),
        "default_clip": float(default_clip),
        "observation_normalization": normalization,
        "policy": {
            "net_arch": actor.net_arch,
            "activation": actor.activation,
            "weights": SAFETENSORS_FILE,
        },
        "training": _json_safe(training or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    tensors = {k: v.contiguous() for k, v in actor.state_dict().items()}
    _replace_dir_atomically(path, text, tensors)
    return path


def _replace_dir_atomically(
    path: Path, meta_text: str, tensors: dict[str, torch.Tensor]
) -> None:
    if path.exists() and not path.is_dir():
        raise BundleError(f"cannot write a bundle to {path}: it is a file")
    if path.is_dir() and any(path.iterdir()) and not (path / META_FILE).is_file():
        # Never delete a folder that is not a bundle (say, a whole run folder).
        raise BundleError(
            f"cannot write a bundle to {path}: it is a non-empty directory without "
            f"{META_FILE}; choose another path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        (staging / META_FILE).write_text(meta_text, encoding="utf-8")
        safetensors.torch.save_file(
            tensors, str(staging / SAFETENSORS_FILE), metadata={"format": "pt"}
        )
        replace_directory(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _json_safe(value: Any) -> Any:
    """Plain JSON values: mappings, sequences, numbers, strings; else `str(value)`."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


# ---------------------------------------------------------------------- load
def load_bundle(path_or_name: str | Path) -> PolicyBundle:
    """Loads a bundle directory, or a pilot shipped with the package by name.

    Args:
        path_or_name: A bundle directory, or a bare name such as `"default"` for
            `hyperpilot/pretrained/<name>/`. An existing directory wins over a name.

    Returns:
        The checked bundle.

    Raises:
        BundleError: If there is no such bundle, its format major version or feature
            version differs from this package's, its weights file is not a plain
            tensor file, or its tensors do not match its declared architecture.
    """
    path = _resolve(path_or_name)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise BundleError(
            f"{meta_path} not found: {path} is not a pilot bundle; pass a directory "
            "written by `hyperpilot export` or a training run's pilot/ folder"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(
            f"{meta_path} is not valid JSON ({error}); {_REEXPORT}"
        ) from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} does not hold a JSON object; {_REEXPORT}")
    checked = _check_meta(meta, meta_path)
    weights_path = path / checked["weights"]
    state = _read_weights(weights_path)
    n_obs, n_actions = len(checked["names"]), len(checked["controlled"])
    # Compared before the actor is built: a claimed net_arch of [20000, 20000] is
    # refused without allocating it (the file's tensors bound what is allocated).
    expected = _actor_shapes(n_obs, n_actions, checked["net_arch"])
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise BundleError(
            f"{weights_path} does not match the architecture in {META_FILE} "
            f"(net_arch {checked['net_arch']}, {n_obs} features, {n_actions} "
            f"actions): expected {expected}, found {found}; {_REEXPORT}"
        )
    actor = Actor(n_obs, n_actions, checked["net_arch"], checked["activation"])
    for key, tensor in state.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise BundleError(
                f"{weights_path}: tensor {key!r} is not finite floating point; "
                f"{_REEXPORT}"
            )
    actor.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    norm = checked["normalization"]
    return PolicyBundle(
        meta=meta,
        actor=actor,
        obs_mean=None
        if norm is None
        else torch.tensor(norm["mean"], dtype=torch.float64),
        obs_var=None
        if norm is None
        else torch.tensor(norm["var"], dtype=torch.float64),
        obs_clip=math.inf if norm is None else float(norm["clip"]),
        obs_epsilon=0.0 if norm is None else float(norm["epsilon"]),
        fingerprint=_fingerprint(meta_path, weights_path),
        bounds=checked["bounds"],
    )


def _fingerprint(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _actor_shapes(
    n_obs: int, n_actions: int, net_arch: list[int]
) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of `Actor(n_obs, n_actions, net_arch, ...)`."""
    sizes = [n_obs, *net_arch]
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (width_in, width_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"policy_net.{2 * index}.weight"] = (width_out, width_in)
        shapes[f"policy_net.{2 * index}.bias"] = (width_out,)
    shapes["action_net.weight"] = (n_actions, sizes[-1])
    shapes["action_net.bias"] = (n_actions,)
    return shapes


def _resolve(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.is_dir():
        return path
    text = str(path_or_name)
    is_name = (
        isinstance(path_or_name, str)
        and text not in ("", ".", "..")
        and "/" not in text
        and os.sep not in text
        and (os.altsep is None or os.altsep not in text)
    )
    if not is_name:
        raise BundleError(f"{path} is not a directory; pass a pilot bundle directory")
    shipped = Path(__file__).parent / "pretrained"
    names = (
        sorted(p.name for p in shipped.iterdir() if p.is_dir())
        if shipped.is_dir()
        else []
    )
    if text in names:
        return shipped / text
    if not names:
        raise BundleError(
            f"no pretrained pilot named {text!r} is shipped with this version; "
            "pass a bundle directory"
        )
    raise BundleError(
        f"no pretrained pilot named {text!r} (shipped: {', '.join(names)}) and no "
        "directory of that name; pass a bundle directory"
    )


def _check_meta(meta: dict, meta_path: Path) -> dict[str, Any]:
    """Validates `pilot.json` (versions first) and returns the fields loading needs."""

    def get(dotted: str, kind: type | tuple[type, ...]) -> Any:
        value: Any = meta
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise BundleError(f"{meta_path} lacks {dotted!r}; {_REEXPORT}")
            value = value[part]
        if not isinstance(value, kind) or (
            kind is not bool and isinstance(value, bool)
        ):
            raise BundleError(
                f"{meta_path}: {dotted!r} is {value!r}, not a {_kind_name(kind)}; "
                f"{_REEXPORT}"
            )
        return value

    def bad(what: str) -> BundleError:
        return BundleError(f"{meta_path}: {what}; {_REEXPORT}")

    version = get("format_version", str)
    major = version.split(".")[0]
    if not major.isdigit():
        raise bad(f"format_version {version!r} is not major.minor")
    if int(major) != int(FORMAT_VERSION.split(".")[0]):
        raise BundleError(
            f"{meta_path} has bundle format {version} (written by hyperpilot "
            f"{meta.get('package_version', '?')}), but this package (hyperpilot "
            f"{__version__}) reads format {FORMAT_VERSION}; re-export it with "
            "`hyperpilot export` using this package, or use a matching package version"
        )
    features_version = get("features.version", int)
    if features_version != FEATURES_VERSION:
        raise BundleError(
            f"{meta_path} was trained on features version {features_version}, but "
            f"this package computes version {FEATURES_VERSION}; the policy would "
            "misread its observations: retrain it with this package, or use the "
            "package version it was trained with"
        )
    names = get("features.names", list)
    if tuple(names) != OBS_NAMES:
        raise BundleError(
            f"{meta_path} lists features {names}, but this package's version "
            f"{FEATURES_VERSION} features are {list(OBS_NAMES)}; retrain the policy "
            "with this package"
        )

    mode = get("action.mode", str)
    if mode not in ACTION_MODES:
        raise bad(f"action mode {mode!r} is not one of {list(ACTION_MODES)}")
    controlled = get("action.controlled", list)
    try:
        canonical = validate_controlled(controlled)
    except (ValueError, TypeError):
        raise bad(f"action.controlled {controlled} is invalid") from None
    if tuple(controlled) != canonical:
        raise bad(f"action.controlled {controlled} is not in order {list(canonical)}")
    steps = get("action.steps", dict)
    ranges = get("action.ranges", dict)
    try:
        bounds = ActionBounds(
            **{f"{name}_step": steps[name] for name in ACTION_STEPS},
            **{name: tuple(ranges[name]) for name in ACTION_RANGES},
        )
    except (KeyError, TypeError, ValueError) as error:
        # The bounds say what an action means: without valid ones it has no meaning.
        raise bad(
            f"action steps {steps} or ranges {ranges} are invalid ({error})"
        ) from None
    interval = get("decision_interval", int)
    if interval < 1:
        raise bad(f"decision_interval must be >= 1, got {interval}")
    default_clip = get("default_clip", (int, float))
    if not 0 < default_clip < math.inf:
        raise bad(f"default_clip must be > 0, got {default_clip}")

    normalization = get("observation_normalization", (dict, type(None)))
    if normalization is not None:
        for key in ("mean", "var"):
            values = get(f"observation_normalization.{key}", list)
            if len(values) != len(names) or not all(
                _is_number(v) and math.isfinite(v) for v in values
            ):
                raise bad(
                    f"observation_normalization.{key} must be {len(names)} finite "
                    "numbers"
                )
        if any(v < 0 for v in normalization["var"]):
            raise bad("observation_normalization.var has negative entries")
        for key in ("clip", "epsilon"):
            value = get(f"observation_normalization.{key}", (int, float))
            if not 0 <= value < math.inf:
                raise bad(f"observation_normalization.{key} must be >= 0, got {value}")

    net_arch = get("policy.net_arch", list)
    if not all(_is_int(w) and w >= 1 for w in net_arch):
        raise bad(f"policy.net_arch {net_arch} must list integer widths >= 1")
    activation = get("policy.activation", str)
    if activation not in ACTIVATIONS:
        raise bad(f"policy.activation {activation!r} is not one of {list(ACTIVATIONS)}")
    weights = get("policy.weights", str)
    if weights != SAFETENSORS_FILE and not weights.endswith(".pt"):
        raise BundleError(
            f"{meta_path}: refusing weights file {weights!r}: only "
            f"{SAFETENSORS_FILE} or a plain tensor file *.pt can be loaded safely; "
            f"{_REEXPORT}"
        )
    if Path(weights).name != weights or weights.startswith("."):
        raise BundleError(
            f"{meta_path}: refusing weights file {weights!r}: it must be a file "
            "name inside the bundle directory"
        )
    return {
        "names": names,
        "bounds": bounds,
        "controlled": controlled,
        "normalization": normalization,
        "net_arch": net_arch,
        "activation": activation,
        "weights": weights,
    }


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """Reads a tensor file without unpickling anything."""
    if not file.is_file():
        raise BundleError(f"{file} not found; {_REEXPORT}")
    if file.name == SAFETENSORS_FILE:
        try:
            state = safetensors.torch.load_file(str(file), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise BundleError(
                f"refusing to load {file}: not a safetensors file ({error}); "
                f"{_REEXPORT}"
            ) from None
    else:
        try:
            # weights_only=True: the restricted unpickler builds tensors and plain
            # containers only, never arbitrary objects (an explicit True cannot be
            # overridden by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise BundleError(
                f"refusing to load {file}: not a plain tensor file "
                f"({type(error).__name__}); {_REEXPORT}"
            ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(
            f"refusing to load {file}: it does not hold a mapping of names to "
            f"tensors; {_REEXPORT}"
        )
    return dict(state)


# ------------------------------------------------------------------ describe
def describe_bundle(bundle: PolicyBundle) -> str:
    """A human-readable summary of a bundle, as `hyperpilot info` prints it."""
    meta = bundle.meta
    action = meta["action"]
    policy = meta["policy"]
    training = meta.get("training") or {}
    steps = ", ".join(f"{k} +-{v}" for k, v in action["steps"].items())
    ranges = ", ".join(
        f"{k} [{lo:g}, {hi:g}]" for k, (lo, hi) in action["ranges"].items()
    )
    norm = meta.get("observation_normalization")
    normalization = (
        "no"
        if norm is None
        else f"yes (clip {norm['clip']:g}, epsilon {norm['epsilon']:g})"
    )
    command = training.get("command")
    if isinstance(command, list):
        command = " ".join(str(c) for c in command)
    timesteps = training.get("timesteps", training.get("total_timesteps"))
    lines = [
        f"format:          {meta['format_version']} "
        f"(this package reads {FORMAT_VERSION})",
        f"package version: {meta.get('package_version', 'unknown')}",
        f"features:        version {meta['features']['version']}, "
        f"{len(bundle.feature_names)} entries",
        f"                 {', '.join(bundle.feature_names)}",
        f"action mode:     {bundle.action_mode}",
        f"controlled:      {', '.join(bundle.controlled)}",
        f"action steps:    {steps} (log10 per decision)",
        f"action ranges:   {ranges}",
        f"decision K:      every {bundle.decision_interval} inner steps",
        f"default clip:    {bundle.default_clip:g}",
        f"policy:          net_arch {policy['net_arch']}, {policy['activation']}, "
        f"weights {policy['weights']}",
        f"normalization:   {normalization}",
        f"training:        {command if command else 'unknown command'}",
        f"timesteps:       {timesteps if timesteps is not None else 'unknown'}",
        f"created:         {meta.get('created', 'unknown')}",
    ]
    config = training.get("config")
    if isinstance(config, dict) and config:
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
        lines.append("training config:")
        lines += [f"  {line}" for line in text.rstrip().splitlines()]
    return "\n".join(lines)


# ------------------------------------------------------------------- helpers
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "object", list: "list", str: "string", int: "integer"}
    names |= {float: "number", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
