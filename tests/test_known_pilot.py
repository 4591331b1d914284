"""Known answers for the Pilot: per-group lr, beta1, clipping, features and divergence.

A scripted policy plays fixed actions, so every learning rate, beta1 and clip
threshold is known in advance (lr x10^(0.5 a), 1 - beta1 x10^(-0.25 a), clip
x10^(0.5 a)); the reference is `torch.optim.Adam` + `clip_grad_norm_` driven by
those values by hand.
"""

import copy
import math

import pytest
import torch
from torch import nn

from hyperpilot.agents.pilot import Pilot
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
