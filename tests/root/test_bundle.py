import functools
import json
import pickle

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import Payload, save_tiny_bundle, train_tiny_ppo
from torch import nn

from hyperpilot._version import __version__
from hyperpilot.agents.pilot import Pilot
from hyperpilot.bundle import (
    FORMAT_VERSION,
    Actor,
    BundleError,
    actor_from_policy,
    describe_bundle,
    load_bundle,
)
from hyperpilot.envs.actions import Hyperparams, decode_action
from hyperpilot.envs.features import FEATURES_VERSION, OBS_NAMES

TRAINING = {
    "config": {"ppo": {"n_steps": 8}, "env": {"family": "quadratic_2d"}},
    "command": ["hyperpilot", "train", "--config", "smoke.yaml"],
    "timesteps": 64,
}


@functools.cache
def _trained(net_arch=(32, 32), activation="tanh", normalize=True, **settings):
    """A tiny PPO model with non-trivial weights (and observation statistics)."""
    return train_tiny_ppo(net_arch, activation, normalize, **settings)


def _save(path, model, venv, env, default_clip=1.0):
    return save_tiny_bundle(
        path, model, venv, env, default_clip=default_clip, training=TRAINING
    )


@pytest.fixture
def saved(tmp_path):
    model, venv, env = _trained()
    return _save(tmp_path / "pilot", model, venv, env)


def _raw_observations(venv, n=32):
    space = venv.observation_space
    space.seed(0)
    return np.stack([space.sample() for _ in range(n)])


def _edit_meta(path, edit):
    meta = json.loads((path / "pilot.json").read_text())
    edit(meta)
    (path / "pilot.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("net_arch", "activation", "normalize"),
    [((32, 32), "tanh", True), ((16,), "relu", True), ((32, 32), "tanh", False)],
    ids=["tanh-32-32", "relu-16", "no-vecnormalize"],
)
def test_round_trip_matches_sb3_predict(tmp_path, net_arch, activation, normalize):
    model, venv, env = _trained(net_arch, activation, normalize)
    path = _save(tmp_path / "pilot", model, venv, env)
    raw = _raw_observations(venv)
    seen = venv.normalize_obs(raw) if normalize else raw
    expected = model.predict(seen, deterministic=True)[0]

    pilot = Pilot.load(path)
    actions = pilot.act(raw)
    assert actions.dtype == np.float32
    assert actions.shape == expected.shape == (32, 3)
    np.testing.assert_allclose(actions, expected, atol=1e-6, rtol=0)
    # A single observation and a torch tensor give the same rows.
    np.testing.assert_allclose(pilot.act(raw[0]), expected[0], atol=1e-6, rtol=0)
    tensor_actions = pilot.bundle.act(torch.as_tensor(raw))
    assert isinstance(tensor_actions, torch.Tensor)
    np.testing.assert_allclose(tensor_actions.numpy(), expected, atol=1e-6, rtol=0)
    assert pilot.bundle.meta["policy"]["net_arch"] == list(net_arch)
    assert pilot.bundle.meta["policy"]["activation"] == activation
    assert (pilot.bundle.obs_mean is not None) == normalize


def test_actor_from_policy_matches_the_policy_mean():
    model, venv, _ = _trained()
    actor = actor_from_policy(model.policy)
    assert [k for k in actor.state_dict()] == [
        "policy_net.0.weight",
        "policy_net.0.bias",
        "policy_net.2.weight",
        "policy_net.2.bias",
        "action_net.weight",
        "action_net.bias",
    ]
    obs = torch.as_tensor(venv.normalize_obs(_raw_observations(venv)))
    with torch.no_grad():
        mean = model.policy.get_distribution(obs).distribution.mean
    torch.testing.assert_close(actor(obs), mean)


