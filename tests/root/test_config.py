import dataclasses

import pytest
import yaml
from pydantic import ValidationError, create_model
from torch import nn

from hyperpilot.config import (
    ConfigError,
    EnvSection,
    TrainConfig,
    available_configs,
    dump_config,
    load_config,
    load_config_dict,
)
from hyperpilot.envs import BatchedTrainingVecEnv
from hyperpilot.envs.episodes import InitRanges
from hyperpilot.envs.reward import RewardConfig
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.splits import CONFIGS_DIR, heldout_families
from hyperpilot.schema import StrictModel, fields_of, one_line


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["smoke", "default", "gpu"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert config.source == str(CONFIGS_DIR / "train" / f"{name}.yaml")
    assert config.name == config.run.name == name  # resolved from the file's stem
    assert name in available_configs()
    assert load_config(CONFIGS_DIR / "train" / f"{name}.yaml") == config


def test_smoke_config_matches_its_budget():
    config = load_config("smoke")
    assert (config.env.split, config.env.n) == ("smoke", 8)
    assert config.ppo.values["n_steps"] == 8
    assert config.ppo.net_arch_pi() == [32, 32]
    assert config.run.total_timesteps == 640
    assert (config.eval.split, config.eval.freq) == ("smoke", 320)


def test_yaml_3e_minus_4_loads_as_a_float(tmp_path):
    path = write(tmp_path, "ppo:\n  learning_rate: 3e-4\n  clip_range: '0.1'\n")
    assert yaml.safe_load(path.read_text())["ppo"]["learning_rate"] == "3e-4"
    config = load_config(path)
    assert config.ppo.values["learning_rate"] == pytest.approx(0.0003)
    assert isinstance(config.ppo.kwargs()["learning_rate"], float)
    assert config.ppo.values["clip_range"] == pytest.approx(0.1)


def test_numeric_strings_are_accepted_where_floats_are_expected(tmp_path):
    path = write(
        tmp_path,
        "run:\n  total_timesteps: 1e3\n"
        "env:\n  val_drop_prob: '5e-1'\n  divergence_factor: 1e2\n"
        "  init: {lr: [1e-4, 1e-2]}\n  reward: {terminal_weight: 5e-1}\n"
        "ppo:\n  n_steps: 16.0\n",
    )
    config = load_config(path)
    assert config.run.total_timesteps == 1000
    assert config.env.val_drop_prob == 0.5
    assert config.env.divergence_factor == 100.0
    assert config.env.init.lr == pytest.approx((1e-4, 1e-2))
    assert config.env.reward.terminal_weight == 0.5
    assert config.ppo.values["n_steps"] == 16
    assert isinstance(config.ppo.values["n_steps"], int)


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"rnu": {}}, "rnu", "run"),
        ({"run": {"sed": 1}}, "run.sed", "seed"),
        ({"env": {"decision_interva": 5}}, "env.decision_interva", "decision_interval"),
        ({"ppo": {"n_step": 64}}, "ppo.n_step", "n_steps"),
        (
            {"ppo": {"policy_kwargs": {"net_arc": [8]}}},
            "ppo.policy_kwargs.net_arc",
            "net_arch",
        ),
        ({"env": {"reward": {"kinds": "val_loss"}}}, "env.reward.kinds", "kind"),
        ({"env": {"init": {"lrr": [0.1, 0.1]}}}, "env.init.lrr", "lr"),
        ({"eval": {"frq": 5}}, "eval.frq", "freq"),
    ],
    ids=["top-level", "run", "env", "ppo", "policy-kwargs", "reward", "init", "eval"],
)
def test_unknown_keys_are_named_with_a_suggestion(data, key, suggestion):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'") as error:
        load_config_dict(data)
    assert f"did you mean '{suggestion}'?" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"run": {"seed": "abc"}}, r"run\.seed must be an int"),
        ({"env": {"n": -3}}, r"env\.n must be an int >= 1"),
        ({"env": {"val_drop_prob": 2}}, r"env\.val_drop_prob must be a float in \[0"),
        ({"env": {"compile": "yes"}}, r"env\.compile must be true or false"),
        ({"env": {"action_mode": "compund"}}, "did you mean 'compound'"),
        ({"env": {"controlled": ["lr", "momentum"]}}, r"env\.controlled\[1\]"),
        ({"env": {"reward": "val"}}, r"env\.reward\.kind must be one of"),
        ({"env": {"init": {"lr": [0.1]}}}, r"env\.init\.lr must be a range"),
        ({"env": {"init": {"lr": [0.1, 0.01]}}}, r"env\.init: init range lr"),
        ({"env": {"split": "trian"}}, r"env\.split: task split 'trian' not found"),
        ({"env": {"family": "quadratc_2d"}}, r"env\.family: unknown task family"),
        ({"env": {"split": "val", "family": "quadratic_2d"}}, "not split and family"),
        ({"env": {"n": 2}}, "is fewer than the"),
        ({"run": {"device": "gpu"}}, r"run\.device must be auto, cpu, cuda"),
        ({"ppo": {"n_steps": 1.5}}, r"ppo\.n_steps must be an int"),
        ({"ppo": {"gamma": "high"}}, r"ppo\.gamma must be a float"),
        ({"ppo": {"normalize_advantage": 1}}, r"ppo\.normalize_advantage must be"),
        ({"ppo": {"batch_size": 1}}, r"ppo\.batch_size must be an int >= 2"),
        (
            {"ppo": {"learning_rate": {"kind": "cosine"}}},
            r"ppo\.learning_rate\.kind must be one of",
        ),
        (
            {"ppo": {"policy_kwargs": {"activation_fn": "Tanh"}}},
            "did you mean 'tanh'",
        ),
        (
            {"ppo": {"policy_kwargs": {"net_arch": [64, "x"]}}},
            r"net_arch\[1\] must be an int",
        ),
        ({"logging": {"verbose": 3}}, r"logging\.verbose must be one of"),
        ({"eval": "val"}, "section 'eval' must be a mapping"),
    ],
    ids=[
        "run-seed-text",
        "env-n-negative",
        "val-drop-prob-2",
        "compile-string",
        "action-mode-typo",
        "controlled-unknown",
        "reward-kind-unknown",
        "init-one-value",
        "init-unordered",
        "split-typo",
        "family-typo",
        "split-and-family",
        "n-below-families",
        "device-gpu",
        "n-steps-fraction",
        "gamma-text",
        "bool-as-int",
        "batch-size-1",
        "schedule-kind",
        "activation-case",
        "net-arch-text",
        "verbose-3",
        "section-not-mapping",
    ],
)
def test_wrong_values_raise_naming_the_key(data, match):
    with pytest.raises(ConfigError, match=match) as error:
        load_config_dict(data)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("seed", "run.seed"),
        ("device", "run.policy_device"),
        ("verbose", "logging.verbose"),
        ("policy", "policy_kwargs"),
        ("env", "env section"),
        ("tensorboard_log", "run folder"),
    ],
)
def test_refused_ppo_keys_point_to_their_section(key, where):
    with pytest.raises(ConfigError, match=rf"ppo\.{key} cannot be set") as error:
        load_config_dict({"ppo": {key: 1}})
    assert where in str(error.value)


