"""Known answers for per-run clipping and the batched Adam step.

The references are `torch.nn.utils.clip_grad_norm_` and `torch.optim.Adam` with one
parameter group per run (so each run has its own lr and beta1, changing every few
steps), and a few steps worked out by hand.
"""

import math

import pytest
import torch

from hyperpilot.envs.optim import CLIP_EPS, BatchedAdam, clip_by_global_norm, row_dot

F64 = torch.float64


def test_row_dot():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], dtype=F64)
    b = torch.tensor([[4.0, 5.0, 6.0], [2.0, 3.0, 9.0]], dtype=F64)
    assert row_dot(a, b).tolist() == [32.0, -2.0]


def test_clip_by_global_norm_by_hand():
    grad = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [6.0, 8.0]], dtype=F64)
    max_norm = torch.tensor([1.0, 1.0, 1.0, 10.0], dtype=F64)
    clipped, norm, factor = clip_by_global_norm(grad, max_norm)
    assert norm.tolist() == pytest.approx([5.0, 0.5, 0.0, 10.0], abs=1e-15)
    # 1 / (5 + 1e-6) below 1: clipped; 0.5 and 0 are under the threshold; a norm
    # exactly at it is scaled by 10 / (10 + 1e-6), as clip_grad_norm_ does
    expected = [1 / (5 + CLIP_EPS), 1.0, 1.0, 10 / (10 + CLIP_EPS)]
    assert factor.tolist() == pytest.approx(expected, rel=1e-15)
    assert clipped is grad  # in place
    assert clipped[0].tolist() == pytest.approx(
        [3 / (5 + 1e-6), 4 / (5 + 1e-6)], rel=1e-15
    )
    assert clipped[1].tolist() == pytest.approx([0.3, 0.4], rel=1e-15)
    assert CLIP_EPS == 1e-6


def test_clip_matches_clip_grad_norm_on_several_tensors():
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (2,), (4,)]
    grads = [torch.randn(2, *s, generator=generator, dtype=F64) * 5 for s in shapes]
    flat = torch.cat([g.reshape(2, -1) for g in grads], dim=1)
    max_norm = torch.tensor([2.0, 100.0], dtype=F64)
    clipped, norm, _ = clip_by_global_norm(flat.clone(), max_norm)
    for run in range(2):
        params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g[run].clone()
        total = torch.nn.utils.clip_grad_norm_(params, float(max_norm[run]))
        assert float(norm[run]) == pytest.approx(float(total), rel=1e-14)
        torch.testing.assert_close(
            clipped[run],
            torch.cat([p.grad.flatten() for p in params]),
            rtol=1e-14,
            atol=0,
        )


def test_the_first_adam_steps_by_hand():
    # One run, one parameter, gradient 2 then -1, lr 0.1, beta1 0.5, beta2 0.75, eps 0.
    params = torch.tensor([[1.0]], dtype=F64)
    adam = BatchedAdam(params, beta2=0.75, eps=0.0)
    lr, beta1, on = torch.tensor([0.1], dtype=F64), torch.tensor([0.5], dtype=F64), torch.tensor([True])  # fmt: skip
    update = adam.step(params, torch.tensor([[2.0]], dtype=F64), lr, beta1, on)
    # m = 1, v = 1; m_hat = 1 / 0.5 = 2, v_hat = 1 / 0.25 = 4: step = 0.1 * 2 / 2
    assert update.tolist() == [[-0.1]] and params.tolist() == [[0.9]]
    adam.step(params, torch.tensor([[-1.0]], dtype=F64), lr, beta1, on)
    # m = 0.5 - 0.5 = 0: no move whatever v is
    assert params.tolist() == [[0.9]]
    assert adam.exp_avg.tolist() == [[0.0]]
    # v = 0.75 * 1 + 0.25 * 1 = 1
    assert adam.exp_avg_sq.tolist() == [[1.0]]
    assert adam.steps.tolist() == [2.0]
    adam.step(params, torch.tensor([[4.0]], dtype=F64), lr, beta1, on)
    # m = 2, v = 0.75 + 4 = 4.75; bias corrections 1 - 0.5^3 = 0.875 and
    # 1 - 0.75^3 = 0.578125: step = 0.1 * (2 / 0.875) / sqrt(4.75 / 0.578125)
    expected = 0.9 - 0.1 * (2 / 0.875) / math.sqrt(4.75 / 0.578125)
    assert float(params[0, 0]) == pytest.approx(expected, rel=1e-15)


def test_eps_is_added_after_the_square_root():
    params = torch.zeros(1, 1, dtype=F64)
    adam = BatchedAdam(params, beta2=0.999, eps=0.5)
    adam.step(
        params,
        torch.tensor([[1.0]], dtype=F64),
        torch.tensor([1.0], dtype=F64),
        torch.tensor([0.9], dtype=F64),
        torch.tensor([True]),
    )
    # m_hat = 1, v_hat = 1: 1 / (1 + 0.5)
    assert float(params[0, 0]) == pytest.approx(-1 / 1.5, rel=1e-12)


# Per step: (lr, beta1, clip) of run 0 and of run 1, and whether run 1 is active.
SCHEDULE = [
    ((1e-2, 0.9, 1.0), (1e-3, 0.5, 100.0), True),
    ((1e-2, 0.9, 1.0), (1e-3, 0.5, 100.0), True),
    ((3e-3, 0.8, 0.5), (2e-2, 0.95, 0.1), True),
    ((3e-3, 0.8, 0.5), (2e-2, 0.95, 0.1), False),  # run 1 stands still
    ((5e-2, 0.99, 50.0), (4e-3, 0.7, 3.0), True),
    ((5e-2, 0.99, 50.0), (4e-3, 0.7, 3.0), False),
    ((1e-3, 0.6, 0.2), (1e-1, 0.9, 0.5), True),
    ((1e-3, 0.6, 0.2), (1e-1, 0.9, 0.5), True),
]
SHAPES = [(3, 2), (2,), (1,)]


