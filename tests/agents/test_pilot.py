"""The Pilot in a plain PyTorch loop: no train/deploy skew, and its real-loop rules."""

import copy
import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from helpers import save_tiny_bundle, train_tiny_ppo
from torch import nn
from torch.func import functional_call

from hyperpilot.agents.pilot import Pilot
from hyperpilot.bundle import load_bundle
from hyperpilot.envs.engine import BatchedEngine, MinibatchOrder
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.tasks import make_family

F64 = torch.float64


def _make_bundle(path, action_mode):
    """A tiny real bundle whose actions are far from zero, so the hparams move."""
    model, venv, env = train_tiny_ppo((16,), action_mode=action_mode)
    with torch.no_grad():  # PPO starts with near-zero actions; make them matter
        model.policy.action_net.weight.mul_(30.0)
    # default clip low enough that steps are clipped
    return save_tiny_bundle(path, model, venv, env, default_clip=0.05)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("pilots")
    return {mode: _make_bundle(root / mode, mode) for mode in ("compound", "residual")}


@pytest.fixture(scope="module")
def bundle_dir(bundles):
    return bundles["compound"]


# ------------------------------------------------------------ no train/deploy skew
class _Recording:
    """A bundle that records the observations the pilot shows it."""

    def __init__(self, bundle):
        self._bundle = bundle
        self.seen = []

    def __getattr__(self, name):
        return getattr(self._bundle, name)

    def act(self, obs):
        self.seen.append(obs.clone())
        return self._bundle.act(obs)


def _engine_run(bundle, instance, with_val):
    settings = dataclasses.replace(bundle.settings(), device="cpu", dtype="float64")
    engine = BatchedEngine(1, settings)
    episode = Episode(instance, 1e-3, 0.9, bundle.default_clip, with_val)
    obs = engine.start([0], [episode])
    seen, hparams, losses = [], [], []
    while engine.running.any():
        seen.append(obs.clone())
        transition = engine.act(bundle.act(obs))
        hparams.append([float(v[0]) for v in transition.hparams.values()])
        losses.append(float(transition.train_loss[0]))
        obs = transition.obs
    return {
        "obs": torch.cat(seen).numpy(),
        "hparams": np.array(hparams),
        "train_loss": np.array(losses),
    }


