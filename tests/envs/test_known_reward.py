"""Known answers for `compute_reward`: every kind and option, worked out by hand."""

import itertools
import math

import pytest
import torch

from hyperpilot.envs.reward import RewardConfig, compute_reward

F64 = torch.float64
NAN, INF = math.nan, math.inf


def reward(config, **given):
    """`compute_reward` on `[N]` float lists; unnamed arguments take neutral values."""
    n = len(next(iter(given.values())))
    values = {
        "val_loss": [1.0] * n,
        "previous_val_loss": [1.0] * n,
        "first_val_loss": [1.0] * n,
        "train_loss": [1.0] * n,
        "first_train_loss": [1.0] * n,
        "last_decision": [0.0] * n,
        "diverged": [False] * n,
        "decisions_left": [0] * n,
    } | given
    tensors = {
        key: torch.tensor(value, dtype=F64 if key != "diverged" else torch.bool)
        for key, value in values.items()
    }
    tensors["decisions_left"] = tensors["decisions_left"].long()
    return compute_reward(config, **tensors).tolist()


def test_val_loss_is_minus_the_loss_over_the_first_loss():
    got = reward(RewardConfig(), val_loss=[2.0, 6.0, 4.0], first_val_loss=[4.0] * 3)
    assert got == pytest.approx([-0.5, -1.5, -1.0], abs=1e-15)


def test_val_loss_ignores_the_training_loss_and_the_previous_val_loss():
    got = reward(
        RewardConfig(),
        val_loss=[3.0],
        first_val_loss=[2.0],
        previous_val_loss=[100.0],
        train_loss=[7.0],
        first_train_loss=[0.5],
    )
    assert got == pytest.approx([-1.5], abs=1e-15)


@pytest.mark.parametrize(
    ("cap", "val", "first", "expected"),
    [
        (10.0, 50.0, 1.0, -10.0),  # 50 is capped at 10
        (10.0, 10.0, 1.0, -10.0),  # exactly at the cap
        (10.0, 9.0, 1.0, -9.0),  # just under it
        (3.0, 50.0, 2.0, -3.0),  # a configured cap
        (10.0, NAN, 1.0, -10.0),  # a NaN loss costs the cap
        (10.0, INF, 1.0, -10.0),
        (3.0, 1.0, 0.0, -3.0),  # a zero first loss: inf ratio, capped
        (10.0, -1.0, 2.0, 0.0),  # a negative ratio is floored at 0
    ],
    ids=["capped", "at-cap", "under-cap", "cap-3", "nan", "inf", "zero-first", "floor"],
)
def test_val_loss_caps_and_non_finite_inputs(cap, val, first, expected):
    config = RewardConfig(max_normalized_loss=cap)
    got = reward(config, val_loss=[val], first_val_loss=[first])
    assert got == pytest.approx([expected], abs=1e-15)


def test_train_loss_is_minus_the_window_loss_over_the_first_loss():
    config = RewardConfig(kind="train_loss")
    got = reward(
        config,
        train_loss=[3.0, 0.5, 40.0, NAN, INF],
        first_train_loss=[2.0, 2.0, 2.0, 2.0, 2.0],
        val_loss=[100.0, 100.0, NAN, 1.0, 1.0],  # ignored by this kind
    )
    assert got == pytest.approx([-1.5, -0.25, -10.0, -10.0, -10.0], abs=1e-15)


def test_train_loss_has_its_own_cap_and_floor():
    config = RewardConfig(kind="train_loss", max_normalized_loss=4.0)
    got = reward(config, train_loss=[50.0, -3.0], first_train_loss=[5.0, 1.0])
    assert got == pytest.approx([-4.0, 0.0], abs=1e-15)


def test_log_improvement_is_ln_previous_over_now():
    config = RewardConfig(kind="log_improvement")
    got = reward(
        config,
        previous_val_loss=[4.0, 2.0, 3.0],
        val_loss=[2.0, 4.0, 3.0],
        first_val_loss=[50.0, 50.0, 50.0],  # no effect on this kind
    )
    assert got == pytest.approx([math.log(2.0), -math.log(2.0), 0.0], abs=1e-15)


def test_log_improvement_sums_to_the_whole_runs_improvement():
    config = RewardConfig(kind="log_improvement")
    losses = [8.0, 5.0, 6.0, 2.0, 1.0]
    total = sum(
        reward(config, previous_val_loss=[a], val_loss=[b])[0]
        for a, b in itertools.pairwise(losses)
    )
    assert total == pytest.approx(math.log(8.0 / 1.0), abs=1e-14)


