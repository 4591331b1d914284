"""Known answers for the Pilot: per-group lr, beta1, clipping, features and divergence.

A scripted policy plays fixed actions, so every learning rate, beta1 and clip
threshold is known in advance (lr x10^(0.5 a), 1 - beta1 x10^(-0.25 a), clip
x10^(0.5 a)); the reference is `torch.optim.Adam` + `clip_grad_norm_` driven by
those values by hand.
"""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hyperpilot.agents.pilot import Pilot
from hyperpilot.envs.actions import DEFAULT_BOUNDS
from hyperpilot.envs.features import OBS_NAMES

F64 = torch.float64
LN = math.log
COL = {name: index for index, name in enumerate(OBS_NAMES)}


class Scripted:
    """A stand-in for a policy bundle that plays `actions` in turn and records what it saw."""

    def __init__(
        self, actions, k=3, mode="compound", controlled=("lr", "beta1", "clip")
    ):
        self.actions = list(actions)
        self.decision_interval = k
        self.action_mode = mode
        self.controlled = controlled
        self.default_clip = 1.0
        self.bounds = DEFAULT_BOUNDS
        self.seen = []

    def act(self, obs):
        self.seen.append(obs.clone())
        return torch.tensor([self.actions[len(self.seen) - 1]], dtype=torch.float32)