@pytest.mark.parametrize(
    "data",
    [
        {"env": {"split": "heldout"}},
        {"env": {"split": str(CONFIGS_DIR / "tasks" / "heldout.yaml")}},
        {"eval": {"split": "heldout"}},
    ],
    ids=["env-split", "env-split-path", "eval-split"],
)
def test_heldout_split_is_refused(data):
    with pytest.raises(ConfigError, match="held-out splits are reserved for final"):
        load_config_dict(data)


HELDOUT_FAMILY = sorted(heldout_families())[0]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"env": {"family": HELDOUT_FAMILY}}, "env.family"),
        (
            {
                "env": {
                    "groups": [
                        {"family": "quadratic_2d", "n": 2},
                        {"family": HELDOUT_FAMILY, "n": 2},
                    ]
                }
            },
            "env.groups[1]",
        ),
        ({"env": {"split": "USER_SPLIT"}}, "env.split"),
        ({"eval": {"split": "USER_SPLIT"}}, "eval.split"),
    ],
    ids=["env-family", "env-group", "own-split-file", "own-eval-split"],
)
def test_heldout_families_are_refused_wherever_named(tmp_path, data, path):
    split = tmp_path / "mine.yaml"
    split.write_text(f"families:\n  - family: {HELDOUT_FAMILY}\n")
    text = yaml.safe_dump(data).replace("USER_SPLIT", str(split))
    with pytest.raises(ConfigError, match="held-out family") as error:
        load_config_dict(yaml.safe_load(text))
    assert str(error.value).startswith(path)
    assert HELDOUT_FAMILY in str(error.value)