@pytest.mark.parametrize("beta2", [0.999, 0.9])
def test_batched_adam_matches_torch_adam_with_a_group_per_run(beta2):
    """Two runs as two param groups of one torch Adam: lrs in a changing ratio."""
    generator = torch.Generator().manual_seed(1)
    start = [[torch.randn(s, generator=generator, dtype=F64) for s in SHAPES] for _ in range(2)]  # fmt: skip
    reference = [[p.clone().requires_grad_() for p in run] for run in start]
    optimizer = torch.optim.Adam(
        [{"params": reference[0]}, {"params": reference[1]}],
        lr=1.0,
        betas=(0.9, beta2),
        eps=1e-8,
    )
    params = torch.stack([torch.cat([p.flatten() for p in run]) for run in start])
    adam = BatchedAdam(params, beta2=beta2, eps=1e-8)
    for settings_0, settings_1, run_1_active in SCHEDULE:
        grads = [[torch.randn(s, generator=generator, dtype=F64) * 3 for s in SHAPES] for _ in range(2)]  # fmt: skip
        for run, (lr, beta1, clip) in enumerate((settings_0, settings_1)):
            group = optimizer.param_groups[run]
            group["lr"], group["betas"] = lr, (beta1, beta2)
            for p, g in zip(reference[run], grads[run]):
                # an inactive run gets no gradient: torch's Adam leaves it alone
                p.grad = g.clone() if run == 0 or run_1_active else None
            if run == 0 or run_1_active:
                torch.nn.utils.clip_grad_norm_(reference[run], clip)
        optimizer.step()

        flat = torch.stack([torch.cat([g.flatten() for g in run]) for run in grads])
        columns = list(zip(settings_0, settings_1))
        lr, beta1, clip = (torch.tensor(c, dtype=F64) for c in columns)
        flat, _, _ = clip_by_global_norm(flat, clip)
        active = torch.tensor([True, run_1_active])
        adam.step(params, flat, lr, beta1, active)

    for run in range(2):
        expected = torch.cat([p.detach().flatten() for p in reference[run]])
        torch.testing.assert_close(params[run], expected, rtol=1e-12, atol=1e-14)
        state = [optimizer.state[p] for p in reference[run]]
        exp_avg = torch.cat([s["exp_avg"].flatten() for s in state])
        torch.testing.assert_close(adam.exp_avg[run], exp_avg, rtol=1e-12, atol=1e-14)
        assert float(adam.steps[run]) == float(state[0]["step"])
    assert adam.steps.tolist() == [8.0, 6.0]


def test_an_inactive_run_keeps_its_state_even_with_a_nan_gradient():
    params = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    adam = BatchedAdam(params)
    lr = torch.tensor([0.1, 0.1], dtype=F64)
    beta1 = torch.tensor([0.9, 0.9], dtype=F64)
    grad = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64)
    adam.step(params, grad, lr, beta1, torch.tensor([True, True]))
    before = [t.clone() for t in (params, adam.exp_avg, adam.exp_avg_sq)]
    bad = torch.tensor([[0.5, 0.5], [math.nan, math.inf]], dtype=F64)
    update = adam.step(params, bad, lr, beta1, torch.tensor([True, False]))
    assert update[1].tolist() == [0.0, 0.0]
    for now, then in zip((params, adam.exp_avg, adam.exp_avg_sq), before):
        assert torch.equal(now[1], then[1])
        assert not torch.equal(now[0], then[0])
    assert adam.steps.tolist() == [2.0, 1.0]


def test_a_run_inactive_from_the_start_does_not_move():
    params = torch.tensor([[1.0], [1.0]], dtype=F64)
    adam = BatchedAdam(params)
    lr = torch.tensor([0.1, 0.1], dtype=F64)
    beta1 = torch.tensor([0.9, 0.9], dtype=F64)
    adam.step(
        params, torch.ones(2, 1, dtype=F64), lr, beta1, torch.tensor([True, False])
    )
    assert params[:, 0].tolist() == pytest.approx(
        [1 - 0.1 / (1 + 1e-8), 1.0], rel=1e-15
    )
    assert adam.steps.tolist() == [1.0, 0.0]


def test_reset_runs_clears_only_those_runs():
    params = torch.ones(2, 2, dtype=F64)
    adam = BatchedAdam(params)
    ones = torch.ones(2, dtype=F64)
    adam.step(params, torch.ones(2, 2, dtype=F64), 0.1 * ones, 0.9 * ones, torch.tensor([True, True]))  # fmt: skip
    adam.reset_runs(torch.tensor([True, False]))
    assert adam.steps.tolist() == [0.0, 1.0]
    assert adam.exp_avg[0].tolist() == [0.0, 0.0]
    assert adam.exp_avg_sq[0].tolist() == [0.0, 0.0]
    assert adam.exp_avg[1].tolist() == pytest.approx([0.1, 0.1])
    # the reset run starts over: its next step is again exactly lr (m_hat / sqrt(v_hat) = 1)
    before = params.clone()
    adam.step(params, torch.ones(2, 2, dtype=F64), 0.1 * ones, 0.9 * ones, torch.tensor([True, True]))  # fmt: skip
    assert (before[0] - params[0]).tolist() == pytest.approx([0.1, 0.1], rel=1e-6)
