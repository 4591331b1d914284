"""Known answers for action decoding (both modes) and the residual base schedule."""

import math

import pytest
import torch

from hyperpilot.envs.actions import (
    ACTION_RANGES,
    ACTION_STEPS,
    Hyperparams,
    base_schedule,
    decode_action,
    decode_in_run,
    validate_controlled,
    warmup_cosine,
)

F64 = torch.float64


def hp(lr, beta1, clip):
    return Hyperparams.full(1, lr, beta1, clip, dtype=F64)


def values(h):
    return [float(v[0]) for v in h.values()]


def act(*columns):
    return torch.tensor([columns], dtype=F64)


def test_the_documented_steps_and_ranges():
    assert ACTION_STEPS == {"lr": 0.5, "beta1": 0.25, "clip": 0.5}
    assert ACTION_RANGES == {
        "lr": (1e-6, 1.0),
        "beta1": (0.5, 0.999),
        "clip": (1e-2, 1e3),
    }


# From lr 1e-3, beta1 0.9 (1 - beta1 = 1e-1), clip 1: one step is x10^+-0.5 for lr
# and clip and x10^-+0.25 for 1 - beta1 (a positive action raises beta1).
CORNERS = {
    (0, 0, 0): (1e-3, 0.9, 1.0),
    (1, 1, 1): (10**-2.5, 1 - 10**-1.25, 10**0.5),
    (-1, -1, -1): (10**-3.5, 1 - 10**-0.75, 10**-0.5),
    (1, -1, -1): (10**-2.5, 1 - 10**-0.75, 10**-0.5),
    (-1, 1, -1): (10**-3.5, 1 - 10**-1.25, 10**-0.5),
    (-1, -1, 1): (10**-3.5, 1 - 10**-0.75, 10**0.5),
    (1, 1, -1): (10**-2.5, 1 - 10**-1.25, 10**-0.5),
    (1, -1, 1): (10**-2.5, 1 - 10**-0.75, 10**0.5),
    (-1, 1, 1): (10**-3.5, 1 - 10**-1.25, 10**0.5),
    (0.5, -0.5, 0.25): (10**-2.75, 1 - 10**-0.875, 10**0.125),
}


@pytest.mark.parametrize("action", list(CORNERS), ids=str)
def test_compound_corners_and_centre(action):
    new = decode_action(act(*action), hp(1e-3, 0.9, 1.0))
    assert values(new) == pytest.approx(CORNERS[action], rel=1e-12)


@pytest.mark.parametrize("action", list(CORNERS), ids=str)
def test_residual_corners_and_centre_move_from_the_base(action):
    far = hp(0.3, 0.6, 500.0)  # the current values play no part
    new = decode_action(act(*action), far, mode="residual", base=hp(1e-3, 0.9, 1.0))
    assert values(new) == pytest.approx(CORNERS[action], rel=1e-12)


@pytest.mark.parametrize("mode", ["compound", "residual"])
@pytest.mark.parametrize(
    ("start", "action", "expected"),
    [
        # one step down from the bottom of each range stays at the bottom
        ((1e-6, 0.999, 1e-2), (-1, 1, -1), (1e-6, 0.999, 1e-2)),
        ((1.0, 0.5, 1e3), (1, -1, 1), (1.0, 0.5, 1e3)),
        # half a step past the edge is clamped there
        ((10**-5.75, 1 - 10**-2.875, 10**-1.75), (-1, 1, -1), (1e-6, 0.999, 1e-2)),
        ((10**-0.25, 0.6, 10**2.75), (1, -1, 1), (1.0, 0.5, 1e3)),
        # inside the range near the edge: the full step
        ((10**-5.5, 1 - 10**-2.75, 10**-1.5), (-1, 1, -1), (1e-6, 0.999, 1e-2)),
    ],
    ids=["bottom", "top", "half-past-bottom", "half-past-top", "exactly-to-bottom"],
)
def test_clamps_at_the_range_edges(mode, start, action, expected):
    origin = hp(*start)
    base = origin if mode == "residual" else None
    new = decode_action(act(*action), hp(1e-3, 0.9, 1.0) if base else origin, mode=mode, base=base)  # fmt: skip
    assert values(new) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mode", ["compound", "residual"])
def test_actions_outside_the_box_count_as_its_edge(mode):
    start = hp(1e-3, 0.9, 1.0)
    new = decode_action(act(7.0, -3.0, 1.5), start, mode=mode, base=start)
    assert values(new) == pytest.approx(CORNERS[(1, -1, 1)], rel=1e-12)


def test_several_runs_decode_row_by_row():
    current = Hyperparams(
        torch.tensor([1e-3, 1e-2], dtype=F64),
        torch.tensor([0.9, 0.99], dtype=F64),
        torch.tensor([1.0, 10.0], dtype=F64),
    )
    new = decode_action(
        torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 1.0]], dtype=F64), current
    )
    assert new.lr.tolist() == pytest.approx([10**-2.5, 1e-2], rel=1e-12)
    assert new.beta1.tolist() == pytest.approx([0.9, 1 - 10**-1.75], rel=1e-12)
    assert new.clip.tolist() == pytest.approx([1.0, 10**1.5], rel=1e-12)


