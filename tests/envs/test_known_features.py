"""Known answers for every entry of `OBS_FEATURES`, through `FeatureTracker` by hand.

Each expected value is worked out in the comment next to it from the steps fed in;
none comes from the code under test.
"""

import math

import pytest
import torch

from hyperpilot.envs.features import (
    FEATURES_VERSION,
    N_FEATURES,
    OBS_FEATURES,
    OBS_HIGH,
    OBS_LOW,
    OBS_NAMES,
    FeatureTracker,
)

F64 = torch.float64
NAN, INF = math.nan, math.inf
LN = math.log
ALL = torch.ones(2, dtype=torch.bool)
COL = {name: index for index, name in enumerate(OBS_NAMES)}


def t(*values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def tracker(first_val=(2.0, 5.0), val_available=(True, False)):
    """Two runs; run 0 has validation, run 1 has none."""
    tr = FeatureTracker(2)
    tr.reset(ALL, t(*first_val), t(*val_available, dtype=torch.bool))
    return tr


def step(tr, loss, grad_norm, clipped=(False, False), agreement=(0.0, 0.0)):
    tr.record_step(
        t(*loss), t(*grad_norm), t(*clipped, dtype=torch.bool), t(*agreement)
    )


def observe(tr, lr=(1e-3, 1e-3), beta1=(0.9, 0.9), clip=(1.0, 1.0), progress=(0.0, 0.0), val=(2.0, 5.0)):  # fmt: skip
    obs = tr.observe(t(*lr), t(*beta1), t(*clip), t(*progress), t(*val))
    assert obs.dtype == torch.float32 and obs.shape == (2, N_FEATURES)
    return obs.to(F64)


def column(obs, name):
    return obs[:, COL[name]].tolist()


def test_the_feature_table():
    assert FEATURES_VERSION == 1
    assert OBS_NAMES == (
        "log_loss_ratio",
        "loss_trend_short",
        "loss_trend_long",
        "log_grad_norm_ratio",
        "grad_norm_trend",
        "grad_agreement",
        "log_lr",
        "log_one_minus_beta1",
        "log_clip",
        "clip_fraction",
        "log_val_ratio",
        "train_val_gap",
        "val_available",
        "progress",
    )
    assert N_FEATURES == 14
    bounds = {f.name: (f.low, f.high) for f in OBS_FEATURES}
    assert [bounds[n] for n in OBS_NAMES] == list(zip(OBS_LOW, OBS_HIGH))
    assert OBS_LOW == (-10, -5, -5, -10, -5, -1, -1, -1, -1, 0, -10, -10, 0, 0)
    assert OBS_HIGH == (10, 5, 5, 10, 5, 1, 1, 1, 1, 1, 10, 10, 1, 1)


def test_the_first_window_before_any_step():
    """At `start`: no step yet, so only hyperparameters, validation and progress."""
    tr = tracker()
    obs = observe(tr, val=(2.0, 5.0), progress=(0.0, 0.0))
    for name in OBS_NAMES[:6]:  # loss and gradient features need a step
        assert column(obs, name) == [0.0, 0.0], name
    assert column(obs, "clip_fraction") == [0.0, 0.0]
    assert column(obs, "log_val_ratio") == [0.0, 0.0]  # ln(2 / 2); run 1: no val
    assert column(obs, "train_val_gap") == [0.0, 0.0]  # no train loss yet
    assert column(obs, "val_available") == [1.0, 0.0]
    assert column(obs, "progress") == [0.0, 0.0]
    assert tr.window_train_loss()[0].isnan()


def test_three_windows_by_hand():
    tr = tracker()
    observe(tr)  # the start, as the engine does it

    # Window 1. Run 0: losses 4, 2 (mean 3); norms 1, 4 (mean log = ln 2);
    # clipped once; agreements 0, 0.5. Run 1: losses 1, 1; norms 2, 2; no clip.
    step(tr, (4.0, 1.0), (1.0, 2.0), (True, False), (0.0, -1.0))
    step(tr, (2.0, 1.0), (4.0, 2.0), (False, False), (0.5, -1.0))
    assert tr.window_train_loss().tolist() == [3.0, 1.0]
    obs = observe(tr, progress=(0.2, 0.5), val=(1.5, 9.0))
    expected = {
        "log_loss_ratio": [LN(3 / 4), 0.0],
        "loss_trend_short": [0.0, 0.0],  # no window before
        "loss_trend_long": [0.0, 0.0],
        "log_grad_norm_ratio": [LN(2) - LN(1), 0.0],
        "grad_norm_trend": [0.0, 0.0],
        "grad_agreement": [0.25, -1.0],
        "clip_fraction": [0.5, 0.0],
        "log_val_ratio": [LN(1.5 / 2.0), 0.0],  # run 1 has no validation
        "train_val_gap": [LN(1.5) - LN(3.0), 0.0],
        "val_available": [1.0, 0.0],
        "progress": [0.2, 0.5],
    }
    for name, want in expected.items():
        assert column(obs, name) == pytest.approx(want, abs=1e-6), name

    # Window 2. Run 0: losses 1, 1 (mean 1); norms 4, 4 (ln 4). Run 1: loss 2, 8
    # (mean 5); norms 1, 1 (ln 1); both steps clipped.
    step(tr, (1.0, 2.0), (4.0, 1.0), (False, True), (1.0, 0.0))
    step(tr, (1.0, 8.0), (4.0, 1.0), (False, True), (1.0, 0.0))
    obs = observe(tr, progress=(0.4, 1.0), val=(0.5, 9.0))
    expected = {
        "log_loss_ratio": [LN(1 / 4), LN(5 / 1)],
        "loss_trend_short": [LN(1) - LN(3), LN(5) - LN(1)],
        # the slow average is the first window's ln loss
        "loss_trend_long": [LN(1) - LN(3), LN(5) - LN(1)],
        "log_grad_norm_ratio": [LN(4), LN(1) - LN(2)],
        "grad_norm_trend": [LN(4) - LN(2), LN(1) - LN(2)],
        "grad_agreement": [1.0, 0.0],
        "clip_fraction": [0.0, 1.0],
        "log_val_ratio": [LN(0.5 / 2.0), 0.0],
        "train_val_gap": [LN(0.5) - LN(1.0), 0.0],
        "progress": [0.4, 1.0],
    }
    for name, want in expected.items():
        assert column(obs, name) == pytest.approx(want, abs=1e-6), name

    # Window 3, one step: run 0 loss 2, run 1 loss 5. The slow average moved to
    # 0.8 * ln(first window) + 0.2 * ln(second window).
    step(tr, (2.0, 5.0), (4.0, 1.0))
    obs = observe(tr, progress=(0.6, 1.0), val=(0.5, 9.0))
    slow = [0.8 * LN(3) + 0.2 * LN(1), 0.8 * LN(1) + 0.2 * LN(5)]
    expected = {
        "log_loss_ratio": [LN(2 / 4), LN(5 / 1)],
        "loss_trend_short": [LN(2) - LN(1), LN(5) - LN(5)],
        "loss_trend_long": [LN(2) - slow[0], LN(5) - slow[1]],
        "grad_norm_trend": [0.0, 0.0],
        "grad_agreement": [0.0, 0.0],
        "clip_fraction": [0.0, 0.0],
        "train_val_gap": [LN(0.5) - LN(2.0), 0.0],
    }
    for name, want in expected.items():
        assert column(obs, name) == pytest.approx(want, abs=1e-6), name


def test_an_empty_window_keeps_the_last_seen_window_for_the_trends():
    tr = tracker()
    step(tr, (2.0, 2.0), (1.0, 1.0))
    observe(tr)
    obs = observe(tr)  # no step in between (a run that already ended)
    for name in OBS_NAMES[:6]:
        assert column(obs, name) == [0.0, 0.0], name
    step(tr, (8.0, 2.0), (1.0, 1.0))
    obs = observe(tr)
    # compared with the window before the empty one
    assert column(obs, "loss_trend_short") == pytest.approx([LN(4), 0.0], abs=1e-6)
    assert column(obs, "loss_trend_long") == pytest.approx([LN(4), 0.0], abs=1e-6)


@pytest.mark.parametrize(
    ("lr", "beta1", "clip", "expected"),
    [
        # log10(lr) in [-6, 0], log10(1 - beta1) in [-3, log10 0.5], log10(clip)
        # in [-2, 3], each mapped linearly onto [-1, 1]
        (1e-3, 0.9, 1.0, (0.0, (-1 + 1.650515) / 1.349485, -0.2)),
        (1e-6, 0.999, 1e-2, (-1.0, -1.0, -1.0)),
        (1.0, 0.5, 1e3, (1.0, 1.0, 1.0)),
        (1e-4, 0.99, 10.0, (-1 / 3, (-2 + 1.650515) / 1.349485, 0.2)),
        # outside the valid ranges: clamped to the box
        (1e-9, 0.9999, 1e-4, (-1.0, -1.0, -1.0)),
        (10.0, 0.1, 1e5, (1.0, 1.0, 1.0)),
    ],
    ids=["typical", "low-corner", "high-corner", "quarter", "below", "above"],
)
def test_hyperparameter_features(lr, beta1, clip, expected):
    obs = observe(tracker(), lr=(lr, lr), beta1=(beta1, beta1), clip=(clip, clip))
    for name, want in zip(("log_lr", "log_one_minus_beta1", "log_clip"), expected):
        assert column(obs, name) == pytest.approx([want, want], abs=1e-6), name


def test_values_outside_the_box_are_clamped():
    tr = tracker(first_val=(1.0, 1.0), val_available=(True, True))
    step(tr, (1.0, 1.0), (1.0, 1.0))
    observe(tr)
    # run 0 explodes (e^12 times the loss, e^15 the norm), run 1 collapses
    step(tr, (math.exp(12), math.exp(-12)), (math.exp(15), math.exp(-15)))
    obs = observe(tr, progress=(1.5, -0.5), val=(math.exp(24), math.exp(-30)))
    expected = {
        "log_loss_ratio": [10.0, -10.0],
        "loss_trend_short": [5.0, -5.0],
        "loss_trend_long": [5.0, -5.0],
        "log_grad_norm_ratio": [10.0, -10.0],
        "grad_norm_trend": [5.0, -5.0],
        "log_val_ratio": [10.0, -10.0],
        "train_val_gap": [10.0, -10.0],  # 24 - 12 = 12; -30 + 12 = -18
        "progress": [1.0, 0.0],
    }
    for name, want in expected.items():
        assert column(obs, name) == pytest.approx(want, abs=1e-6), name


def test_a_zero_gradient_norm_counts_as_1e_minus_30():
    tr = tracker()
    step(tr, (1.0, 1.0), (1.0, 1.0))
    step(tr, (1.0, 1.0), (0.0, 1.0))  # mean log norm: (0 + ln 1e-30) / 2 = -34.5
    obs = observe(tr)
    assert column(obs, "log_grad_norm_ratio") == [-10.0, 0.0]
    assert tr.first_grad_norm.tolist() == [1.0, 1.0]


def test_a_diverged_run_stays_inside_the_box():
    tr = tracker(first_val=(1.0, 1.0), val_available=(True, True))
    step(tr, (1.0, 1.0), (1.0, 1.0))
    observe(tr)
    # run 0: an infinite loss and norm; run 1: NaN everywhere
    step(tr, (INF, NAN), (INF, NAN), (True, False), (NAN, NAN))
    obs = observe(tr, val=(INF, NAN))
    expected = {
        "log_loss_ratio": [10.0, 0.0],  # +inf to the top, NaN to 0
        "loss_trend_short": [5.0, 0.0],
        "loss_trend_long": [5.0, 0.0],
        "log_grad_norm_ratio": [10.0, 0.0],
        "grad_norm_trend": [5.0, 0.0],
        "grad_agreement": [0.0, 0.0],
        "clip_fraction": [1.0, 0.0],  # the window's one step was clipped
        "log_val_ratio": [10.0, 0.0],
        "train_val_gap": [0.0, 0.0],  # inf - inf is NaN, and NaN is 0
    }
    for name, want in expected.items():
        assert column(obs, name) == want, name
    assert torch.isfinite(obs).all()
    assert ((obs >= t(*OBS_LOW)) & (obs <= t(*OBS_HIGH))).all()


def test_minus_infinity_goes_to_the_bottom_of_the_box():
    tr = tracker(first_val=(1.0, 1.0), val_available=(True, True))
    step(tr, (1.0, 1.0), (1.0, 1.0))
    step(tr, (-3.0, 1.0), (1.0, 1.0))  # a mean loss of -1, against the contract
    obs = observe(tr, val=(0.0, 1.0))  # ln(0) = -inf
    assert column(obs, "log_val_ratio") == [-10.0, 0.0]
    # losses are floored to the smallest positive float before any log: a mean
    # loss at or below 0 is the bottom of the box, not a NaN read as 0
    assert column(obs, "log_loss_ratio") == [-10.0, 0.0]


def test_first_loss_and_norm_are_the_first_step_of_the_run():
    tr = tracker()
    step(tr, (3.0, 5.0), (2.0, 7.0))
    step(tr, (1.0, 1.0), (1.0, 1.0))
    observe(tr)
    step(tr, (9.0, 9.0), (9.0, 9.0))
    assert tr.first_loss.tolist() == [3.0, 5.0]
    assert tr.first_grad_norm.tolist() == [2.0, 7.0]


def test_reset_starts_only_the_runs_it_names():
    tr = tracker(first_val=(2.0, 5.0), val_available=(True, True))
    step(tr, (4.0, 4.0), (2.0, 2.0), (True, True))
    observe(tr, val=(2.0, 5.0))
    step(tr, (2.0, 2.0), (2.0, 2.0))
    tr.reset(
        t(False, True, dtype=torch.bool), t(99.0, 8.0), t(True, False, dtype=torch.bool)
    )
    assert tr.first_val_loss.tolist() == [2.0, 8.0]
    assert tr.val_available.tolist() == [True, False]
    assert tr.count.tolist() == [1.0, 0.0]  # run 0's window goes on
    assert tr.first_loss[0] == 4.0 and tr.first_loss[1].isnan()
    step(tr, (2.0, 6.0), (2.0, 3.0), (True, False))
    obs = observe(tr, val=(1.0, 4.0))
    assert column(obs, "log_loss_ratio") == pytest.approx([LN(2 / 4), 0.0], abs=1e-6)
    assert column(obs, "loss_trend_short") == pytest.approx([LN(2 / 4), 0.0], abs=1e-6)
    assert column(obs, "clip_fraction") == [0.5, 0.0]
    assert column(obs, "log_val_ratio") == pytest.approx([LN(1 / 2), 0.0], abs=1e-6)
    assert column(obs, "val_available") == [1.0, 0.0]


def test_the_tracker_keeps_its_state_in_float64():
    tr = FeatureTracker(2)
    state = {k: v for k, v in vars(tr).items() if isinstance(v, torch.Tensor)}
    assert {k: v.dtype for k, v in state.items() if k != "val_available"} == {
        k: F64 for k in state if k != "val_available"
    }
    assert tr.val_available.dtype == torch.bool
    # 1 + 2^-30 is lost in a float32 sum, kept in a float64 one
    tr.reset(ALL, t(1.0, 1.0, dtype=torch.float32), t(True, True, dtype=torch.bool))
    tiny = 1.0 + 2.0**-30
    for _ in range(2):
        tr.record_step(
            t(tiny, tiny),
            t(1.0, 1.0, dtype=torch.float32),
            t(False, True, dtype=torch.bool),
            t(0.25, 0.25, dtype=torch.float32),
        )
    assert tr.loss_sum.tolist() == [2 * tiny, 2 * tiny]
    assert tr.clipped.tolist() == [0.0, 2.0] and tr.count.tolist() == [2.0, 2.0]
