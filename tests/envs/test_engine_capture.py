"""The captured decision window (`capture`): refused off CUDA, equal to eager on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import InitRanges, draw_episode
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import make_family

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_capture_is_refused_off_cuda():
    with pytest.raises(ValueError, match=r"capture .* needs a CUDA device"):
        BatchedEngine(2, EnvSettings(device="cpu", capture=True))


def test_capture_and_compile_exclude_each_other():
    with pytest.raises(ValueError, match="capture and compile"):
        EnvSettings(device="cpu", capture=True, compile=True)


def _engine(device: str, capture: bool, n: int = 6, **family_kwargs):
    family = make_family("mlp_digits", **family_kwargs)
    settings = EnvSettings(
        device=device,
        capture=capture,
        decision_interval=3,
        init=InitRanges(lr=(1e-4, 1.0)),
    )
    rng = np.random.default_rng(3)
    episodes = [draw_episode(family, rng, settings.init) for _ in range(n)]
    engine = BatchedEngine(n, settings)
    engine.start(range(n), episodes)
    return engine, family, rng


def state_of(engine: BatchedEngine) -> dict[str, int]:
    """The storage address of every tensor a decision window reads or writes."""
    tensors = {
        "params": engine.flat_params,
        "pairs": engine._pairs,
        "prev_grad_norm": engine.prev_grad_norm,
        "step_count": engine.step_count,
        **{f"adam.{k}": v for k, v in vars(engine.adam).items()},
        **{f"buffer.{k}": v for k, v in engine.buffers.items()},
        **{f"tracker.{k}": v for k, v in vars(engine.tracker).items()},
    }
    return {k: v.data_ptr() for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def test_every_state_tensor_changes_in_place():
    """What a CUDA graph needs: a window writes into the tensors it was given."""
    kwargs = {"width": 16, "depth": 1, "dropout": 0.1, "batch_size": 32}
    engine, *_ = _engine("cpu", False, weight_decay=(0.0, 1e-2), **kwargs)
    engine.act(torch.zeros(6, 3))  # the first window allocates lazily
    before = state_of(engine)
    lr, beta1, clip = engine.hparams.values()
    rows = (engine.order.window(engine.k) + engine._row_offsets).flatten(1)
    engine._train_window(rows, lr, beta1, clip, engine.running)
    assert state_of(engine) == before


@cuda
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["plain", "dropout"])
def test_captured_windows_match_eager_ones_on_cuda(dropout):
    kwargs = {"width": 32, "depth": 2, "dropout": dropout, "batch_size": 64}
    kwargs |= {"horizon": (12, 20), "weight_decay": (0.0, 1e-2)}
    eager, family, eager_rng = _engine("cuda", False, **kwargs)
    captured, _, captured_rng = _engine("cuda", True, **kwargs)
    actions = np.random.default_rng(4)
    for _ in range(10):  # past the capture of both parities, and restarts
        action = torch.as_tensor(actions.uniform(-1, 1, (6, 3)), dtype=torch.float32)
        expected, got = eager.act(action), captured.act(action)
        for name in ("obs", "reward", "train_loss", "val_loss", "grad_norms"):
            torch.testing.assert_close(
                getattr(got, name), getattr(expected, name), msg=name
            )
        assert torch.equal(got.terminated, expected.terminated)
        assert torch.equal(got.truncated, expected.truncated)
        finished = (expected.terminated | expected.truncated).nonzero().flatten()
        for engine, rng in ((eager, eager_rng), (captured, captured_rng)):
            runs = finished.tolist()
            if runs:
                episodes = [
                    draw_episode(family, rng, engine.settings.init) for _ in runs
                ]
                engine.start(runs, episodes)
    torch.testing.assert_close(captured.flat_params, eager.flat_params)