def _pilot_run(
    bundle, instance, with_val, pilot_cls=Pilot, lag_loss=False, val_buffers=None
):
    """The user loop of the README, on the engine's data order, in float64.

    `val_buffers="before_forward"` validates with the buffers as they were before
    the current step's forward pass (see the BatchNorm test below).
    """
    model = copy.deepcopy(instance.model).double()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=instance.weight_decay,  # 0: Adam
    )
    order = MinibatchOrder(1, len(instance.x_train), instance.batch_size, "cpu")
    order.restart(0, instance.data_seed)

    def cast(t):
        return t.double() if t.is_floating_point() else t

    x_train, y_train = cast(instance.x_train), cast(instance.y_train)
    x_val, y_val = cast(instance.x_val), cast(instance.y_val)

    buffers = None

    def val_fn():  # in eval mode, as a user's validation should be
        model.eval()
        if buffers is None:
            output = model(x_val)
        else:
            output = functional_call(model, buffers, (x_val,))
        model.train()
        return float(instance.loss(output, y_val))

    recording = _Recording(bundle)
    pilot = pilot_cls(recording)
    pilot.attach(optimizer, instance.horizon, val_fn=val_fn if with_val else None)
    k = pilot.decision_interval
    hparams, losses, window, previous = [], [], [], None
    for step in range(instance.horizon):
        index = order.next()[0]
        if val_buffers == "before_forward":
            buffers = {n: b.clone() for n, b in model.named_buffers()}
        loss = instance.loss(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        pilot.step(previous if lag_loss and previous is not None else loss)
        previous = loss.detach()
        window.append(loss.item())
        optimizer.step()
        if (step + 1) % k == 0:
            hparams.append(list(pilot.hyperparameters.values()))
            losses.append(sum(window) / len(window))
            window = []
    return {
        "obs": torch.cat(recording.seen).numpy(),
        "hparams": np.array(hparams),
        "train_loss": np.array(losses),
    }


def _mismatch(a, b):
    """Largest relative difference of hparams and losses, absolute of observations."""
    if any(a[key].shape != b[key].shape for key in a):
        return np.inf
    relative = [np.abs(a[key] / b[key] - 1).max() for key in ("hparams", "train_loss")]
    return max(*relative, np.abs(a["obs"] - b["obs"]).max())


def _instance(family, **kwargs):
    family = make_family(family, horizon=60, **kwargs)
    return family.sample(np.random.default_rng(0))


# tests/helpers.py (NormFamily): BatchNorm buffers, SeededDropout and AdamW's weight decay
# (with a val_fn, see the BatchNorm test below)
NORM = ("helpers:NormFamily", {"dropout": 0.3, "weight_decay": 0.2})


@pytest.mark.parametrize(
    ("family", "mode", "with_val"),
    [
        ("mlp_digits", "compound", True),
        ("mlp_digits", "compound", False),
        ("quadratic_2d", "compound", True),
        ("quadratic_2d", "compound", False),
        ("quadratic_2d", "residual", True),
        ("quadratic_2d", "residual", False),
        (NORM, "compound", False),
    ],
    ids=str,
)
def test_pilot_in_a_user_loop_reproduces_the_engine(bundles, family, mode, with_val):
    bundle = load_bundle(bundles[mode])
    name, kwargs = family if isinstance(family, tuple) else (family, {})
    instance = _instance(name, **kwargs)
    engine = _engine_run(bundle, instance, with_val)
    pilot = _pilot_run(bundle, instance, with_val)
    assert _mismatch(pilot, engine) < 1e-8
    # the comparison has teeth: the values move, and clipping happens
    lrs = engine["hparams"][:, 0]
    assert lrs.max() / lrs.min() > 1.1
    assert engine["obs"][:, 9].max() > 0  # clip_fraction
    assert (engine["obs"][:, 12] == float(with_val)).all()  # val_available


def test_with_batchnorm_the_pilots_val_fn_sees_one_more_forward(bundle_dir):
    """A known skew: the user's val_fn runs after the step's train-mode forward.

    At a decision the engine validates after K steps; the Pilot's `val_fn` runs
    inside `pilot.step`, after that step's forward pass has updated BatchNorm's
    running statistics once more. With the buffers from before that forward, the
    two agree.
    """
    bundle = load_bundle(bundle_dir)
    instance = _instance(NORM[0], **NORM[1])
    engine = _engine_run(bundle, instance, True)
    assert _mismatch(_pilot_run(bundle, instance, True), engine) > 1e-4
    matched = _pilot_run(bundle, instance, True, val_buffers="before_forward")
    assert _mismatch(matched, engine) < 1e-8


class _LatePilot(Pilot):
    def _decision_due(self):
        return (self._steps - 1) % self.decision_interval == 0


class _EarlyPilot(Pilot):
    def _decision_due(self):
        return (self._steps + 1) % self.decision_interval == 0


@pytest.mark.parametrize(
    "skew",
    [{"pilot_cls": _LatePilot}, {"pilot_cls": _EarlyPilot}, {"lag_loss": True}],
    ids=["decisions-one-step-late", "decisions-one-step-early", "loss-one-step-old"],
)
def test_the_skew_check_catches_an_off_by_one(bundle_dir, skew):
    bundle = load_bundle(bundle_dir)
    instance = _instance("quadratic_2d")
    engine = _engine_run(bundle, instance, True)
    assert _mismatch(_pilot_run(bundle, instance, True), engine) < 1e-8
    assert _mismatch(_pilot_run(bundle, instance, True, **skew), engine) > 1e-6


# --------------------------------------------------------------- real-loop rules
def _problem(seed=0, n=64):
    """A small regression task and MLP built without touching the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator, dtype=F64)
    y = x @ torch.randn(4, 1, generator=generator, dtype=F64)
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    model = model.to_empty(device="cpu").double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model, x, y


def _val_fn(model, x, y):
    return lambda: float(nn.functional.mse_loss(model(x), y))


def _train(pilot, model, optimizer, x, y, steps, start=0, stop=False):
    """The user loop; minibatch `i` depends only on the step number."""
    for step in range(start, start + steps):
        rows = (torch.arange(16) + 16 * step) % len(x)
        loss = nn.functional.mse_loss(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        pilot.step(loss)
        optimizer.step()
        if stop and pilot.should_stop():
            return step
    return None


def _train_scaled(pilot, model, optimizer, scaler, x, y, steps, start=0):
    """The user loop with a GradScaler, in the order the module docstring gives."""
    for step in range(start, start + steps):
        rows = (torch.arange(16) + 16 * step) % len(x)
        loss = nn.functional.mse_loss(model(x[rows]), y[rows])
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        pilot.step(loss)
        scaler.step(optimizer)
        scaler.update()


def test_per_group_lr_ratios_survive_and_beta1_is_written(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(
        [
            {"params": model[0].parameters(), "lr": 1e-3},
            {"params": model[2].parameters(), "lr": 1e-4},
        ],
        betas=(0.9, 0.98),
    )
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60)
    _train(pilot, model, optimizer, x, y, 25)
    first, second = optimizer.param_groups
    values = pilot.hyperparameters
    assert first["lr"] == values["lr"] != 1e-3
    assert second["lr"] / first["lr"] == pytest.approx(0.1, rel=1e-12)
    for group in (first, second):
        assert group["betas"] == (values["beta1"], 0.98)
    assert values["beta1"] != 0.9


def test_an_optimizer_without_betas_gets_lr_and_clip_control(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(UserWarning, match="only its lr and the gradient clipping"):
        pilot = Pilot.load(bundle_dir).attach(optimizer, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(pilot, model, optimizer, x, y, 25)
    values = pilot.hyperparameters
    assert values["beta1"] is None
    assert optimizer.param_groups[0]["lr"] == values["lr"] != 0.01
    assert values["clip"] != 0.05
    assert "betas" not in optimizer.param_groups[0]


def test_a_scheduler_or_a_foreign_lr_change_is_warned_about(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    with pytest.warns(UserWarning, match="will fight"):
        Pilot.load(bundle_dir).attach(optimizer, 60)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60)
    _train(pilot, model, optimizer, x, y, 5)
    optimizer.param_groups[0]["lr"] = 1e-2  # e.g. ReduceLROnPlateau, or by hand
    with pytest.warns(UserWarning, match="changed outside the pilot"):
        _train(pilot, model, optimizer, x, y, 10, start=5)


def test_past_total_steps_the_last_values_stay_and_it_warns_once(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot.load(bundle_dir).attach(optimizer, 15)
    _train(pilot, model, optimizer, x, y, 15)
    values = pilot.hyperparameters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(pilot, model, optimizer, x, y, 25, start=15)
    assert [str(w.message) for w in caught] == [
        "step 16 is past total_steps=15: the pilot keeps its last values"
    ]
    assert pilot.hyperparameters == values
    assert pilot.steps_done == 40


def test_divergence_stops_the_run_and_the_pilot(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot.load(bundle_dir).attach(optimizer, 100, clip=1e3)
    _train(pilot, model, optimizer, x, y, 1)
    optimizer.param_groups[0]["lr"] = 50.0  # a huge lr, behind the pilot's back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stopped = _train(pilot, model, optimizer, x, y, 9, start=1, stop=True)
    assert stopped is not None
    assert pilot.diverged and pilot.should_stop()
    # from then on the pilot changes nothing: no clipping, no new lr
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    lr = optimizer.param_groups[0]["lr"]
    pilot.step(loss)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert optimizer.param_groups[0]["lr"] == lr


def test_a_non_finite_validation_loss_is_a_divergence(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    values = iter([1.0, float("nan")])
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60, val_fn=lambda: next(values))
    assert _train(pilot, model, optimizer, x, y, 30, stop=True) == 10
    assert pilot.diverged


def test_should_stop_on_patience_only_with_a_val_fn(bundle_dir):
    model, x, y = _problem()

    def run(val_fn, patience):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        pilot = Pilot.load(bundle_dir).attach(optimizer, 100, val_fn=val_fn)
        for step in range(100):
            _train(pilot, model, optimizer, x, y, 1, start=step)
            if pilot.should_stop(patience):
                return step
        return None

    # flat validation: decisions at steps 10, 20, 30 measure no improvement
    assert run(lambda: 1.0, patience=3) == 30
    assert run(lambda: 1.0, patience=5) == 50
    # an improvement (by more than 1e-4 relative) resets the count
    falling = iter(np.geomspace(1.0, 1e-3, 20).tolist())
    assert run(lambda: next(falling), patience=1) is None
    assert run(None, patience=1) is None


def test_amp_overflow_steps_are_counted_but_neither_recorded_nor_clipped(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60, grad_scaler=scaler)
    _train_scaled(pilot, model, optimizer, scaler, x, y, 3)
    before = pilot.state_dict()
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.unscale_(optimizer)
    pilot.step(loss)
    assert not pilot.diverged and pilot.steps_done == 4
    assert torch.equal(
        before["tracker"]["count"], pilot.state_dict()["tracker"]["count"]
    )
    assert model[0].weight.grad[0, 0] == float("inf")


def _resumable_run(bundle_dir, steps, split=None):
    """`steps` steps, optionally interrupted after `split` and resumed from files."""
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot.load(bundle_dir).attach(optimizer, steps, _val_fn(model, x, y))
    if split is None:
        _train(pilot, model, optimizer, x, y, steps)
        return model, pilot
    _train(pilot, model, optimizer, x, y, split)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pilot": pilot.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model = _problem(seed=1)[0]  # as in a fresh process: other weights until restored
    model.load_state_dict(saved["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(saved["optimizer"])
    pilot = Pilot.load(bundle_dir).attach(optimizer, steps, _val_fn(model, x, y))
    pilot.load_state_dict(saved["pilot"])
    _train(pilot, model, optimizer, x, y, steps - split, start=split)
    return model, pilot


@pytest.mark.parametrize("split", [30, 25])
def test_state_dict_round_trip_continues_identically(bundle_dir, split):
    straight_model, straight = _resumable_run(bundle_dir, 60)
    resumed_model, resumed = _resumable_run(bundle_dir, 60, split)
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert resumed.hyperparameters == straight.hyperparameters
    a, b = straight.state_dict(), resumed.state_dict()
    for name, value in a["tracker"].items():
        torch.testing.assert_close(
            b["tracker"][name], value, rtol=0, atol=0, equal_nan=True
        )
    assert (a["best_val_loss"], a["stale_decisions"]) == (
        b["best_val_loss"],
        b["stale_decisions"],
    )


def test_the_pilot_leaves_process_wide_torch_settings_alone(bundle_dir):
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    dtype = torch.get_default_dtype()
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot.load(bundle_dir).attach(optimizer, 30, _val_fn(model, x, y))
    _train(pilot, model, optimizer, x, y, 30)
    pilot.load_state_dict(pilot.state_dict())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == dtype


def test_step_needs_attach_and_a_scalar_loss(bundle_dir):
    pilot = Pilot.load(bundle_dir)
    with pytest.raises(RuntimeError, match="not attached"):
        pilot.step(1.0)
    model = _problem()[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot.attach(optimizer, 10)
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        pilot.step(1.0)
    with pytest.raises(ValueError, match="scalar"):
        pilot.step(torch.ones(3))


# ------------------------------------------------- non-finite values in a user loop
OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adam-foreach": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=True),
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
    "adamw-foreach": lambda params: torch.optim.AdamW(params, lr=1e-3, foreach=True),
    "adamw-fused": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9),
    "sgd-momentum-foreach": lambda params: torch.optim.SGD(
        params, lr=1e-2, momentum=0.9, foreach=True
    ),
    "sgd-momentum-fused": lambda params: torch.optim.SGD(
        params, lr=1e-2, momentum=0.9, fused=True
    ),
}


def _snapshot(model, optimizer):
    return copy.deepcopy((model.state_dict(), optimizer.state_dict()))


def _assert_identical(a, b):
    (params_a, optim_a), (params_b, optim_b) = a, b
    for name, value in params_a.items():
        assert torch.equal(value, params_b[name]), name
    assert optim_a["param_groups"] == optim_b["param_groups"]
    assert optim_a["state"].keys() == optim_b["state"].keys()
    for index, state in optim_a["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(optim_b["state"][index][name])
            ), (index, name)


def _faulty_step(pilot, model, optimizer, x, y, fault, scaler=None):
    """One step whose loss is NaN, whose gradient holds an inf, or whose loss is huge."""
    loss = nn.functional.mse_loss(model(x), y)
    if fault == "nan-loss":
        loss = loss * float("nan")
    if fault == "huge-loss":
        loss = loss * 1e6
    optimizer.zero_grad()
    (loss if scaler is None else scaler.scale(loss)).backward()
    if fault == "inf-grad":
        model[0].weight.grad[0, 0] = float("inf")
    if scaler is None:
        pilot.step(loss)
        optimizer.step()
    else:
        scaler.unscale_(optimizer)
        pilot.step(loss)
        scaler.step(optimizer)
        scaler.update()


@pytest.mark.parametrize("fault", ["nan-loss", "inf-grad", "huge-loss"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_divergent_step_leaves_parameters_and_optimizer_state_untouched(
    bundle_dir, name, fault
):
    model, x, y = _problem()
    optimizer = OPTIMIZERS[name](model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SGD has no betas
        pilot = Pilot.load(bundle_dir).attach(optimizer, 60)
    _train(pilot, model, optimizer, x, y, 3)
    before = _snapshot(model, optimizer)
    _faulty_step(pilot, model, optimizer, x, y, fault)
    _assert_identical(before, _snapshot(model, optimizer))
    assert pilot.diverged and pilot.should_stop()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("fault", ["nan-loss", "inf-grad"])
def test_after_a_divergence_non_finite_steps_still_change_nothing(bundle_dir, fault):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60)
    _train(pilot, model, optimizer, x, y, 3)
    _faulty_step(pilot, model, optimizer, x, y, "huge-loss")
    before = _snapshot(model, optimizer)
    _faulty_step(pilot, model, optimizer, x, y, fault)
    _assert_identical(before, _snapshot(model, optimizer))
    # a finite step goes through untouched: the pilot no longer steers or clips
    _train(pilot, model, optimizer, x, y, 1, start=3)
    assert not torch.equal(before[0]["0.weight"], model[0].weight)


@pytest.mark.parametrize(
    ("fault", "diverged"),
    [("inf-grad", False), ("nan-loss", True), ("huge-loss", True)],
)
def test_with_a_grad_scaler_only_overflows_are_left_to_it(bundle_dir, fault, diverged):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60, grad_scaler=scaler)
    _train_scaled(pilot, model, optimizer, scaler, x, y, 3)
    before = _snapshot(model, optimizer)
    _faulty_step(pilot, model, optimizer, x, y, fault, scaler=scaler)
    _assert_identical(before, _snapshot(model, optimizer))
    assert pilot.diverged is diverged and pilot.should_stop() is diverged
    if not diverged:  # the scaler skipped the step; the pilot keeps steering
        _train_scaled(pilot, model, optimizer, scaler, x, y, 20, start=4)
        assert not pilot.should_stop()
        assert optimizer.param_groups[0]["lr"] != 1e-3


def test_a_grad_scaler_must_unscale_before_the_pilot_reads(bundle_dir):
    model, x, y = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    pilot = Pilot.load(bundle_dir).attach(optimizer, 60, grad_scaler=scaler)
    loss = nn.functional.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    with pytest.raises(RuntimeError, match=r"scaler\.unscale_"):
        pilot.step(loss)
    # a disabled scaler scales nothing: no check, and an inf gradient diverges
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    pilot.attach(optimizer, 60, grad_scaler=disabled)
    _faulty_step(pilot, model, optimizer, x, y, "inf-grad", scaler=disabled)
    assert pilot.diverged


# ------------------------------------------------------ hooks for framework callbacks
def test_reapply_keeps_the_values_in_force_against_a_scheduler(bundle_dir):
    def run(with_scheduler):
        model, x, y = _problem()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        if with_scheduler:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
        pilot = Pilot.load(bundle_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warn_scheduler=False: no warning
            pilot.attach(optimizer, 30, warn_scheduler=False)
            decided, lrs = [], []
            for step in range(30):
                rows = (torch.arange(16) + 16 * step) % len(x)
                loss = nn.functional.mse_loss(model(x[rows]), y[rows])
                optimizer.zero_grad()
                loss.backward()
                pilot.reapply()
                decided.append(pilot.next_step_decides)
                pilot.step(loss)
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                if with_scheduler:
                    scheduler.step()
        return decided, lrs, model

    decided, lrs, model = run(with_scheduler=True)
    plain_decided, plain_lrs, plain_model = run(with_scheduler=False)
    assert decided == plain_decided == [step % 10 == 0 for step in range(30)]
    assert lrs == plain_lrs and len(set(lrs)) == 3
    for a, b in zip(model.parameters(), plain_model.parameters()):
        assert torch.equal(a, b)