def test_heldout_families_come_from_the_split_files(tmp_path):
    (tmp_path / "train.yaml").write_text("families:\n  - family: a\n")
    (tmp_path / "heldout.yaml").write_text("families:\n  - family: a\n  - family: b\n")
    (tmp_path / "heldout_v1.yaml").write_text("families:\n  - family: c\n")
    assert heldout_families(tmp_path) == {"b", "c"}  # a serves meta-training


def test_overrides_apply_before_validation():
    config = load_config(
        "smoke",
        [
            "ppo.n_steps=64",
            "env.controlled=[lr]",
            "ppo.policy_kwargs.net_arch=[16, 16]",
            "ppo.policy_kwargs.activation_fn=relu",
            "ppo.learning_rate=3e-4",
            "env.reward.kind=log_improvement",
            "run.name=trial",
        ],
    )
    assert config.ppo.values["n_steps"] == 64
    assert config.env.controlled == ("lr",)
    assert config.ppo.net_arch_pi() == [16, 16]
    assert config.ppo.activation_name() == "relu"
    assert config.ppo.values["learning_rate"] == pytest.approx(3e-4)
    assert config.env.reward.kind == "log_improvement"
    assert config.name == "trial"
    assert config.ppo.values["n_epochs"] == 2  # untouched keys stay


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("env.family=quadratic_2d", (None, "quadratic_2d", None, 64)),
        ("env.groups=[{family: quadratic_2d, n: 3}]", (None, None, 1, 3)),
        ("env.split=val", ("val", None, None, 64)),
    ],
    ids=["family", "groups", "split"],
)
def test_a_bucket_override_replaces_the_files_split(override, expected):
    env = load_config("default", [override]).env
    groups = None if env.groups is None else len(env.groups)
    assert (env.split, env.family, groups, env.n) == expected


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("ppo.n_steps", "malformed"),
        ("=3", "malformed"),
        ("ppo..n_steps=3", "malformed"),
        ("env.controlled=[lr", "not valid YAML"),
        ("ppo.n_steps.x=3", "is not a mapping"),
        ("ppo.n_stesp=3", "did you mean 'n_steps'"),
    ],
    ids=["no-value", "no-key", "empty-part", "bad-yaml", "into-scalar", "typo"],
)
def test_bad_overrides_raise(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", [override])


def test_missing_config_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"shipped configs: .*default.*smoke"):
        load_config("smok")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_invalid_yaml_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML at line 3") as error:
        load_config(write(tmp_path, "ppo:\n  n_steps: [1\n"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["smoke", "default", "gpu"])
def test_to_dict_round_trips(name, tmp_path):
    config = load_config(
        name, ["ppo.learning_rate={kind: linear, start: 1e-3}", "env.reward=train_loss"]
    )
    data = config.to_dict()
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain values only
    assert data["env"]["controlled"] == ["lr", "beta1", "clip"]
    assert data["env"]["init"]["lr"] == [1e-5, 1e-1]
    again = load_config_dict(data, source="x")
    assert again.model_copy(update={"source": config.source}) == config
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    reloaded = load_config(path).model_copy(update={"source": config.source})
    assert reloaded == config
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_groups_round_trip_with_their_total():
    data = {
        "env": {
            "groups": [
                {"family": "quadratic_2d", "n": 2, "horizon": 50},
                {"family": "quadratic_2d", "n": 3},
            ]
        }
    }
    config = load_config_dict(data)
    assert (config.env.split, config.env.n) == (None, 5)
    assert load_config_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="differs from the sum"):
        load_config_dict({"env": {**data["env"], "n": 4}})


