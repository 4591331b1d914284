"""Task families, the registry and the task splits."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from hyperpilot.envs.tasks import (
    TaskFamily,
    TaskInstance,
    family_names,
    make_family,
    register_family,
    registry,
)
from hyperpilot.envs.tasks.base import SeededDropout, build_model
from hyperpilot.envs.tasks.splits import available_splits, load_split

NEEDS_ARGUMENTS = {"data_file"}  # needs path=...; see tests/envs/test_data_file.py
FAMILIES = [name for name in family_names() if name not in NEEDS_ARGUMENTS]
DATA_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
SHIPPED_SPLITS = (
    "train",
    "val",
    "heldout",
    "heldout_v1",
    "train_v1",
    "val_v1",
    "smoke",
)


def sample(name: str, seed: int = 7, **kwargs) -> TaskInstance:
    return make_family(name, **kwargs).sample(np.random.default_rng(seed))


def minibatch(instance: TaskInstance) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        instance.x_train[: instance.batch_size],
        instance.y_train[: instance.batch_size],
    )


def parameters(instance: TaskInstance) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in instance.model.named_parameters()}


def free_knobs(name: str) -> list[str]:
    """The knobs of the family's constructor that `sample` draws into `knobs`."""
    family = make_family(name)
    params = inspect.signature(type(family)).parameters
    return [k for k in params if k in sample(name).knobs]


# --- every family -------------------------------------------------------------


def test_all_families_are_registered():
    expected = {
        "quadratic_2d",
        "logreg_blobs",
        "mlp_blobs",
        "multitask_blobs",
        "mlp_teacher",
        "mlp_digits",
        "cnn_digits",
        "gru_sequences",
        "attention_sequences",
        "mlp_wine",
        "logreg_breast_cancer",
        "transformer_pydoc",
        "transformer_sklearn_docs",
        "transformer_stdlib_source",
        "gru_co2",
        "gru_elnino",
        "lstm_sunspots",
        "fm_fair",
        "embedding_mlp_anes96",
        "mlp_poisson_teacher",
        "deep_mlp_randhie",
        "deep_mlp_diabetes",
        "coord_mlp_flower",
        "fourier_mlp_hopper",
        "autoencoder_digits",
        "vae_digits",
        "vae_china_patches",
        "bn_cnn_shapes",
        "resmlp_digits",
        "mlp_dropout_breast_cancer",
    }
    assert expected <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_and_backward_are_finite(name):
    family = make_family(name)
    assert isinstance(family, TaskFamily)
    instance = family.sample(np.random.default_rng(0))
    assert instance.family == name
    x, y = minibatch(instance)
    loss = instance.loss(instance.model(x), y)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    for param_name, param in instance.model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", FAMILIES)
def test_instance_contract(name):
    instance = sample(name)
    for field in DATA_FIELDS:
        tensor = getattr(instance, field)
        if field.startswith("x"):
            assert tensor.dtype == torch.float32, field
        else:
            assert tensor.dtype in (torch.float32, torch.int64), field
        assert torch.isfinite(tensor.to(torch.float32)).all(), field
    assert len(instance.x_train) == len(instance.y_train)
    assert len(instance.x_val) == len(instance.y_val)
    assert len(instance.x_test) == len(instance.y_test)
    assert 0 < instance.batch_size <= len(instance.x_train)
    assert instance.horizon > 0
    assert 0 <= instance.data_seed < 2**62
    assert instance.weight_decay >= 0
    x, y = minibatch(instance)
    with torch.no_grad():  # the loss contract: bounded below by 0
        assert instance.loss(instance.model.train()(x), y) >= 0
        assert instance.loss(instance.model.eval()(instance.x_val), instance.y_val) >= 0
    if instance.accuracy is not None:
        with torch.no_grad():
            share = instance.accuracy(instance.model(instance.x_val), instance.y_val)
        assert 0.0 <= float(share) <= 1.0


