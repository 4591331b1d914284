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


def rows_like_vectors(fn, *args: torch.Tensor | float) -> torch.Tensor:
    """`fn` on `[K, N]` tensors, each row computed exactly as `fn` on an `[N]` row.

    PyTorch's CPU kernels compute the elements of a vector in SIMD lanes but its
    tail (the last `numel % lanes`) one by one, and the two may differ in the last
    bit for functions such as `pow`. Writing into rows of a padded buffer keeps
    each row's tail a tail. Where the tensor is large enough for the kernel to be
    split between threads (32,768 elements), rows are computed one at a time.
    """
    shape = torch.broadcast_shapes(
        *(a.shape for a in args if isinstance(a, torch.Tensor))
    )
    like = next(a for a in args if isinstance(a, torch.Tensor) and a.shape == shape)
    k, n = shape
    out = like.new_empty(k, n + 1)[:, :n]
    if like.device.type == "cpu" and k * (n + 1) > 32_768:
        for row in range(k):
            fn(*(a[row] if _is_table(a, k) else a for a in args), out=out[row])
    else:
        fn(*args, out=out)
    return out


def _is_table(a: torch.Tensor | float, k: int) -> bool:
    return isinstance(a, torch.Tensor) and a.dim() == 2 and a.shape[0] == k


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

    def window_coefficients(
        self, lr: torch.Tensor, beta1: torch.Tensor, k: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The `[N, 1]` negated step sizes and `sqrt(bias_correction2)` of K steps.

        Exactly what `step` computes for a run that stays active through the
        window (its step count then grows by one per step). A run that stops
        mid-window takes a step size of -0.0 from the caller, so its (other)
        bias correction only scales a zero: the same parameters either way.
        """
        ahead = torch.arange(1, k + 1, dtype=torch.float64, device=lr.device)
        steps = (self.steps + ahead[:, None]).clamp(min=1.0)
        dtype = lr.dtype
        beta1 = beta1.to(torch.float64)
        bias_correction1 = (1.0 - rows_like_vectors(torch.pow, beta1, steps)).to(dtype)
        bias_correction2_sqrt = (
            (1.0 - rows_like_vectors(torch.pow, self.beta2, steps)).sqrt().to(dtype)
        )
        negated = -(lr / bias_correction1)
        return list(negated[:, :, None].unbind(0)), list(
            bias_correction2_sqrt[:, :, None].unbind(0)
        )

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
        shrink = None
        if weight_decay is not None:
            shrink = torch.where(active, lr * weight_decay, torch.zeros_like(lr))
            shrink = shrink[:, None]
        return self.apply(
            params,
            grad,
            -step_size[:, None],
            bias_correction2_sqrt[:, None],
            (1.0 - beta1)[:, None],
            active,
            shrink,
            self._update,
        )

    def apply(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        negated_step: torch.Tensor,
        bias_correction2_sqrt: torch.Tensor,
        weight: torch.Tensor,
        active: torch.Tensor,
        shrink: torch.Tensor | None,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """The update of `step` from its coefficients (all `[N, 1]` but `active`).

        Args:
            params: `[N, P]` parameters, updated in place.
            grad: `[N, P]` (clipped) gradients.
            negated_step: `-lr / bias_correction1`, -0.0 where a run stands still.
            bias_correction2_sqrt: `sqrt(1 - beta2**step)`.
            weight: `1 - beta1`.
            active: `[N]` bool, the runs whose moments move.
            shrink: `lr * weight_decay` (0 where inactive), or None.
            out: `[N, P]` buffer the update is written to.

        Returns:
            `out`, the parameter change of this step, decay included.
        """
        decay = None
        if shrink is not None:
            if self._decay is None:
                self._decay = torch.empty_like(params)
            decay = torch.mul(params, shrink, out=self._decay)
            params.mul_(1.0 - shrink)  # as torch.optim.AdamW: p.mul_(1 - lr * wd)
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
        denom.div_(bias_correction2_sqrt).add_(self.eps)
        update = torch.div(self.exp_avg, denom, out=out)
        update.mul_(negated_step)
        params.add_(update)
        if decay is not None:
            update.sub_(decay)
        return update