def test_kwargs_builds_schedules_and_activation_classes():
    config = load_config_dict(
        {
            "ppo": {
                "learning_rate": {"kind": "linear", "start": "3e-4", "end": 0},
                "clip_range": {"kind": "constant", "value": 0.1},
                "policy_kwargs": {
                    "net_arch": {"pi": [32], "vf": [64, 64]},
                    "activation_fn": "relu",
                    "ortho_init": False,
                },
            }
        }
    )
    kwargs = config.ppo.kwargs()
    schedule = kwargs["learning_rate"]
    assert schedule(1.0) == pytest.approx(3e-4)
    assert schedule(0.5) == pytest.approx(1.5e-4)
    assert schedule(0.0) == pytest.approx(0.0)
    assert kwargs["clip_range"](0.3) == 0.1
    assert kwargs["policy_kwargs"]["activation_fn"] is nn.ReLU
    assert config.ppo.activation_name() == "relu"
    assert config.ppo.net_arch_pi() == [32]
    assert config.ppo.values["policy_kwargs"]["activation_fn"] == "relu"  # unchanged


def test_policy_defaults_follow_sb3():
    ppo = load_config_dict({}).ppo
    assert ppo.kwargs() == {}
    assert ppo.activation_name() == "tanh"
    assert ppo.net_arch_pi() == [64, 64]


def test_settings_equal_env_settings_built_by_hand():
    config = load_config_dict(
        {
            "env": {
                "decision_interval": 5,
                "controlled": ["clip", "lr"],
                "reward": {"kind": "train_loss", "terminal_weight": 1},
                "init": {"beta1": [0.9, 0.9]},
                "dtype": "float64",
            }
        }
    )
    assert config.env.settings("cpu") == EnvSettings(
        decision_interval=5,
        reward=RewardConfig(kind="train_loss", terminal_weight=1.0),
        controlled=("lr", "clip"),
        init=InitRanges(beta1=(0.9, 0.9)),
        val_drop_prob=0.2,
        device="cpu",
        dtype="float64",
    )


def test_smoke_venv_kwargs_build_the_vec_env():
    config = load_config("smoke")
    kwargs = config.env.venv_kwargs("cpu")
    assert (kwargs["split"], kwargs["n"], kwargs["device"]) == ("smoke", 8, "cpu")
    assert "groups" not in kwargs and "family" not in kwargs
    venv = BatchedTrainingVecEnv(**kwargs)
    try:
        assert venv.num_envs == config.env.n
        assert venv.settings == config.env.settings("cpu")
        assert venv.reset().shape[0] == config.env.n
    finally:
        venv.close()


@pytest.mark.parametrize(
    "env",
    [
        {"groups": [{"family": "quadratic_2d", "n": 2, "horizon": 50}]},
        {"family": "quadratic_2d", "family_kwargs": {"horizon": 50}, "n": 3},
    ],
    ids=["groups", "family"],
)
def test_bucket_venv_kwargs_build_the_vec_env(env):
    config = load_config_dict({"env": env})
    kwargs = config.env.venv_kwargs("cpu")
    assert kwargs.get("split") is None
    assert ("n" in kwargs) == ("groups" not in kwargs)
    venv = BatchedTrainingVecEnv(**kwargs)
    try:
        assert venv.num_envs == config.env.n
    finally:
        venv.close()


def test_default_config_is_a_train_config():
    assert isinstance(
        load_config_dict({}, source="configs/train/mine.yaml"), TrainConfig
    )
    assert load_config_dict({}, source="configs/train/mine.yaml").name == "mine"


def test_env_keys_are_the_env_settings_fields_in_their_order():
    knobs = [f.name for f in dataclasses.fields(EnvSettings)]
    for not_a_key in ("device", "beta2", "eps"):  # run.device; Adam's fixed values
        knobs.remove(not_a_key)
    buckets = ["split", "family", "family_kwargs", "groups", "n"]
    normalize = ["normalize_observations", "normalize_rewards"]
    assert list(EnvSection.model_fields) == [*buckets, *knobs, *normalize]
    assert list(load_config_dict({}).to_dict()["env"]) == [*buckets, *knobs, *normalize]
    with pytest.raises(ConfigError) as error:
        load_config_dict({"env": {"reward": {"bonus": 1}}})
    reward_keys = [f.name for f in dataclasses.fields(RewardConfig)]
    assert str(error.value).endswith(f"valid keys: {', '.join(reward_keys)}")