@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_are_fixed_by_the_shape_knobs(name):
    first, second = sample(name, seed=1), sample(name, seed=2)
    for field in DATA_FIELDS:
        a, b = getattr(first, field), getattr(second, field)
        assert a.shape == b.shape, field
        assert a.dtype == b.dtype, field
    assert first.batch_size == second.batch_size
    shapes = {k: v.shape for k, v in parameters(first).items()}
    assert shapes == {k: v.shape for k, v in parameters(second).items()}
    key = make_family(name).shape_key
    assert key == make_family(name).shape_key
    hash(key)


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_gives_the_same_instance(name):
    first, second = sample(name, seed=7), sample(name, seed=7)
    for field in DATA_FIELDS:
        assert torch.equal(getattr(first, field), getattr(second, field)), field
    params = parameters(second)
    for param_name, value in parameters(first).items():
        assert torch.equal(value, params[param_name]), param_name
    assert first.knobs == second.knobs
    assert first.horizon == second.horizon
    assert first.data_seed == second.data_seed


@pytest.mark.parametrize("name", FAMILIES)
def test_different_seeds_give_different_instances(name):
    first, second = sample(name, seed=1), sample(name, seed=2)
    same_data = all(
        torch.equal(getattr(first, f), getattr(second, f)) for f in DATA_FIELDS
    )
    params = parameters(second)
    same_params = all(torch.equal(v, params[k]) for k, v in parameters(first).items())
    assert not (same_data and same_params)
    assert first.data_seed != second.data_seed


@pytest.mark.parametrize("name", FAMILIES)
def test_sampling_leaves_global_rngs_alone(name):
    family = make_family(name)
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    python_state = random.getstate()
    family.sample(np.random.default_rng(3))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert random.getstate() == python_state


@pytest.mark.parametrize("name", FAMILIES)
def test_val_and_test_data_differ_from_train(name):
    instance = sample(name)
    for split in ("val", "test"):
        x = getattr(instance, f"x_{split}")
        assert not torch.equal(x, instance.x_train[: len(x)]), split
    n = min(len(instance.x_val), len(instance.x_test))
    assert not torch.equal(instance.x_val[:n], instance.x_test[:n])


@pytest.mark.parametrize("name", FAMILIES)
def test_stacked_vmap_matches_the_plain_model(name):
    """The engine's batched gradient equals each instance's own autograd gradient."""
    instances = [sample(name, seed=s) for s in (11, 12)]
    base = copy.deepcopy(instances[0].model).to("meta").train()
    loss_fn = instances[0].loss

    def loss_of(params, buffers, x, y):
        return loss_fn(functional_call(base, (params, buffers), (x,)), y)

    params, buffers = stack_module_state([i.model for i in instances])
    batches = [minibatch(i) for i in instances]
    x = torch.stack([b[0] for b in batches])
    y = torch.stack([b[1] for b in batches])
    grads, losses = vmap(grad_and_value(loss_of))(params, buffers, x, y)

    for index, instance in enumerate(instances):
        model = instance.model.train()
        model.zero_grad()
        loss = instance.loss(model(batches[index][0]), batches[index][1])
        loss.backward()
        torch.testing.assert_close(losses[index], loss.detach())
        for param_name, param in model.named_parameters():
            torch.testing.assert_close(
                grads[param_name][index], param.grad, rtol=1e-4, atol=1e-6
            )


def _norm_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LayerNorm(4), nn.Linear(4, 2)
    )


def test_build_model_gives_norm_layers_their_defaults():
    model = build_model(_norm_net, torch.Generator().manual_seed(0), init_scale=2.0)
    linear, batch_norm, layer_norm, _ = model
    for norm in (batch_norm, layer_norm):
        assert torch.equal(norm.weight, torch.ones(4))
        assert torch.equal(norm.bias, torch.zeros(4))
    assert torch.equal(batch_norm.running_mean, torch.zeros(4))
    assert torch.equal(batch_norm.running_var, torch.ones(4))
    assert int(batch_norm.num_batches_tracked) == 0
    assert 0.5 < linear.weight.abs().max() <= 2.0 / 3**0.5  # init_scale / sqrt(3)


def test_build_model_draws_as_before_around_norm_layers():
    """Norm layers draw nothing: the other layers get the draws of a net without."""
    plain = build_model(
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)),
        torch.Generator().manual_seed(0),
    )
    normed = build_model(_norm_net, torch.Generator().manual_seed(0))
    assert torch.equal(plain[0].weight, normed[0].weight)
    assert torch.equal(plain[1].bias, normed[3].bias)


class _ConstantBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.table


def test_build_model_refuses_a_buffer_it_cannot_initialize():
    with pytest.raises(ValueError, match=r"'1\.table' of _ConstantBuffer.*forward"):
        build_model(
            lambda: nn.Sequential(nn.Linear(3, 3), _ConstantBuffer()),
            torch.Generator(),
        )