@pytest.mark.parametrize(
    ("cap", "previous", "val", "expected"),
    [
        (10.0, 1.0, 1e-9, 10.0),  # ln(1e9) = 20.7, capped
        (10.0, 1e-9, 1.0, -10.0),
        (30.0, 1.0, 1e-9, 9 * math.log(10.0)),  # under a larger cap
        (2.0, 1.0, 1e-9, 2.0),
        (10.0, 1.0, NAN, -10.0),  # NaN costs the cap
        (10.0, 1.0, INF, -10.0),  # ln(0) = -inf
        (10.0, 1.0, 0.0, 10.0),  # ln(inf) = +inf
    ],
    ids=["up-capped", "down-capped", "cap-30", "cap-2", "nan", "inf", "to-zero"],
)
def test_log_improvement_caps_and_non_finite_inputs(cap, previous, val, expected):
    config = RewardConfig(kind="log_improvement", max_normalized_loss=cap)
    got = reward(config, previous_val_loss=[previous], val_loss=[val])
    assert got == pytest.approx([expected], abs=1e-12)


def test_the_terminal_term_is_paid_at_the_last_decision_only():
    config = RewardConfig(terminal_weight=2.0)
    got = reward(
        config,
        val_loss=[2.0, 2.0],
        first_val_loss=[4.0, 4.0],
        last_decision=[0.0, 1.0],
    )
    # -0.5 each, plus -2 * 0.5 at the last decision
    assert got == pytest.approx([-0.5, -1.5], abs=1e-15)


def test_the_terminal_term_adds_to_log_improvement_and_is_capped():
    config = RewardConfig(
        kind="log_improvement", terminal_weight=0.5, max_normalized_loss=5.0
    )
    got = reward(
        config,
        previous_val_loss=[4.0, 4.0, 4.0],
        val_loss=[2.0, 2.0, 80.0],
        first_val_loss=[8.0, 8.0, 8.0],
        last_decision=[0.0, 1.0, 1.0],
    )
    assert got == pytest.approx(
        [
            math.log(2.0),
            math.log(2.0) - 0.5 * 0.25,
            # ln(4 / 80) = -3.0; the terminal ratio 80 / 8 = 10 is capped at 5
            math.log(4.0 / 80.0) - 0.5 * 5.0,
        ],
        abs=1e-15,
    )


def test_no_terminal_term_without_a_weight():
    got = reward(
        RewardConfig(), val_loss=[2.0], first_val_loss=[4.0], last_decision=[1.0]
    )
    assert got == pytest.approx([-0.5], abs=1e-15)


@pytest.mark.parametrize("kind", ["val_loss", "train_loss", "log_improvement"])
def test_a_diverged_run_pays_the_penalty_for_each_decision_left_plus_one(kind):
    config = RewardConfig(kind=kind, divergence_penalty=2.0, terminal_weight=1.0)
    got = reward(
        config,
        val_loss=[NAN, INF, 2.0, 2.0],
        previous_val_loss=[4.0] * 4,
        first_val_loss=[4.0] * 4,
        train_loss=[NAN, 1.0, 2.0, 2.0],
        first_train_loss=[4.0] * 4,
        diverged=[True, True, True, False],
        decisions_left=[0, 3, 7, 7],
        last_decision=[0.0, 0.0, 1.0, 0.0],
    )
    healthy = {
        "val_loss": -0.5,
        "train_loss": -0.5,
        "log_improvement": math.log(2.0),
    }[kind]
    assert got == pytest.approx([-2.0, -8.0, -16.0, healthy], abs=1e-15)


def test_the_default_reward_and_penalty():
    config = RewardConfig()
    got = reward(
        config,
        val_loss=[3.0, 3.0],
        first_val_loss=[4.0, 4.0],
        diverged=[False, True],
        decisions_left=[5, 5],
        last_decision=[1.0, 0.0],
    )
    assert got == pytest.approx([-0.75, -6.0], abs=1e-15)


def test_a_zero_penalty_gives_zero():
    got = reward(
        RewardConfig(divergence_penalty=0.0),
        val_loss=[NAN],
        diverged=[True],
        decisions_left=[4],
    )
    assert got == [0.0]


def test_a_cap_below_one_is_allowed():
    got = reward(RewardConfig(max_normalized_loss=0.5), val_loss=[3.0])
    assert got == [-0.5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"kind": "val"},
            r"^reward kind 'val' is invalid; choose from "
            r"\('val_loss', 'train_loss', 'log_improvement'\)$",
        ),
        ({"divergence_penalty": -0.1}, r"^divergence_penalty must be >= 0, got -0\.1$"),
        ({"max_normalized_loss": 0.0}, r"^max_normalized_loss must be > 0, got 0\.0$"),
        (
            {"max_normalized_loss": -1.0},
            r"^max_normalized_loss must be > 0, got -1\.0$",
        ),
    ],
    ids=["kind", "penalty", "zero-cap", "negative-cap"],
)
def test_bad_reward_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kwargs)