def test_a_new_env_field_becomes_a_checked_config_key():
    @dataclasses.dataclass(frozen=True)
    class Reward(RewardConfig):
        bonus: float = 0.5

        def __post_init__(self):
            super().__post_init__()
            if self.bonus < 0:
                raise ValueError(f"bonus must be >= 0, got {self.bonus}")

    @dataclasses.dataclass(frozen=True)
    class Settings(EnvSettings):
        patience: int = 3
        reward: Reward = dataclasses.field(default_factory=Reward)

    fields = fields_of(Settings, ("device", "beta2", "eps"), {Reward: "kind"})
    section = create_model("Section", __base__=StrictModel, **fields)

    default = section()
    assert (default.patience, default.reward) == (3, Reward())
    given = section.model_validate({"patience": "4", "reward": {"bonus": "2e-1"}})
    assert (given.patience, given.reward.bonus, given.reward.kind) == (
        4,
        0.2,
        "val_loss",
    )
    assert section.model_validate({"reward": "train_loss"}).reward == Reward(
        "train_loss"
    )
    for data, message in [
        ({"patience": 1.5}, "patience must be an int, got 1.5"),
        ({"reward": {"bonus": -1}}, "reward.bonus must be >= 0, got -1.0"),
        ({"reward": {"bonus": True}}, "reward.bonus must be a float, got True"),
        ({"reward": {"bonsu": 1}}, "unknown key 'reward.bonsu'; did you mean 'bonus'?"),
    ]:
        with pytest.raises(ValidationError) as error:
            section.model_validate(data)
        assert str(one_line(error.value)).startswith(message)


@pytest.mark.parametrize(
    "data",
    [
        {"env": {"compile": value}}
        for value in ("yes", "true", "True", "on", 1, 0, "1", None)
    ]
    + [
        {"eval": {"deterministic": "false"}},
        {"logging": {"progress_bar": 0}},
        {"ppo": {"normalize_advantage": "no"}},
        {"ppo": {"policy_kwargs": {"ortho_init": 1}}},
    ],
)
def test_a_bool_is_only_true_or_false(data):
    with pytest.raises(ConfigError, match="must be true or false") as error:
        load_config_dict(data)
    assert "\n" not in str(error.value)


