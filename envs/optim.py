"""Per-run gradient clipping and a batched Adam over flat `[N, P]` parameter buffers.

Each run's parameters are one row of P numbers, so every step is a handful of
whole-buffer tensor ops however many layers the model has. The functions match
their PyTorch counterparts run by run: `clip_by_global_norm` is
`torch.nn.utils.clip_grad_norm_` and `BatchedAdam.step` is `torch.optim.Adam`, or
`torch.optim.AdamW` with a per-run decoupled weight decay (no amsgrad), with every
hyperparameter a `[N]` tensor.
"""

from __future__ import annotations

import torch

# clip_grad_norm_ divides by (total_norm + 1e-6); we use the same constant.
CLIP_EPS = 1e-6


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[N]` dot products of the rows of two `[N, P]` tensors."""
    return torch.linalg.vecdot(a, b)


def clip_by_global_norm(
    grad: torch.Tensor, max_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scales each run's gradient row so its 2-norm is at most `max_norm`.

    Args:
        grad: `[N, P]` gradients; scaled in place.
        max_norm: `[N]` thresholds.

    Returns:
        The clipped gradients, the `[N]` norms before clipping, and the `[N]` factors
        they were scaled by (below 1 where a run was clipped).
    """
    norm = torch.linalg.vector_norm(grad, dim=1)
    coefficient = torch.clamp(max_norm / (norm + CLIP_EPS), max=1.0)
    grad.mul_(coefficient[:, None])
    return grad, norm, coefficient


class BatchedAdam:
    """Adam state for N runs whose parameters are the rows of one `[N, P]` buffer."""

    def __init__(
        self, params: torch.Tensor, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.beta2 = beta2
        self.eps = eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        # Work buffers, reused every step: large CPU allocations are not cached, and
        # allocating fresh [N, P] tensors each step cost page faults.
        self._denom = torch.empty_like(params)
        self._update = torch.zeros_like(params)
        self._decay: torch.Tensor | None = None  # allocated at the first decay
        self.steps = torch.zeros(len(params), dtype=torch.float64, device=params.device)

    def reset_runs(self, runs: torch.Tensor) -> None:
        """Clears the moments and step counts of the runs in `runs` (`[N]` bool)."""
        self.exp_avg[runs] = 0.0
        self.exp_avg_sq[runs] = 0.0
        self.steps[runs] = 0.0

    def step(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        beta1: torch.Tensor,
        active: torch.Tensor,
        weight_decay: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One Adam step for the runs in `active` (`[N]` bool); the others stand still.

        Follows `torch.optim.Adam`'s single-tensor update: `beta1` may change between
        steps, and the bias correction uses the current `beta1`, as PyTorch does.
        With `weight_decay`, it is `torch.optim.AdamW`: each active run's parameters
        first shrink by `1 - lr * weight_decay`, then take the Adam step. A run whose
        weight decay is 0 steps exactly as without it.

        Args:
            params: `[N, P]` parameters, updated in place.
            grad: `[N, P]` (clipped) gradients.
            lr: `[N]` learning rates.
            beta1: `[N]` first-moment decays.
            active: `[N]` bool, the runs that step.
            weight_decay: `[N]` decoupled weight decays, or None for plain Adam.

        Returns:
            The `[N, P]` parameter change of this step, decay included (a buffer that
            the next step overwrites).
        """
        self.steps += active.to(self.steps.dtype)
        steps = self.steps.clamp(min=1.0)
        dtype = params.dtype
        bias_correction1 = (1.0 - beta1.to(torch.float64).pow(steps)).to(dtype)
        bias_correction2_sqrt = (1.0 - self.beta2**steps).sqrt().to(dtype)
        step_size = torch.where(active, lr / bias_correction1, torch.zeros_like(lr))
        decay = None
        if weight_decay is not None:
            shrink = torch.where(active, lr * weight_decay, torch.zeros_like(lr))
            shrink = shrink[:, None]
            if self._decay is None:
                self._decay = torch.empty_like(params)
            decay = torch.mul(params, shrink, out=self._decay)
            params.mul_(1.0 - shrink)  # as torch.optim.AdamW: p.mul_(1 - lr * wd)
        weight = (1.0 - beta1)[:, None]
        # Reading `active` back waits for the device: take the fast path on the CPU only.
        if params.device.type == "cpu" and bool(active.all()):
            self.exp_avg.lerp_(grad, weight)
            self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        else:  # a diverged run's gradient may be NaN: keep its moments as they were
            keep = active[:, None]
            new_avg = self.exp_avg.lerp(grad, weight)
            new_sq = self.exp_avg_sq * self.beta2 + (1 - self.beta2) * grad * grad
            self.exp_avg.copy_(torch.where(keep, new_avg, self.exp_avg))
            self.exp_avg_sq.copy_(torch.where(keep, new_sq, self.exp_avg_sq))
        denom = torch.sqrt(self.exp_avg_sq, out=self._denom)
        denom.div_(bias_correction2_sqrt[:, None]).add_(self.eps)
        update = torch.div(self.exp_avg, denom, out=self._update)
        update.mul_(-step_size[:, None])
        params.add_(update)
        if decay is not None:
            update.sub_(decay)
        return update