def test_pilot_json_holds_every_field(tmp_path):
    settings = {"decision_interval": 5, "action_mode": "residual"}
    model, venv, env = _trained(
        (16,), "relu", True, controlled=("lr", "clip"), **settings
    )
    path = _save(tmp_path / "pilot", model, venv, env, default_clip=3.0)
    meta = json.loads((path / "pilot.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == "1.1"
    assert meta["package_version"] == __version__
    assert meta["features"] == {"version": FEATURES_VERSION, "names": list(OBS_NAMES)}
    assert meta["action"] == {
        "mode": "residual",
        "controlled": ["lr", "clip"],
        "steps": {"lr": 0.5, "beta1": 0.25, "clip": 0.5},
        "ranges": {"lr": [1e-6, 1.0], "beta1": [0.5, 0.999], "clip": [1e-2, 1e3]},
    }
    assert meta["decision_interval"] == 5
    assert meta["default_clip"] == 3.0
    norm = meta["observation_normalization"]
    assert norm["mean"] == venv.obs_rms.mean.tolist()
    assert norm["var"] == venv.obs_rms.var.tolist()
    assert (norm["clip"], norm["epsilon"]) == (venv.clip_obs, venv.epsilon)
    assert meta["policy"] == {
        "net_arch": [16],
        "activation": "relu",
        "weights": "actor.safetensors",
    }
    assert meta["training"] == TRAINING
    assert meta["created"].endswith("+00:00")
    assert sorted(p.name for p in path.iterdir()) == ["actor.safetensors", "pilot.json"]

    pilot = Pilot.load(path)
    assert pilot.decision_interval == 5
    assert pilot.action_mode == "residual"
    assert pilot.controlled == ("lr", "clip")
    assert pilot.default_clip == 3.0
    assert pilot.bundle.feature_names == OBS_NAMES
    assert pilot.act(_raw_observations(venv)).shape == (32, 2)
    settings = pilot.bundle.settings()
    assert (settings.decision_interval, settings.action_mode, settings.controlled) == (
        5,
        "residual",
        ("lr", "clip"),
    )

    text = describe_bundle(pilot.bundle)
    for needle in [
        FORMAT_VERSION,
        __version__,
        f"version {FEATURES_VERSION}",
        *OBS_NAMES,
        "residual",
        "lr, clip",
        "every 5 inner steps",
        "default clip:    3",
        "[16]",
        "relu",
        "normalization:   yes",
        "hyperpilot train --config smoke.yaml",
        "64",
        meta["created"],
    ]:
        assert needle in text


def test_saving_twice_leaves_one_complete_bundle(tmp_path):
    first = _trained()
    second = _trained((16,), "relu", True)
    path = tmp_path / "pilot"
    _save(path, *first)
    _save(path, *second)
    assert [p.name for p in tmp_path.iterdir()] == ["pilot"]
    assert sorted(p.name for p in path.iterdir()) == ["actor.safetensors", "pilot.json"]
    model, venv, _ = second
    raw = _raw_observations(venv)
    expected = model.predict(venv.normalize_obs(raw), deterministic=True)[0]
    np.testing.assert_allclose(Pilot.load(path).act(raw), expected, atol=1e-6)


def test_a_failed_save_keeps_the_old_bundle(tmp_path, monkeypatch):
    path = _save(tmp_path / "pilot", *_trained())
    before = (path / "pilot.json").read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(path, *_trained((16,), "relu", True))
    assert [p.name for p in tmp_path.iterdir()] == ["pilot"]
    assert (path / "pilot.json").read_text() == before
    load_bundle(path)


def test_save_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("keep me")
    with pytest.raises(BundleError, match=r"without pilot\.json"):
        _save(tmp_path / "run", *_trained())
    assert (tmp_path / "run" / "config.yaml").read_text() == "keep me"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format_version="2.0"), r"format 2\.0.*reads format 1\.1"),
        (lambda m: m["features"].update(version=99), "features version 99"),
        (lambda m: m["features"]["names"].reverse(), "lists features"),
        (lambda m: m["policy"].update(net_arch=[8]), "does not match the architecture"),
        (lambda m: m["action"].update(controlled=["lr"]), "does not match"),
        (lambda m: m["action"]["steps"].update(lr=-1.0), "lr_step must be"),
        (lambda m: m["action"]["ranges"].update(beta1=[0.5, 1.5]), "beta1 range"),
        (lambda m: m.pop("decision_interval"), "lacks 'decision_interval'"),
        (lambda m: m["policy"].update(activation="swish"), "swish"),
        (lambda m: m["policy"].update(weights="actor.bin"), "refusing weights file"),
        (lambda m: m["policy"].update(weights="../x.pt"), "refusing weights file"),
    ],
    ids=[
        "format-major-2",
        "feature-version-99",
        "feature-names",
        "shape-mismatch",
        "action-count-mismatch",
        "action-step-negative",
        "action-range-too-wide",
        "missing-field",
        "unknown-activation",
        "unknown-weights-name",
        "weights-outside-bundle",
    ],
)
def test_load_refuses_incompatible_bundles(saved, edit, match):
    _edit_meta(saved, edit)
    with pytest.raises(BundleError, match=match) as error:
        load_bundle(saved)
    assert "pilot.json" in str(error.value) or "actor" in str(error.value)