def test_yaml_booleans_stay_booleans(tmp_path):
    # YAML 1.1 reads bare yes / off as booleans: those are real booleans, not strings.
    path = write(tmp_path, "env:\n  compile: yes\neval:\n  deterministic: off\n")
    config = load_config(path)
    assert config.env.compile is True and config.eval.deterministic is False


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("env.val_drop_prob", "3e-1", 0.3),
        ("env.divergence_factor", " 1e2 ", 100.0),
        ("env.reward.terminal_weight", "5e-1", 0.5),
        ("ppo.learning_rate", "3e-4", 3e-4),
        ("ppo.gamma", 1, 1.0),
        ("ppo.target_kl", "inf", float("inf")),
        ("run.total_timesteps", "1e3", 1000),
        ("ppo.n_steps", 16.0, 16),
        ("eval.freq", "0", 0),
    ],
)
def test_numbers_may_be_numeric_strings(key, value, expected):
    section, _, name = key.partition(".")
    data = {section: {}}
    node = data[section]
    *parents, leaf = name.split(".")
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    resolved = load_config_dict(data).to_dict()[section]
    for part in name.split("."):
        resolved = resolved[part]
    assert resolved == expected and type(resolved) is type(expected)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"run": {"seed": True}}, "run.seed must be an int"),
        ({"run": {"total_timesteps": "1e3.5"}}, "run.total_timesteps must be an int"),
        (
            {"env": {"divergence_factor": "nan"}},
            "env.divergence_factor must be a float",
        ),
        ({"env": {"val_drop_prob": True}}, "env.val_drop_prob must be a float"),
        ({"env": {"decision_interval": 0}}, "env.decision_interval must be >= 1"),
        ({"env": {"reward": 3}}, "env.reward must be a kind or a mapping of ["),
        ({"env": {"reward": {"max_normalized_loss": 0}}}, "env.reward.max_normalized"),
        ({"env": {"init": "wide"}}, "env.init must be a mapping of ['lr', 'beta1'"),
        ({"env": {"controlled": ["lr", "lr"]}}, "env.controlled must be a non-empty"),
        (
            {"env": {"family": "quadratic_2d", "family_kwargs": {1: 2}}},
            "env.family_kwargs must be a string key",
        ),
        (
            {"env": {"groups": [{"family": "quadratic_2d"}]}},
            "env.groups[0].n is required",
        ),
        (
            {"ppo": {"learning_rate": {"kind": "linear"}}},
            "ppo.learning_rate.start is required",
        ),
        (
            {"ppo": {"learning_rate": {"kind": "constnt"}}},
            "ppo.learning_rate.kind must be one of ['linear', 'constant'], got 'constnt'; did you mean 'constant'?",
        ),
        (
            {"ppo": {"clip_range": {"kind": "constant", "value": 1, "start": 1}}},
            "unknown key 'ppo.clip_range.start'; valid keys: kind, value",
        ),
        (
            {"ppo": {"policy_kwargs": {"net_arch": {"pi": [8], "vff": [8]}}}},
            "unknown key 'ppo.policy_kwargs.net_arch.vff'; did you mean 'vf'?",
        ),
        (
            {"ppo": {"rollout_buffer_class": "x"}},
            "ppo.rollout_buffer_class cannot be set here",
        ),
        (
            {"logging": {"verbose": True}},
            "logging.verbose must be one of [0, 1, 2], got True",
        ),
        ([], "the file must be a mapping"),
    ],
)
def test_errors_are_one_line_starting_with_the_key_path(data, path):
    with pytest.raises(ConfigError) as error:
        load_config_dict(data)
    message = str(error.value)
    assert message.startswith(path) and "\n" not in message


def test_training_and_the_env_keep_their_own_val_drop_prob():
    # Training hides validation in a fifth of episodes; the env (evaluation, a
    # user's gym.make) shows it always.
    assert EnvSettings().val_drop_prob == 0.0
    assert load_config_dict({}).env.val_drop_prob == 0.2
    for name in available_configs():
        assert load_config(name).env.settings("cpu").val_drop_prob == 0.2


def test_an_empty_or_partial_config_resolves_onto_default_yaml(tmp_path):
    default = load_config("default").to_dict()
    empty = load_config(write(tmp_path, "", "empty.yaml")).to_dict()
    assert empty["run"].pop("name") == "empty"
    default["run"].pop("name")
    assert empty == default  # not SB3's defaults (n_steps 2048 per run)
    partial = load_config(
        write(
            tmp_path, "env: {family: mlp_digits, reward: val_loss}\nppo: {n_steps: 8}"
        )
    ).to_dict()
    assert partial["env"]["split"] is None and partial["env"]["family"] == "mlp_digits"
    assert partial["env"]["reward"] == {**default["env"]["reward"], "kind": "val_loss"}
    assert partial["ppo"]["n_steps"] == 8
    assert partial["ppo"]["batch_size"] == default["ppo"]["batch_size"]


def test_action_bounds_are_env_keys_checked_by_the_env():
    config = load_config(
        "smoke", ["env.action_bounds={lr_step: 0.25, beta1: [0.8, 0.99]}"]
    )
    bounds = config.env.settings("cpu").action_bounds
    assert bounds.lr_step == 0.25 and bounds.beta1 == (0.8, 0.99)
    assert config.to_dict()["env"]["action_bounds"]["beta1"] == [0.8, 0.99]
    with pytest.raises(ConfigError, match=r"^env\.action_bounds\.beta1"):
        load_config("smoke", ["env.action_bounds.beta1=[0.3, 0.9]"])


def test_capture_is_a_config_key_refused_off_cuda(tmp_path):
    import torch

    path = write(tmp_path, "env:\n  capture: true\n")
    config = load_config(path)
    assert config.env.capture is True
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"capture .* needs a CUDA device"):
            config.env.settings("cpu")