@pytest.mark.parametrize("weight_decay", [-0.1, float("inf"), float("nan")])
def test_an_instance_refuses_a_bad_weight_decay(weight_decay):
    instance = sample("quadratic_2d")
    with pytest.raises(ValueError, match="weight_decay of a 'quadratic_2d' instance"):
        dataclasses.replace(instance, weight_decay=weight_decay)


# --- SeededDropout ------------------------------------------------------------


def _dropout(p: float, seed: int) -> SeededDropout:
    module = SeededDropout(p)
    module.reset_buffers(torch.Generator().manual_seed(seed))
    return module


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_seeded_dropout_drops_at_its_rate_and_scales_the_rest(p):
    x = torch.rand(400, 500, dtype=torch.float64, generator=torch.Generator()) + 1
    out = _dropout(p, seed=0)(x)
    dropped = out == 0
    rate = round(p * 256) / 256  # p rounded to whole bytes
    assert abs(p - rate) <= 1 / 512
    assert (
        abs(float(dropped.double().mean()) - rate)
        < 5 * (rate * (1 - rate) / x.numel()) ** 0.5
    )
    torch.testing.assert_close(
        out[~dropped], x[~dropped] / (1 - rate), rtol=1e-15, atol=0
    )


def test_seeded_dropout_masks_differ_between_seeds_and_steps_and_repeat_per_seed():
    p, x = 0.5, torch.ones(256, 256)
    first, twin, other = _dropout(p, 1), _dropout(p, 1), _dropout(p, 2)
    masks = [first(x) == 0 for _ in range(3)]
    assert first.counter == 3
    for mask in masks:  # the same seed and counter give the same mask
        assert torch.equal(twin(x) == 0, mask)
    other_mask = other(x) == 0

    def agreement(a, b):  # independent masks agree on about half the elements
        return float((a == b).double().mean())

    pairs = [(masks[0], masks[1]), (masks[1], masks[2]), (masks[0], other_mask)]
    for a, b in pairs:
        assert abs(agreement(a, b) - 0.5) < 0.01
    # neighbours, within one hash word and across words, are independent too
    flat = masks[0].flatten().double()
    for lag in (1, 2, 4, 5):
        both = float((flat[lag:] * flat[:-lag]).mean())
        assert abs(both - 0.25) < 0.01, lag


def test_seeded_dropout_is_the_identity_in_eval_mode_and_leaves_global_rngs_alone():
    state = torch.random.get_rng_state()
    module, x = _dropout(0.5, 0), torch.ones(8, 8)
    assert not torch.equal(module(x), x)
    module.eval()
    assert module(x) is x
    assert module.counter == 1  # eval calls draw nothing
    assert torch.equal(torch.random.get_rng_state(), state)


def test_seeded_dropout_under_vmap_draws_each_runs_own_masks():
    modules = [_dropout(0.3, seed) for seed in (4, 5, 6)]
    _, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0]).to("meta")
    x = torch.ones(3, 10, 7)

    def call(buffers, x):
        return functional_call(base, buffers, (x,))

    batched = vmap(call)(buffers, x)
    assert buffers["counter"].tolist() == [1, 1, 1]
    for index, module in enumerate(modules):
        assert torch.equal(batched[index], module(x[index]))


def test_build_model_seeds_each_dropout_and_keeps_the_weights_of_a_net_without():
    def net(dropout: bool) -> nn.Module:
        layers = [
            nn.Linear(3, 4),
            SeededDropout(0.5),
            nn.Linear(4, 2),
            SeededDropout(0.5),
        ]
        return nn.Sequential(
            *(m for m in layers if dropout or isinstance(m, nn.Linear))
        )

    built = [
        build_model(lambda: net(True), torch.Generator().manual_seed(0)) for _ in "ab"
    ]
    plain = build_model(lambda: net(False), torch.Generator().manual_seed(0))
    first, second = built[0][1], built[0][3]
    assert first.seed != second.seed and first.counter == second.counter == 0
    assert built[1][1].seed == first.seed and built[1][3].seed == second.seed
    assert torch.equal(plain[1].weight, built[0][2].weight)


@pytest.mark.parametrize("p", [-0.1, 1.0, 0.999])
def test_seeded_dropout_refuses_a_bad_rate(p):
    with pytest.raises(ValueError, match="dropout p"):
        SeededDropout(p)