def test_a_bundle_acts_with_its_own_action_bounds(saved):
    _edit_meta(saved, lambda m: m["action"]["steps"].update(lr=0.1))
    _edit_meta(saved, lambda m: m["action"]["ranges"].update(beta1=[0.8, 0.99]))
    bundle = load_bundle(saved)
    assert bundle.bounds.lr_step == 0.1 and bundle.bounds.beta1 == (0.8, 0.99)
    assert bundle.settings().action_bounds == bundle.bounds
    hparams = Hyperparams.full(1, 1e-3, 0.9, 1.0, dtype=torch.float64)
    up = torch.ones(1, len(bundle.controlled), dtype=torch.float64)
    new = decode_action(up, hparams, bundle.controlled, bounds=bundle.bounds)
    assert new.lr.item() == pytest.approx(1e-3 * 10**0.1)  # one step of 0.1 decades
    if "beta1" in bundle.controlled:
        assert 0.8 <= new.beta1.item() <= 0.99


def test_minor_format_versions_load(saved):
    _edit_meta(saved, lambda m: m.update(format_version="1.7", extra="ignored"))
    load_bundle(saved)


def test_load_refuses_missing_and_malformed_pilot_json(saved, tmp_path):
    (saved / "pilot.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"pilot\.json is not valid JSON"):
        load_bundle(saved)
    (saved / "pilot.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="JSON object"):
        load_bundle(saved)
    (saved / "pilot.json").unlink()
    with pytest.raises(BundleError, match=r"pilot\.json not found"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")


def test_load_refuses_mismatched_tensor_shapes(saved):
    state = safetensors.torch.load_file(saved / "actor.safetensors")
    state["action_net.weight"] = torch.zeros(3, 7)
    safetensors.torch.save_file(state, saved / "actor.safetensors")
    with pytest.raises(BundleError, match="does not match the architecture"):
        load_bundle(saved)


def test_plain_pt_weights_load(saved):
    reference = load_bundle(saved)
    torch.save(reference.actor.state_dict(), saved / "actor.pt")
    (saved / "actor.safetensors").unlink()
    _edit_meta(saved, lambda m: m["policy"].update(weights="actor.pt"))
    obs = torch.randn(8, len(OBS_NAMES), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(load_bundle(saved).act(obs), reference.act(obs))


def _write_pickle(path, marker, writer):
    if writer == "torch.save":
        torch.save({"action_net.weight": Payload(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"action_net.weight": Payload(marker)}, f)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_load_never_unpickles_a_malicious_pt(saved, tmp_path, writer):
    # The payload is live: plain unpickling would run it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    _write_pickle(saved / "actor.pt", marker, writer)
    _edit_meta(saved, lambda m: m["policy"].update(weights="actor.pt"))
    with pytest.raises(
        BundleError, match=r"refusing to load .*not a plain tensor file"
    ):
        load_bundle(saved)
    with pytest.raises(BundleError):
        Pilot.load(saved)
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_load_refuses_a_pickle_named_safetensors(saved, tmp_path, writer):
    marker = tmp_path / "pwned"
    _write_pickle(saved / "actor.safetensors", marker, writer)
    with pytest.raises(BundleError, match="not a safetensors file"):
        load_bundle(saved)
    assert not marker.exists()


def test_unknown_pretrained_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="no pretrained pilot named 'no_such_pilot'"):
        load_bundle("no_such_pilot")
    with pytest.raises(BundleError, match="'no_such_pilot'"):
        Pilot.load("no_such_pilot")


def test_loading_and_acting_leave_the_global_rng_alone(saved):
    before = torch.get_rng_state()
    pilot = Pilot.load(saved)
    pilot.act(np.zeros(len(OBS_NAMES), dtype=np.float32))
    Actor(len(OBS_NAMES), 3, [64, 64], "gelu")
    assert torch.equal(torch.get_rng_state(), before)


def test_actor_from_policy_refuses_what_it_cannot_represent():
    model, _, _ = _trained()
    policy = model.policy
    original = policy.mlp_extractor.policy_net
    try:
        policy.mlp_extractor.policy_net = nn.Sequential(
            nn.Linear(len(OBS_NAMES), 8), nn.LeakyReLU(0.2)
        )
        with pytest.raises(BundleError, match="activations"):
            actor_from_policy(policy)
        policy.mlp_extractor.policy_net = nn.Sequential(nn.Linear(len(OBS_NAMES), 8))
        with pytest.raises(BundleError, match="Linear, activation"):
            actor_from_policy(policy)
    finally:
        policy.mlp_extractor.policy_net = original
    with pytest.raises(BundleError, match="no mlp_extractor"):
        actor_from_policy(object())