@pytest.mark.parametrize(
    ("controlled", "action", "expected"),
    [
        (("lr",), (1,), (10**-2.5, 0.9, 1.0)),
        (("beta1",), (1,), (1e-3, 1 - 10**-1.25, 1.0)),
        (("clip",), (-1,), (1e-3, 0.9, 10**-0.5)),
        (("lr", "clip"), (-1, 1), (10**-3.5, 0.9, 10**0.5)),
        (("beta1", "clip"), (-1, 1), (1e-3, 1 - 10**-0.75, 10**0.5)),
    ],
    ids=["lr", "beta1", "clip", "lr-clip", "beta1-clip"],
)
def test_a_controlled_subset_moves_only_its_columns(controlled, action, expected):
    new = decode_action(act(*action), hp(1e-3, 0.9, 1.0), controlled)
    assert values(new) == pytest.approx(expected, rel=1e-12)


def test_residual_subset_keeps_the_others_at_the_base_value():
    current, base = hp(0.1, 0.6, 300.0), hp(1e-3, 0.9, 1.0)
    new = decode_action(act(1.0), current, ("clip",), mode="residual", base=base)
    assert values(new) == pytest.approx((1e-3, 0.9, 10**0.5), rel=1e-12)


def test_the_controlled_set_is_put_in_canonical_order():
    assert validate_controlled(["clip", "lr"]) == ("lr", "clip")
    assert validate_controlled(("beta1", "clip", "lr")) == ("lr", "beta1", "clip")
    for bad in ([], ["momentum"], ["lr", "wd"]):
        with pytest.raises(ValueError, match="non-empty subset"):
            validate_controlled(bad)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (torch.zeros(1, 2, dtype=F64), r"action has shape \(1, 2\), expected \(1, 3\)"),
        (torch.zeros(2, 3, dtype=F64), r"action has shape \(2, 3\), expected \(1, 3\)"),
        (torch.zeros(3, dtype=F64), r"expected \(1, 3\)"),
        (torch.tensor([[0.0, math.nan, 0.0]], dtype=F64), "^action contains NaN$"),
    ],
    ids=["columns", "rows", "flat", "nan"],
)
def test_bad_actions_are_refused(action, match):
    with pytest.raises(ValueError, match=match):
        decode_action(action, hp(1e-3, 0.9, 1.0))


def test_bad_modes_are_refused():
    start = hp(1e-3, 0.9, 1.0)
    with pytest.raises(ValueError, match=r"^action mode 'other' is invalid"):
        decode_action(act(0, 0, 0), start, mode="other")
    with pytest.raises(ValueError, match=r"^residual mode needs the base"):
        decode_action(act(0, 0, 0), start, mode="residual")


def test_log_coordinates_and_back():
    h = hp(1e-3, 0.9, 100.0)
    assert h.log_coordinates()[0].tolist() == pytest.approx([-3.0, -1.0, 2.0])
    z = torch.tensor([[-3.0, -1.0, 2.0], [-9.0, 1.0, 9.0]], dtype=F64)
    back = Hyperparams.from_log_coordinates(z)
    assert back.lr.tolist() == pytest.approx([1e-3, 1e-6], rel=1e-12)
    assert back.beta1.tolist() == pytest.approx([0.9, 0.5], rel=1e-12)
    assert back.clip.tolist() == pytest.approx([100.0, 1e3], rel=1e-12)


def test_where_takes_self_where_the_mask_holds():
    a = Hyperparams.full(2, 1.0, 0.5, 3.0, dtype=F64)
    b = Hyperparams.full(2, 2.0, 0.6, 4.0, dtype=F64)
    mixed = a.where(torch.tensor([True, False]), b)
    assert [v.tolist() for v in mixed.values()] == [[1.0, 2.0], [0.5, 0.6], [3.0, 4.0]]


