import itertools
import math

import pytest
import torch

from hyperpilot.envs.actions import (
    ActionBounds,
    Hyperparams,
    base_schedule,
    decode_action,
    warmup_cosine,
)


def current(n=1, lr=1e-3, beta1=0.9, clip=1.0):
    return Hyperparams.full(n, lr, beta1, clip, dtype=torch.float64)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ([0.0, 0.0, 0.0], (1e-3, 0.9, 1.0)),
        ([1.0, 1.0, 1.0], (10**-2.5, 1 - 10**-1.25, 10**0.5)),
        ([-1.0, -1.0, -1.0], (10**-3.5, 1 - 10**-0.75, 10**-0.5)),
        ([1.0, -1.0, 1.0], (10**-2.5, 1 - 10**-0.75, 10**0.5)),
    ],
    ids=["centre", "all-up", "all-down", "mixed-corner"],
)
def test_decode_action_moves_one_bounded_step(action, expected):
    new = decode_action(torch.tensor([action], dtype=torch.float64), current())
    for value, want in zip(new.values(), expected):
        assert float(value[0]) == pytest.approx(want, rel=1e-9)


def test_decode_action_clamps_to_the_valid_ranges():
    low = Hyperparams.full(1, 1e-6, 0.999, 1e-2, dtype=torch.float64)
    new = decode_action(torch.full((1, 3), -1.0, dtype=torch.float64), low)
    assert float(new.lr[0]) == pytest.approx(1e-6)
    assert float(new.clip[0]) == pytest.approx(1e-2)
    high = Hyperparams.full(1, 1.0, 0.5, 1e3, dtype=torch.float64)
    new = decode_action(torch.ones(1, 3, dtype=torch.float64), high)
    assert float(new.lr[0]) == pytest.approx(1.0)
    assert float(new.clip[0]) == pytest.approx(1e3)
    # beta1 up (action -1 is less momentum) clamps at 0.5 from 0.6
    new = decode_action(
        torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64), current(beta1=0.6)
    )
    assert float(new.beta1[0]) == pytest.approx(0.5)


def test_out_of_box_actions_are_clipped():
    wild = decode_action(
        torch.tensor([[5.0, 0.0, 0.0]], dtype=torch.float64), current()
    )
    unit = decode_action(
        torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), current()
    )
    assert torch.equal(wild.lr, unit.lr)


def test_lr_only_control_keeps_the_others():
    new = decode_action(torch.tensor([[1.0]], dtype=torch.float64), current(), ("lr",))
    assert float(new.lr[0]) == pytest.approx(10**-2.5)
    assert float(new.beta1[0]) == pytest.approx(0.9)
    assert float(new.clip[0]) == pytest.approx(1.0)


def test_residual_mode_moves_from_the_base_not_the_current_value():
    far = current(lr=1e-1)
    base = current(lr=1e-4)
    new = decode_action(
        torch.ones(1, 3, dtype=torch.float64), far, mode="residual", base=base
    )
    assert float(new.lr[0]) == pytest.approx(10**-3.5)
    with pytest.raises(ValueError, match="base"):
        decode_action(torch.ones(1, 3), current(), mode="residual")


@pytest.mark.parametrize(
    ("action", "match"),
    [(torch.zeros(1, 2), "shape"), (torch.tensor([[math.nan, 0.0, 0.0]]), "NaN")],
    ids=["wrong-shape", "nan"],
)
def test_bad_actions_raise(action, match):
    with pytest.raises(ValueError, match=match):
        decode_action(action, Hyperparams.full(1, 1e-3, 0.9, 1.0))


def test_warmup_cosine_ramps_peaks_and_decays():
    total = torch.tensor(100)
    peak = torch.tensor(1.0, dtype=torch.float64)
    values = [float(warmup_cosine(torch.tensor(s), total, peak)) for s in range(100)]
    assert values[0] < values[4] <= 1.0
    assert max(values) == pytest.approx(1.0)
    assert values[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(values[5:]))
    base = base_schedule(current(), torch.tensor([50]), total)
    assert 1e-6 <= float(base.lr[0]) < 1e-3
    assert float(base.beta1[0]) == pytest.approx(0.9)


def test_narrower_action_bounds_move_and_clamp_less():
    bounds = ActionBounds(
        lr_step=0.25, beta1_step=0.1, beta1=(0.8, 0.99), lr=(1e-4, 1e-2)
    )
    current = Hyperparams.full(2, 1e-3, 0.9, 1.0, dtype=torch.float64)
    up = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    new = decode_action(up, current, bounds=bounds)
    # by hand: log10 lr -3 +- 0.25; log10(1 - 0.9) = -1 -+ 0.1 (up means more momentum)
    assert new.lr.tolist() == pytest.approx([10**-2.75, 10**-3.25])
    assert new.beta1.tolist() == pytest.approx([1 - 10**-1.1, 1 - 10**-0.9])
    far = decode_action(
        up * 0 + 1, Hyperparams.full(2, 9e-3, 0.989, 1.0), bounds=bounds
    )
    assert far.lr.max().item() == pytest.approx(1e-2)  # clamped to the bounds' lr range
    assert far.beta1.max().item() == pytest.approx(0.99)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_step": 0.0}, "lr_step"),
        ({"beta1": (0.4, 0.9)}, "beta1 range"),
        ({"clip": (10.0, 1.0)}, "clip range"),
    ],
    ids=["zero-step", "beta1-below-0.5", "clip-unordered"],
)
def test_action_bounds_refuse_what_the_package_cannot_decode(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActionBounds(**kwargs)