def problem(seed=0, steps=9):
    """A two-layer net and one fixed minibatch per step, without the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    model = model.to_empty(device="cpu").double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=F64))
    batches = [
        (
            torch.randn(8, 3, generator=generator, dtype=F64),
            torch.randn(8, 1, generator=generator, dtype=F64),
        )
        for _ in range(steps)
    ]
    return model, batches


def two_groups(model, opt_cls=torch.optim.Adam, **kwargs):
    return opt_cls(
        [
            {"params": model[0].parameters(), "lr": 1e-3},
            {"params": model[2].parameters(), "lr": 4e-3},  # 4x the first group
        ],
        **kwargs,
    )


def loss_of(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


# Decisions at steps 0, 3 and 6 (K = 3) from lr 1e-3, beta1 0.9, clip 10 (the
# gradient norms here are 2 to 5: clipped below about 3, not at 10):
ACTIONS = [(1.0, 0.0, -1.0), (-0.5, 1.0, 0.0), (0.0, -1.0, 1.0)]
HPARAMS = [  # (lr of group 0, beta1, clip) in force after each decision
    (10**-2.5, 0.9, 10**0.5),
    (10**-2.75, 1 - 10**-1.25, 10**0.5),
    (10**-2.75, 0.9, 10.0),
]


def test_per_group_lr_beta1_and_clipping_match_torch_by_hand():
    model, batches = problem()
    reference = copy.deepcopy(model)
    optimizer = two_groups(model, betas=(0.9, 0.99))
    ref_optimizer = two_groups(reference, betas=(0.9, 0.99))
    scripted = Scripted(ACTIONS)
    pilot = Pilot(scripted).attach(optimizer, 9, clip=10.0)

    losses, norms, cosines, clipped = [], [], [], []
    previous = None
    for step, batch in enumerate(batches):
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        pilot.step(loss)
        optimizer.step()

        lr, beta1, clip = HPARAMS[step // 3]
        for group, ratio in zip(ref_optimizer.param_groups, (1.0, 4.0)):
            group["lr"], group["betas"] = lr * ratio, (beta1, 0.99)
        ref_loss = loss_of(reference, batch)
        ref_optimizer.zero_grad()
        ref_loss.backward()
        grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
        norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), clip))
        ref_optimizer.step()
        losses.append(float(ref_loss.detach()))
        norms.append(norm)
        clipped.append(norm > clip)
        cosines.append(0.0 if previous is None else float(grad @ previous) / (norm * float(previous.norm())))  # fmt: skip
        previous = grad

        for group, ratio in zip(optimizer.param_groups, (1.0, 4.0)):
            assert group["lr"] == pytest.approx(lr * ratio, rel=1e-12)
            assert group["betas"][0] == pytest.approx(beta1, rel=1e-12)
            assert group["betas"][1] == 0.99
        assert pilot.hyperparameters == pytest.approx({"lr": lr, "beta1": beta1, "clip": clip}, rel=1e-12)  # fmt: skip

    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    assert any(clipped) and not all(clipped)  # the check has teeth

    # what the policy saw at steps 0, 3 and 6: the window before, the values in force
    assert len(scripted.seen) == 3
    start = scripted.seen[0][0].to(F64)
    assert float(start[COL["log_lr"]]) == pytest.approx(0.0, abs=1e-6)  # 1e-3
    assert float(start[COL["progress"]]) == 0.0
    assert float(start[COL["val_available"]]) == 0.0
    for decision in (1, 2):
        obs = scripted.seen[decision][0].to(F64)
        window = range(3 * decision - 3, 3 * decision)
        lr, beta1, clip = HPARAMS[decision - 1]
        mean_loss = sum(losses[i] for i in window) / 3
        mean_log_norm = sum(LN(norms[i]) for i in window) / 3
        expected = {
            "log_loss_ratio": LN(mean_loss / losses[0]),
            "log_grad_norm_ratio": mean_log_norm - LN(norms[0]),
            "grad_agreement": sum(cosines[i] for i in window) / 3,
            "clip_fraction": sum(clipped[i] for i in window) / 3,
            "log_lr": (math.log10(lr) + 3) / 3,
            "log_clip": (math.log10(clip) - 0.5) / 2.5,
            "progress": 3 * decision / 9,
            "val_available": 0.0,
            "log_val_ratio": 0.0,
        }
        for name, want in expected.items():
            assert float(obs[COL[name]]) == pytest.approx(want, abs=2e-6), (
                name,
                decision,
            )


def test_validation_feeds_the_features():
    model, batches = problem(steps=6)
    optimizer = two_groups(model)
    values = iter([4.0, 2.0, 1.0])
    scripted = Scripted([(0.0, 0.0, 0.0)] * 2)
    pilot = Pilot(scripted).attach(optimizer, 6, val_fn=lambda: next(values))
    losses = []
    for batch in batches[:4]:
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        pilot.step(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
    first, second = (obs[0].to(F64) for obs in scripted.seen)
    assert float(first[COL["val_available"]]) == 1.0
    assert float(first[COL["log_val_ratio"]]) == 0.0  # ln(4 / 4)
    assert float(second[COL["log_val_ratio"]]) == pytest.approx(LN(2.0 / 4.0), abs=1e-6)
    mean_loss = sum(losses[:3]) / 3
    assert float(second[COL["train_val_gap"]]) == pytest.approx(LN(2.0 / mean_loss), abs=1e-6)  # fmt: skip


def test_residual_mode_follows_warmup_cosine_per_group():
    model, batches = problem(steps=6)
    optimizer = two_groups(model, betas=(0.8, 0.999))
    pilot = Pilot(Scripted([(1.0, 0.0, 0.0), (0.0, 1.0, -1.0)], mode="residual"))
    pilot.attach(optimizer, 9, clip=2.0)
    lrs = []
    for batch in batches:
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        pilot.step(loss)
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
    # total 9: warmup = ceil(0.45) = 1 step. At step 0 the base is half the start
    # lr; at step 3 it is cos-decayed by (3 - 1) / (9 - 1) of the way
    at_0 = 1e-3 * 0.5 * 10**0.5
    at_3 = 1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 8))
    for step, lr in enumerate(lrs):
        want = at_0 if step < 3 else at_3
        assert lr == pytest.approx([want, 4 * want], rel=1e-12)
    # beta1 and clip move from their start values (0.8 and 2), not from the last ones
    assert pilot.hyperparameters == pytest.approx(
        {"lr": at_3, "beta1": 1 - 0.2 * 10**-0.25, "clip": 2.0 * 10**-0.5}, rel=1e-12
    )
    assert optimizer.param_groups[1]["betas"][0] == pytest.approx(1 - 0.2 * 10**-0.25)


def test_an_optimizer_without_betas_gets_lr_per_group_and_clip():
    model, batches = problem(steps=3)
    optimizer = two_groups(model, opt_cls=torch.optim.SGD)
    pilot = Pilot(Scripted([(1.0, 1.0, 1.0)]))
    with pytest.warns(UserWarning, match="has no `betas`"):
        pilot.attach(optimizer, 9, clip=1.0)
    loss = loss_of(model, batches[0])
    loss.backward()
    pilot.step(loss)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([10**-2.5, 4 * 10**-2.5], rel=1e-12)
    assert all("betas" not in g for g in optimizer.param_groups)
    values = pilot.hyperparameters
    assert values["beta1"] is None
    assert (values["lr"], values["clip"]) == pytest.approx(
        (10**-2.5, 10**0.5), rel=1e-12
    )


def test_only_the_controlled_hyperparameters_move():
    model, batches = problem(steps=1)
    optimizer = two_groups(model, betas=(0.9, 0.999))
    pilot = Pilot(Scripted([(-1.0,)], controlled=("lr",))).attach(
        optimizer, 9, clip=3.0
    )
    loss = loss_of(model, batches[0])
    loss.backward()
    pilot.step(loss)
    assert pilot.hyperparameters == pytest.approx(
        {"lr": 10**-3.5, "beta1": 0.9, "clip": 3.0}, rel=1e-12
    )


def test_gradients_under_the_threshold_are_left_alone():
    model, batches = problem(steps=1)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted([(0.0, 0.0, 0.0)])).attach(optimizer, 9, clip=1e3)
    loss = loss_of(model, batches[0])
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    pilot.step(loss)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


# ------------------------------------------------------------------ divergence
def fed(losses, factor=4.0):
    """A pilot fed the given loss values (the gradients stay those of one batch)."""
    model, batches = problem(steps=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot(Scripted([(0.0, 0.0, 0.0)] * 10, k=100))
    pilot.attach(optimizer, 100, clip=1e3, divergence_factor=factor)
    loss_of(model, batches[0]).backward()
    states = []
    for value in losses:
        pilot.step(torch.tensor(value, dtype=F64))
        states.append(pilot.diverged)
    return states, pilot


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ([2.5, 10.0, 9.0], [False, False, False]),  # exactly 4 x the first: not yet
        ([2.5, 10.000001], [False, True]),
        (
            [2.5, 1.0, 9.9, 10.5],
            [False, False, False, True],
        ),  # the first, not the least
        ([2.5, math.nan], [False, True]),
        ([2.5, math.inf], [False, True]),
        ([math.nan], [True]),
        ([-math.inf], [True]),
    ],
    ids=[
        "at-factor",
        "above",
        "first-not-least",
        "nan",
        "inf",
        "nan-first",
        "minus-inf",
    ],
)
def test_the_pilots_divergence_rule(losses, expected):
    states, pilot = fed(losses)
    assert states == expected
    assert pilot.should_stop() == expected[-1]


def test_a_larger_factor_allows_more():
    states, _ = fed([1.0, 99.0, 100.0, 100.5], factor=100.0)
    assert states == [False, False, False, True]


# ------------------------------------------------------------- the rest of a run
def run_steps(pilot, model, optimizer, batches):
    for batch in batches:
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        pilot.step(loss)
        optimizer.step()


def test_patience_counts_decisions_without_a_relative_improvement():
    # attach measures 1.0; then one value per decision (steps 3, 6, ...)
    values = iter([1.0, 0.5, 0.49996, 0.6, 0.4, 0.4, 0.4])
    model, batches = problem(steps=19)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted([(0.0, 0.0, 0.0)] * 7)).attach(
        optimizer, 30, val_fn=lambda: next(values)
    )
    stops = []
    for step in range(19):
        run_steps(pilot, model, optimizer, batches[step : step + 1])
        if step % 3 == 0 and step:  # after each decision's step
            stops.append((pilot.should_stop(1), pilot.should_stop(2)))
    # 0.5 improves; 0.49996 is within 1e-4 x 0.5 (stale 1); 0.6 (stale 2);
    # 0.4 improves; 0.4, 0.4 (stale 1, 2)
    assert stops == [
        (False, False),
        (True, False),
        (True, True),
        (False, False),
        (True, False),
        (True, True),
    ]
    state = pilot.state_dict()
    assert (state["best_val_loss"], state["stale_decisions"]) == (0.4, 2)
    assert state["val_loss"] == 0.4
    with pytest.raises(ValueError, match=r"^patience must be >= 1, got 0$"):
        pilot.should_stop(0)


def test_should_stop_without_a_val_fn_only_on_divergence():
    model, batches = problem(steps=12)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted([(0.0, 0.0, 0.0)] * 4)).attach(optimizer, 12)
    run_steps(pilot, model, optimizer, batches)
    assert not pilot.should_stop(1)
    assert pilot.steps_done == 12 and not pilot.diverged


def test_state_dict_holds_the_run_and_restores_it():
    model, batches = problem(steps=5)
    optimizer = two_groups(model, betas=(0.9, 0.99))
    values = iter([2.0, 1.5])
    pilot = Pilot(Scripted(ACTIONS)).attach(
        optimizer, 9, val_fn=lambda: next(values), clip=10.0, divergence_factor=50.0
    )
    run_steps(pilot, model, optimizer, batches)
    state = pilot.state_dict()
    lr, beta1, clip = HPARAMS[1]
    assert state["version"] == 1 and state["decision_interval"] == 3
    assert (state["total_steps"], state["divergence_factor"], state["steps_done"]) == (9, 50.0, 5)  # fmt: skip
    assert state["hparams"] == pytest.approx({"lr": lr, "beta1": beta1, "clip": clip})
    assert state["initial"] == pytest.approx({"lr": 1e-3, "beta1": 0.9, "clip": 10.0})
    assert state["start_lrs"] == [1e-3, 4e-3]
    assert (state["val_loss"], state["best_val_loss"], state["stale_decisions"]) == (1.5, 1.5, 0)  # fmt: skip
    assert state["diverged"] is False
    assert sorted(state["prev_grads"]) == [0, 1, 2, 3]
    grads = [p.grad for p in model.parameters()]
    norm = float(torch.cat([g.flatten() for g in grads]).norm())
    assert state["prev_grad_norm"] == pytest.approx(norm, rel=1e-12)  # after clipping
    for saved, grad in zip(state["prev_grads"].values(), grads):
        assert torch.equal(saved, grad)
    assert float(state["tracker"]["count"][0]) == 2.0  # steps 3 and 4

    # a fresh pilot on a fresh optimizer takes it all over, lr and beta1 included
    fresh = two_groups(copy.deepcopy(model), betas=(0.5, 0.99))
    other = Pilot(Scripted(ACTIONS)).attach(fresh, 100, clip=1.0)
    other.load_state_dict(state)
    assert other.hyperparameters == pytest.approx(
        {"lr": lr, "beta1": beta1, "clip": clip}
    )
    assert other.steps_done == 5
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx([lr, 4 * lr])
    assert [g["betas"][0] for g in fresh.param_groups] == pytest.approx([beta1] * 2)
    assert [g["betas"][1] for g in fresh.param_groups] == [0.99, 0.99]
    again = other.state_dict()
    for key in state:
        if key not in ("tracker", "prev_grads"):
            assert again[key] == state[key], key
    for name, value in state["tracker"].items():
        torch.testing.assert_close(again["tracker"][name], value, equal_nan=True)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 2}, r"^pilot state version 2 is not 1; it was saved by another"),
        (
            {"decision_interval": 5},
            r"^the state was saved by a pilot with K=5, this one has K=3$",
        ),
        ({"tracker": {}}, r"^the state's feature tracker holds \[\], expected \["),
    ],
    ids=["version", "K", "tracker"],
)
def test_a_foreign_state_is_refused(change, match):
    model, batches = problem(steps=1)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches)
    with pytest.raises(ValueError, match=match):
        pilot.load_state_dict(pilot.state_dict() | change)


def test_a_group_added_after_attach_keeps_its_ratio():
    model, batches = problem(steps=4)
    optimizer = torch.optim.Adam(model[0].parameters(), lr=1e-3)
    pilot = Pilot(Scripted([(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)])).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches[:3])  # lr is now 10^-2.5
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 10**-1.5})
    run_steps(pilot, model, optimizer, batches[3:])  # decision: lr 10^-3
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([1e-3, 1e-2], rel=1e-12)


def test_the_pilots_properties_and_repr():
    pilot = Pilot(Scripted(ACTIONS, k=7, mode="residual", controlled=("lr", "clip")))
    assert (pilot.decision_interval, pilot.action_mode) == (7, "residual")
    assert pilot.controlled == ("lr", "clip") and pilot.default_clip == 1.0
    assert repr(pilot) == "Pilot(K=7, controlled=['lr', 'clip'], mode='residual')"
    assert pilot.diverged is False
    for use in (lambda: pilot.hyperparameters, lambda: pilot.steps_done, pilot.should_stop, pilot.state_dict):  # fmt: skip
        with pytest.raises(RuntimeError, match=r"^the pilot is not attached: call pilot\.attach\(optimizer, total_steps\)$"):  # fmt: skip
            use()


def test_the_default_clip_is_the_bundles():
    model, _ = problem(steps=1)
    scripted = Scripted(ACTIONS)
    scripted.default_clip = 0.25
    pilot = Pilot(scripted).attach(two_groups(model), 9)
    assert pilot.hyperparameters["clip"] == 0.25


def test_the_shipped_pilot_acts_in_the_box():
    pilot = Pilot.load("default")
    actions = pilot.act(np.zeros((2, len(OBS_NAMES)), dtype=np.float32))
    assert actions.shape == (2, len(pilot.controlled)) and actions.dtype == np.float32
    assert (np.abs(actions) <= 1).all()
    assert pilot.act(np.zeros(len(OBS_NAMES), dtype=np.float32)).shape == (len(pilot.controlled),)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 0}, r"^total_steps must be >= 1, got 0$"),
        ({"total_steps": 2.0}, r"^total_steps must be an integer, got 2\.0$"),
        ({"total_steps": True}, r"^total_steps must be an integer, got True$"),
        ({"divergence_factor": 1.0}, r"^divergence_factor must be > 1, got 1\.0$"),
        ({"clip": 0.0}, r"^clip must be a positive finite number, got 0\.0$"),
        ({"clip": math.inf}, r"^clip must be a positive finite number, got inf$"),
        (
            {"val_fn": lambda: math.nan},
            r"^val_fn\(\) returned nan at attach; it must return a finite "
            r"validation loss$",
        ),
    ],
    ids=[
        "zero-steps",
        "float-steps",
        "bool-steps",
        "factor",
        "clip-0",
        "clip-inf",
        "val",
    ],
)
def test_bad_attach_arguments_are_refused(kwargs, match):
    model, _ = problem(steps=1)
    with pytest.raises(ValueError, match=match):
        Pilot(Scripted(ACTIONS)).attach(
            two_groups(model), **({"total_steps": 9} | kwargs)
        )


@pytest.mark.parametrize("lr", [0.0, math.inf])
def test_a_non_positive_or_infinite_group_lr_is_refused(lr):
    model, _ = problem(steps=1)
    optimizer = two_groups(model)
    optimizer.param_groups[1]["lr"] = lr
    with pytest.raises(ValueError, match=rf"^the optimizer's learning rates \[0\.001, {lr}\] must be positive and finite$"):  # fmt: skip
        Pilot(Scripted(ACTIONS)).attach(optimizer, 9)


def test_past_total_steps_the_values_stay_with_one_warning():
    model, batches = problem(steps=5)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 3)
    run_steps(pilot, model, optimizer, batches[:3])
    with pytest.warns(UserWarning) as caught:
        run_steps(pilot, model, optimizer, batches[3:])
    assert [str(w.message) for w in caught] == [
        "step 4 is past total_steps=3: the pilot keeps its last values"
    ]
    assert pilot.hyperparameters["lr"] == pytest.approx(HPARAMS[0][0])
    assert pilot.steps_done == 5


def test_a_scheduler_or_a_foreign_lr_warns():
    model, batches = problem(steps=4)
    optimizer = two_groups(model)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    with pytest.warns(
        UserWarning, match="an lr scheduler is attached to this optimizer"
    ):
        Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches[:3])
    optimizer.param_groups[0]["lr"] = 0.5
    with pytest.warns(
        UserWarning, match=r"changed outside the pilot \(0\.00316 -> 0\.5;"
    ):
        run_steps(pilot, model, optimizer, batches[3:])


def test_a_non_finite_gradient_without_a_scaler_is_a_divergence_that_drops_the_step():
    model, batches = problem(steps=2)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9, clip=0.01)
    run_steps(pilot, model, optimizer, batches[:1])
    loss = loss_of(model, batches[1])
    optimizer.zero_grad()
    loss.backward()
    model[2].bias.grad[0] = math.inf
    pilot.step(loss)
    # no GradScaler to skip it: the run diverged, and every grad is dropped so
    # that the optimizer's step moves neither parameters nor moments
    assert pilot.steps_done == 2 and pilot.diverged and pilot.should_stop()
    assert all(p.grad is None for p in model.parameters())


def test_step_needs_gradients_and_a_scalar_loss():
    model, batches = problem(steps=1)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    with pytest.raises(RuntimeError, match=r"^no parameter has a gradient: call pilot\.step\(loss\) after loss\.backward\(\) and before optimizer\.step\(\)$"):  # fmt: skip
        pilot.step(1.0)
    loss_of(model, batches[0]).backward()
    with pytest.raises(ValueError, match=r"^pilot\.step expects the scalar training loss, got shape \(2,\)$"):  # fmt: skip
        pilot.step(torch.ones(2))
    pilot.step(2.5)  # a plain float is a scalar loss
    assert float(pilot.state_dict()["tracker"]["first_loss"][0]) == 2.5


def test_the_tracker_gets_float64_loss_norm_and_agreement():
    model, batches = problem(steps=2)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9, clip=1e3, val_fn=lambda: 0.1)
    grads = []
    for batch in batches:
        optimizer.zero_grad()
        (0.01 * loss_of(model, batch)).backward()  # gradient norms below 1
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        pilot.step(torch.tensor(0.1, dtype=F64))  # not a float32 number
        optimizer.step()
    tracker = pilot.state_dict()["tracker"]
    assert float(tracker["first_loss"][0]) == 0.1
    assert float(tracker["first_val_loss"][0]) == 0.1
    assert float(grads[0].norm() * grads[1].norm()) < 1.0  # no floor of 1 applies
    assert float(tracker["first_grad_norm"][0]) == pytest.approx(
        float(grads[0].norm()), rel=1e-14
    )
    cosine = float(grads[1] @ grads[0]) / float(grads[1].norm() * grads[0].norm())
    assert float(tracker["agreement_sum"][0]) == pytest.approx(cosine, rel=1e-13)


def test_patience_thresholds_and_the_default():
    # best 1.0: 0.9999 is not better than 1 - 1e-4 x 1; best 0.5: 0.4999 is better
    # than 0.5 - 1e-4 x 0.5 = 0.49995
    values = iter([1.0, 1.0 - 1e-4, 0.5, 0.4999, 0.4999, 0.4999, 0.4999])
    model, batches = problem(steps=19)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted([(0.0, 0.0, 0.0)] * 7)).attach(
        optimizer, 30, val_fn=lambda: next(values)
    )
    stale, default = [], []
    for step in range(19):
        run_steps(pilot, model, optimizer, batches[step : step + 1])
        if step % 3 == 0 and step:
            stale.append(pilot.state_dict()["stale_decisions"])
            default.append(pilot.should_stop())
    assert stale == [1, 0, 0, 1, 2, 3]
    assert default == [False, False, False, False, False, True]  # patience 3


def test_validation_is_measured_from_the_second_decision_with_k_1():
    values = iter([4.0, 2.0, 1.0])
    model, batches = problem(steps=2)
    optimizer = two_groups(model)
    scripted = Scripted([(0.0, 0.0, 0.0)] * 2, k=1)
    pilot = Pilot(scripted).attach(optimizer, 9, val_fn=lambda: next(values))
    run_steps(pilot, model, optimizer, batches)
    assert [float(o[0, COL["log_val_ratio"]]) for o in scripted.seen] == pytest.approx(
        [0.0, LN(2.0 / 4.0)], abs=1e-6
    )


def test_a_non_finite_validation_loss_at_a_decision_diverges():
    values = iter([1.0, math.inf])
    model, batches = problem(steps=5)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9, val_fn=lambda: next(values))
    run_steps(pilot, model, optimizer, batches[:4])
    assert pilot.diverged and pilot.should_stop() and pilot.steps_done == 3
    assert pilot.hyperparameters["lr"] == pytest.approx(HPARAMS[0][0])


def test_a_diverged_state_restores_diverged():
    _, pilot = fed([1.0, math.nan])
    state = pilot.state_dict()
    assert state["diverged"] is True
    model, _ = problem(steps=1)
    other = Pilot(Scripted(ACTIONS, k=100)).attach(
        torch.optim.Adam(model.parameters()), 100
    )
    other.load_state_dict(state)
    assert other.diverged and other.should_stop()


def test_tensor_betas_are_written_in_place():
    model, batches = problem(steps=1)
    betas = (torch.tensor(0.9, dtype=F64), torch.tensor(0.999, dtype=F64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=betas)
    pilot = Pilot(Scripted([(0.0, 1.0, 0.0)])).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches)
    written = optimizer.param_groups[0]["betas"]
    assert written[0] is betas[0]  # the same tensor, filled
    assert float(written[0]) == pytest.approx(1 - 10**-1.25, rel=1e-12)
    assert float(written[1]) == 0.999


def test_an_optimizer_without_groups_is_refused():
    model, _ = problem(steps=1)
    optimizer = two_groups(model)
    optimizer.param_groups.clear()
    with pytest.raises(ValueError, match=r"^the optimizer has no parameter groups$"):
        Pilot(Scripted(ACTIONS)).attach(optimizer, 9)


def test_the_default_divergence_factor_is_100_and_any_above_1_is_allowed():
    model, batches = problem(steps=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pilot = Pilot(Scripted([(0.0, 0.0, 0.0)], k=100)).attach(optimizer, 100)
    loss_of(model, batches[0]).backward()
    for value in (1.0, 100.0):
        pilot.step(torch.tensor(value, dtype=F64))
    assert not pilot.diverged
    pilot.step(torch.tensor(100.5, dtype=F64))
    assert pilot.diverged
    states, _ = fed([1.0, 1.5, 1.51], factor=1.5)
    assert states == [False, False, True]


def test_a_tensor_lr_is_filled_in_place():
    model, batches = problem(steps=1)
    lr = torch.tensor(1e-3, dtype=F64)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pilot = Pilot(Scripted([(1.0, 0.0, 0.0)])).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches)
    assert optimizer.param_groups[0]["lr"] is lr
    assert float(lr) == pytest.approx(10**-2.5, rel=1e-12)


def test_the_warning_messages():
    model, batches = problem(steps=4)
    with pytest.warns(UserWarning, match=r"^SGD has no `betas`: the pilot controls only its lr and the gradient clipping \(the beta1 feature stays at 0\.9\)$"):  # fmt: skip
        Pilot(Scripted(ACTIONS)).attach(two_groups(model, torch.optim.SGD), 9)
    optimizer = two_groups(model)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    with pytest.warns(UserWarning, match=r"^an lr scheduler is attached to this optimizer: it and the pilot will fight over the learning rate; remove the scheduler$"):  # fmt: skip
        Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches[:3])
    optimizer.param_groups[0]["lr"] *= 1 + 1e-8  # within 1e-6: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_steps(pilot, model, optimizer, batches[3:])
    optimizer = two_groups(model)
    pilot = Pilot(Scripted(ACTIONS)).attach(optimizer, 9)
    run_steps(pilot, model, optimizer, batches[:3])
    optimizer.param_groups[0]["lr"] = 0.5
    with pytest.warns(UserWarning, match=r"^the learning rate changed outside the pilot \(0\.00316 -> 0\.5; an lr scheduler\?\): the pilot overwrites it at each decision; remove the other controller$"):  # fmt: skip
        run_steps(pilot, model, optimizer, batches[3:])


def test_a_run_of_one_step():
    model, batches = problem(steps=1)
    optimizer = two_groups(model)
    scripted = Scripted([(1.0, 0.0, 0.0)])
    pilot = Pilot(scripted).attach(optimizer, 1)
    run_steps(pilot, model, optimizer, batches)
    assert pilot.steps_done == 1 and len(scripted.seen) == 1
    assert pilot.hyperparameters["lr"] == pytest.approx(10**-2.5, rel=1e-12)