# --- free knobs ---------------------------------------------------------------

RANGES = {
    "horizon": [150, 160],
    "signal": [2, 4],
    "init_scale": [0.5, 1.5],
    "label_noise": [0.1, 0.3],
    "noise": [0.1, 0.3],
    "separation": [1.5, 2.5],
    "condition": [2.0, 4.0],
    "scale": [3.0, 6.0],
    "rate": [1.0, 4.0],
    "clutter": [0.2, 0.4],
    "weight_decay": [0.01, 0.1],
}
FIXED = {
    "horizon": 123,
    "signal": 3,
    "init_scale": 0.75,
    "label_noise": 0.2,
    "noise": 0.25,
    "separation": 2.25,
    "condition": 3.0,
    "scale": 5.0,
    "rate": 2.5,
    "clutter": 0.3,
    "weight_decay": 0.05,
}
KNOB_CASES = [
    pytest.param(name, knob, id=f"{name}-{knob}")
    for name in FAMILIES
    for knob in free_knobs(name)
]


def test_every_free_knob_has_a_test_value():
    assert {knob for case in KNOB_CASES for knob in case.values[1:]} <= set(RANGES)


@pytest.mark.parametrize(("name", "knob"), KNOB_CASES)
def test_free_knob_range_is_drawn_within(name, knob):
    low, high = RANGES[knob]
    drawn = {sample(name, seed=s, **{knob: [low, high]}).knobs[knob] for s in range(5)}
    assert all(low <= value <= high for value in drawn)
    assert len(drawn) > 1


@pytest.mark.parametrize(("name", "knob"), KNOB_CASES)
def test_free_knob_value_is_used_as_is(name, knob):
    instance = sample(name, **{knob: FIXED[knob]})
    assert instance.knobs[knob] == FIXED[knob]
    if knob == "horizon":
        assert instance.horizon == FIXED[knob]


LABEL_NOISE_FAMILIES = [n for n in FAMILIES if "label_noise" in free_knobs(n)]


@pytest.mark.parametrize("name", LABEL_NOISE_FAMILIES)
def test_label_noise_corrupts_training_labels_only(name):
    clean = sample(name, seed=5, label_noise=0.0)
    noisy = sample(name, seed=5, label_noise=0.5)
    assert torch.equal(clean.x_train, noisy.x_train)
    assert not torch.equal(clean.y_train, noisy.y_train)
    assert torch.equal(clean.y_val, noisy.y_val)
    assert torch.equal(clean.y_test, noisy.y_test)


# --- registry -----------------------------------------------------------------


def test_unknown_family_suggests_a_close_match_and_lists_valid_names():
    with pytest.raises(ValueError, match="mlp_digit") as error:
        make_family("mlp_digit")
    message = str(error.value)
    assert "Did you mean 'mlp_digits'" in message
    for name in FAMILIES:
        assert name in message


def test_unknown_knob_names_the_family():
    with pytest.raises(ValueError, match="mlp_digits"):
        make_family("mlp_digits", wdith=32)


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    @register_family("test_only_family")
    class First(TaskFamily):
        shape_key = ()

        def sample(self, rng):
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        register_family("test_only_family")(First)
    with pytest.raises(ValueError, match="already registered"):
        register_family("mlp_digits")(First)


def test_family_by_import_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    family = make_family("helpers:CustomFamily", n_features=3)
    assert family.shape_key == (3,)
    assert family.name == "helpers:CustomFamily"
    instance = family.sample(np.random.default_rng(0))
    assert instance.x_train.shape == (64, 3)
    with pytest.raises(ValueError, match="helpers:CustomFamily"):
        make_family("helpers:CustomFamily", width=3)


@pytest.mark.parametrize("path", ["no_such_module_xyz:Family", "helpers:NoSuchFamily"])
def test_bad_import_path_raises(monkeypatch, path):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    with pytest.raises(ValueError, match=r"cannot import|has no"):
        make_family(path)


# --- splits -------------------------------------------------------------------


def test_shipped_splits_are_available():
    assert set(SHIPPED_SPLITS) <= set(available_splits())


@pytest.mark.parametrize("split", SHIPPED_SPLITS)
def test_split_builds_and_samples_every_family(split):
    specs = load_split(split)
    assert specs
    for index, spec in enumerate(specs):
        family = spec.build()
        instance = family.sample(np.random.default_rng(index))
        x, y = minibatch(instance)
        assert torch.isfinite(instance.loss(instance.model(x), y)), spec.label


