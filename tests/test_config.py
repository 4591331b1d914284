import dataclasses

import pytest
import yaml
from torch import nn

from hyperpilot.config import (
    ConfigError,
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
from hyperpilot.envs.tasks.splits import CONFIGS_DIR


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
        {"env": {"groups": [{"family": "heldout", "n": 2}]}},
    ],
    ids=["env-split", "env-split-path", "eval-split", "group"],
)
def test_heldout_split_is_refused(data):
    with pytest.raises(ConfigError, match="heldout split is reserved for final"):
        load_config_dict(data)


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
    assert dataclasses.replace(again, source=config.source) == config
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    assert dataclasses.replace(load_config(path), source=config.source) == config
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