# ------------------------------------------------------------- base schedule
# total 100: warmup = ceil(0.05 * 100) = 5 steps; step s < 5 gives (s + 1) / 6 of
# the peak, then cos decay over the 95 steps after the warmup.
def cos_part(s, total=100, warmup=5):
    return 0.5 * (
        1 + math.cos(math.pi * min(max((s - warmup) / (total - warmup), 0), 1))
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 6),
        (1, 2 / 6),
        (4, 5 / 6),
        (5, 1.0),
        (6, cos_part(6)),
        (52, 0.5 * (1 + math.cos(math.pi * 47 / 95))),
        (55, cos_part(55)),
        (99, cos_part(99)),
        (100, 0.0),
        (130, 0.0),
    ],
)
def test_warmup_cosine_at_hand_computed_steps(step, expected):
    got = warmup_cosine(
        torch.tensor(step), torch.tensor(100), torch.tensor(2.0, dtype=F64)
    )
    assert float(got) == pytest.approx(2.0 * expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("step", "total", "expected"),
    [
        (0, 10, 0.5),  # warmup = ceil(0.5) = 1 step: (0 + 1) / (1 + 1)
        (1, 10, 1.0),
        (4, 10, 0.5 * (1 + math.cos(math.pi * 3 / 9))),
        (0, 1, 0.5),  # warmup at least one step
        (1, 1, 1.0),  # progress (1 - 1) / max(1 - 1, 1) = 0: the peak
        (3, 2, 0.0),  # warmup 1; progress (3 - 1) / 1, capped at 1
        (2, 2, 0.0),  # progress (2 - 1) / max(2 - 1, 1) = 1
        (0, 40, 1 / 3),  # warmup = ceil(2.0) = 2
        (2, 40, 1.0),
        (0, 41, 1 / 4),  # warmup = ceil(2.05) = 3
    ],
)
def test_warmup_lengths(step, total, expected):
    got = warmup_cosine(
        torch.tensor(step), torch.tensor(total), torch.tensor(1.0, dtype=F64)
    )
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_cosine_options():
    peak = torch.tensor(1.0, dtype=F64)
    total = torch.tensor(100)
    at = lambda s, **kw: float(warmup_cosine(torch.tensor(s), total, peak, **kw))  # noqa: E731
    assert at(100, final_fraction=0.1) == pytest.approx(0.1)
    assert at(55, final_fraction=0.1) == pytest.approx(0.1 + 0.9 * cos_part(55))
    # warmup 20 steps: step 9 is 10 / 21 of the peak
    assert at(9, warmup_fraction=0.2) == pytest.approx(10 / 21)
    assert at(20, warmup_fraction=0.2) == pytest.approx(1.0)
    assert at(60, warmup_fraction=0.2) == pytest.approx(0.5)  # half way through 80


def test_warmup_cosine_per_run():
    got = warmup_cosine(
        torch.tensor([0, 5, 10]),
        torch.tensor([100, 100, 10]),
        torch.tensor([1.0, 2.0, 3.0], dtype=F64),
    )
    assert got.tolist() == pytest.approx([1 / 6, 2.0, 0.0], abs=1e-15)


def test_base_schedule_is_warmup_cosine_lr_and_constant_beta1_and_clip():
    initial = Hyperparams(
        torch.tensor([1e-2, 1e-2, 0.5], dtype=F64),
        torch.tensor([0.8, 0.8, 0.95], dtype=F64),
        torch.tensor([3.0, 3.0, 40.0], dtype=F64),
    )
    base = base_schedule(initial, torch.tensor([0, 55, 100]), torch.tensor([100] * 3))
    # the last run's lr decays to 0, which the lr range lifts to 1e-6
    assert base.lr.tolist() == pytest.approx(
        [1e-2 / 6, 1e-2 * cos_part(55), 1e-6], rel=1e-12
    )
    assert base.beta1.tolist() == [0.8, 0.8, 0.95]
    assert base.clip.tolist() == [3.0, 3.0, 40.0]


def test_decode_in_run_residual_uses_the_base_at_the_runs_step():
    initial, current = hp(1e-2, 0.9, 2.0), hp(0.5, 0.6, 700.0)
    new = decode_in_run(
        act(1.0, -1.0, 0.0), current, initial, torch.tensor([55]), torch.tensor([100]),
        mode="residual",
    )  # fmt: skip
    lr = 1e-2 * cos_part(55) * 10**0.5
    assert values(new) == pytest.approx((lr, 1 - 10**-0.75, 2.0), rel=1e-12)
    # at the end the base lr is 1e-6, and a step down stays there
    new = decode_in_run(
        act(-1.0, 0.0, 0.0), current, initial, torch.tensor([100]), torch.tensor([100]),
        mode="residual",
    )  # fmt: skip
    assert values(new) == pytest.approx((1e-6, 0.9, 2.0), rel=1e-12)


def test_decode_in_run_compound_ignores_the_schedule():
    initial, current = hp(1e-2, 0.9, 2.0), hp(1e-4, 0.99, 20.0)
    new = decode_in_run(
        act(1.0, 1.0, -1.0), current, initial, torch.tensor([55]), torch.tensor([100])
    )
    assert values(new) == pytest.approx(
        (10**-3.5, 1 - 10**-2.25, 20 * 10**-0.5), rel=1e-12
    )


def test_hyperparams_to_casts_all_three():
    h = Hyperparams.full(2, 1e-3, 0.9, 1.0, dtype=F64)
    for cast in (
        h.to(torch.float32),
        h.to(dtype=torch.float32),
        h.to("cpu", torch.float32),
    ):
        assert [v.dtype for v in cast.values()] == [torch.float32] * 3
        assert cast.lr.tolist() == pytest.approx([1e-3] * 2)