DATA_SETS = {
    "quadratic_2d": "generated quadratic",
    "logreg_blobs": "generated blobs",
    "mlp_blobs": "generated blobs",
    "multitask_blobs": "generated blobs",
    "mlp_teacher": "generated teacher",
    "mlp_poisson_teacher": "generated teacher",
    "mlp_digits": "digits",
    "cnn_digits": "digits",
    "resmlp_digits": "digits",
    "autoencoder_digits": "digits",
    "vae_digits": "digits",
    "gru_sequences": "generated token strings",
    "attention_sequences": "generated token strings",
    "mlp_wine": "wine",
    "logreg_breast_cancer": "breast_cancer",
    "mlp_dropout_breast_cancer": "breast_cancer",
    "transformer_pydoc": "pydoc topics",
    "transformer_stdlib_source": "stdlib source",
    "transformer_sklearn_docs": "sklearn descr",
    "gru_co2": "co2",
    "gru_elnino": "elnino",
    "lstm_sunspots": "sunspots",
    "fm_fair": "fair",
    "embedding_mlp_anes96": "anes96",
    "deep_mlp_diabetes": "diabetes",
    "deep_mlp_randhie": "randhie",
    "coord_mlp_flower": "flower.jpg",
    "fourier_mlp_hopper": "grace_hopper.jpg",
    "vae_china_patches": "china.jpg",
    "bn_cnn_shapes": "generated shapes",
}
"""The data set behind each family of the shipped splits."""


def _families(split: str) -> set[str]:
    return {spec.family for spec in load_split(split)}


def test_every_split_family_names_its_data_set():
    for split in SHIPPED_SPLITS:
        assert _families(split) <= set(DATA_SETS), split


def test_splits_are_leave_family_out():
    train, val, heldout = (_families(s) for s in ("train", "val", "heldout"))
    assert not train & val
    assert not train & heldout
    assert not val & heldout


def test_no_train_model_has_dropout():
    """The held-out dropout MLP must differ from every train family in architecture."""
    for spec in load_split("train"):
        assert not spec.kwargs.get("dropout"), spec.label
    assert "mlp_dropout_breast_cancer" in _families("heldout")


def test_heldout_tasks_use_no_train_or_val_data_set():
    seen = {DATA_SETS[f] for f in _families("train") | _families("val")}
    for family in _families("heldout"):
        assert DATA_SETS[family] not in seen, family


def test_heldout_has_at_least_eight_tasks_with_horizons_200_to_3000():
    specs = load_split("heldout")
    assert len(specs) >= 8
    for index, spec in enumerate(specs):
        horizon = spec.build().sample(np.random.default_rng(index)).horizon
        assert 200 <= horizon <= 3000, spec.label


def test_heldout_v1_keeps_the_first_heldout_split():
    labels = [spec.label for spec in load_split("heldout_v1")]
    assert labels == [
        "mlp_wine",
        "logreg_breast_cancer",
        "attention_sequences",
        "mlp_digits(horizon=400)",
        "cnn_digits(horizon=800)",
    ]


def test_missing_split_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="not found") as error:
        load_split("no_such_split")
    for name in SHIPPED_SPLITS:
        assert name in str(error.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "families: 3\n",
        "families: []\n",
        "families:\n  - width: 32\n",
        "- family: mlp_digits\n",
    ],
    ids=["empty", "not-a-list", "empty-list", "no-family-key", "top-level-list"],
)
def test_malformed_split_raises(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        load_split(path)


@pytest.mark.parametrize(
    "path", ["os:system", "subprocess:getoutput", "builtins:print"], ids=str
)
def test_an_import_path_must_name_a_task_family_class(path, tmp_path, capsys):
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="not a TaskFamily subclass"):
        make_family(path, cmd=f"touch {marker}")
    assert not marker.exists()


# --- family-specific checks -----------------------------------------------------


def test_poisson_nll_is_the_exact_negative_log_likelihood():
    from hyperpilot.envs.tasks.counts import poisson_nll

    log_rate = torch.linspace(-3.0, 3.0, 13)[:, None]
    counts = torch.tensor([0.0, 1, 2, 3, 5, 8, 13, 0, 1, 4, 9, 30, 77])
    expected = -torch.distributions.Poisson(log_rate[:, 0].exp()).log_prob(counts)
    torch.testing.assert_close(poisson_nll(log_rate, counts), expected.mean())
    # Each row's loss is >= 0, with its minimum near the count's own rate.
    for count in counts:
        assert poisson_nll(count.clamp_min(1e-3).log().view(1, 1), count.view(1)) >= 0


@pytest.mark.parametrize("name", ["mlp_poisson_teacher", "deep_mlp_randhie"], ids=str)
def test_count_families_have_integer_counts_and_nonnegative_loss(name):
    instance = sample(name)
    for target in (instance.y_train, instance.y_val, instance.y_test):
        assert (target >= 0).all() and torch.equal(target, target.round())
    with torch.no_grad():
        assert instance.loss(instance.model(instance.x_val), instance.y_val) >= 0


TRANSFORMERS = [n for n in FAMILIES if n.startswith("transformer_")]


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_language_model_is_causal(name):
    instance = sample(name, width=16, heads=2, context=8)
    x = instance.x_val[:2].clone()
    with torch.no_grad():
        before = instance.model(x)
        x[:, 5] = (x[:, 5] + 1) % 10  # change one later character
        after = instance.model(x)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_language_model_targets_are_the_next_characters(name):
    instance = sample(name, context=8)
    assert torch.equal(instance.x_train[:, 1:].long(), instance.y_train[:, :-1])


def test_forecast_windows_are_time_ordered_and_relative():
    from hyperpilot.envs.tasks.forecast import forecast_windows

    series = torch.arange(100, dtype=torch.float32) ** 1.5
    (x_train, y_train), (x_val, _), (x_test, _) = forecast_windows(series, 8, 2)
    assert len(x_train) + len(x_val) + len(x_test) == 100 - 10 + 1
    assert (x_train[:, -1, 0] == 0).all()  # relative to the window's last value
    assert y_train.std() == pytest.approx(1.0)
    # later windows have larger steps on this convex series: test comes last
    assert (x_test[:, 0, 0] < x_val[:, 0, 0].min()).all()


@pytest.mark.parametrize("name", ["vae_digits", "vae_china_patches"])
def test_vae_negative_elbo_is_nonnegative_and_uses_the_carried_noise(name):
    instance = sample(name, width=16, latent=4, copies=2)
    x = instance.x_val[:8]
    with torch.no_grad():
        loss = instance.loss(instance.model(x), instance.y_val[:8])
        assert loss >= 0
        # The noise travels in the inputs: other noise, other loss; same, same.
        other = x.clone()
        other[:, -4:] += 1.0
        assert instance.loss(instance.model(other), instance.y_val[:8]) != loss
    assert torch.equal(x[:, :-4], instance.y_val[:8])


def test_negative_elbo_matches_its_closed_form():
    from hyperpilot.envs.tasks.generative import negative_elbo

    target = torch.rand(5, 6)
    decoded, mu, log_var = torch.randn(5, 6), torch.randn(5, 2), torch.randn(5, 2)
    output = torch.cat([decoded, mu, log_var], dim=1)
    kl = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(1)
    bce = -(
        target * torch.sigmoid(decoded).log()
        + (1 - target) * (1 - torch.sigmoid(decoded)).log()
    ).sum(1)
    torch.testing.assert_close(
        negative_elbo(output, target, bernoulli=True), (bce + kl).mean()
    )
    gaussian = ((decoded - target) ** 2 / (2 * 0.1**2)).sum(1)
    torch.testing.assert_close(
        negative_elbo(output, target, bernoulli=False, sigma=0.1),
        (gaussian + kl).mean(),
    )


def test_every_family_loads_its_data_without_the_network(monkeypatch):
    """Data comes from installed packages or a generator: no socket is ever opened."""
    import socket

    from hyperpilot.envs.tasks import (
        coordinates,
        deep,
        digits,
        embeddings,
        forecast,
        generative,
        tabular,
        text,
    )

    def refuse(*args, **kwargs):
        raise AssertionError("a task family tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for loader in (
        coordinates.load_image,
        deep.load_diabetes,
        deep.load_randhie,
        digits.load_digits,
        embeddings.load_survey,
        forecast.load_series,
        generative.load_patches,
        tabular.load_table,
        text.load_text,
    ):
        loader.cache_clear()
    for name in FAMILIES:
        sample(name)
