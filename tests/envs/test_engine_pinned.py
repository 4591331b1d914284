"""The engine's numbers, pinned bit for bit: a refactor must not move any run.

The frozen quality numbers in docs/BENCHMARKS.md depend on every run's data order,
losses and parameters staying exactly what they were. Two short seeded batched
episodes (dropout, weight decay, divergence and auto-restarts in one; BatchNorm,
float64 and a minibatch size that leaves a remainder in the other) are digested
window by window; the digests were recorded with the engine of commit 4e926b8,
before the per-step bookkeeping was fused.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from hyperpilot.envs.engine import BatchedEngine, MinibatchOrder
from hyperpilot.envs.episodes import InitRanges, draw_episode
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import make_family

SCENARIOS = {
    "dropout_decay_divergence": {
        "family": (
            "mlp_digits",
            {
                "width": 32,
                "depth": 2,
                "dropout": 0.1,
                "batch_size": 64,
                "weight_decay": (0.0, 1e-2),
                "horizon": (20, 40),
                "init_scale": (0.5, 2.0),
            },
        ),
        "n": 6,
        "windows": 14,
        "settings": {"decision_interval": 4, "init": InitRanges(lr=(1e-4, 1.0))},
    },
    "batchnorm_float64_remainder": {
        "family": (
            "resmlp_digits",
            {"width": 16, "depth": 1, "batch_size": 96, "horizon": (15, 25)},
        ),
        "n": 4,
        "windows": 10,
        "settings": {"decision_interval": 3, "dtype": "float64"},
    },
}


def digest(*tensors: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-256 of the tensors' bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_scenario(name: str) -> list[str]:
    """One digest per decision window, then one of the engine's final state."""
    spec = SCENARIOS[name]
    family_name, kwargs = spec["family"]
    family = make_family(family_name, **kwargs)
    settings = EnvSettings(device="cpu", **spec["settings"])
    rng = np.random.default_rng(7)
    actions = np.random.default_rng(8)
    n = spec["n"]

    def episodes(count: int) -> list:
        return [draw_episode(family, rng, settings.init) for _ in range(count)]

    engine = BatchedEngine(n, settings)
    digests = [digest(engine.start(range(n), episodes(n)))]
    for _ in range(spec["windows"]):
        action = torch.as_tensor(actions.uniform(-1, 1, (n, 3)), dtype=torch.float32)
        t = engine.act(action)
        digests.append(
            digest(
                t.obs,
                t.reward,
                t.terminated,
                t.truncated,
                t.train_loss,
                t.val_loss,
                t.grad_norm,
                t.grad_norms,
                t.grad_update_dot,
                *t.hparams.values(),
            )
        )
        finished = (t.terminated | t.truncated).nonzero().flatten().tolist()
        if finished:
            digests.append(digest(engine.start(finished, episodes(len(finished)))))
    digests.append(
        digest(
            engine.flat_params,
            engine.adam.exp_avg,
            engine.adam.exp_avg_sq,
            *engine.buffers.values(),
            engine.evaluate("test"),
        )
    )
    return digests


EXPECTED: dict[str, list[str]] = {
    "dropout_decay_divergence": [
        "df313c1551367a02",
        "21167ea939dd901e",
        "1d1d7f3556eaebf1",
        "1ceac4cf1c662bde",
        "4c41174df724e83f",
        "ed41ce923801b6ac",
        "35cabd22ea1b0596",
        "c54b50878ab42a34",
        "bbc1d9e059ae4f47",
        "6863b8c26b3aec55",
        "cc9b6b1a403c864e",
        "39c7cf144a6adc43",
        "ecce14dbb744ee32",
        "963725625fe74083",
        "995bbe2895ee6a1c",
        "038ad6fbb9df0baf",
        "7ef26a363778dde7",
        "02d2195aeefee95f",
        "ff60cc7faf79ccc0",
        "5ed7f2fc71efa652",
        "3d6475d4f72a7d4d",
        "4e07d505315432ff",
    ],
    "batchnorm_float64_remainder": [
        "2c71d49889d963a2",
        "1d8c32cc40ef2f10",
        "2ef600f4b092cf90",
        "a32a28b80c4da4e5",
        "0895c40a12882fea",
        "a80746fd5e5bac75",
        "bb68fb293589fa76",
        "e12e48a599f58d10",
        "d6940095eb27085f",
        "458b11bacb478886",
        "f6da6ce0052bfa96",
        "657a6a4be9e4c36a",
        "dce09a53067b9532",
        "224b2c5ca6fd0810",
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_batched_episodes_stay_bit_identical(name):
    digests = run_scenario(name)
    expected = EXPECTED[name]
    first_change = next(
        (i for i, (a, b) in enumerate(zip(digests, expected)) if a != b), None
    )
    assert first_change is None and len(digests) == len(expected), (
        f"{name}: the engine's numbers changed at digest {first_change}"
    )


def reference_order(seeds_and_restarts, n_rows, batch_size, steps):
    """Per run: a torch.Generator and randperm, as the engine drew orders at first."""
    n = len(seeds_and_restarts)
    generators = [torch.Generator() for _ in range(n)]
    perms = [None] * n
    position = [n_rows] * n
    out = []
    for step in range(steps):
        for run, restarts in enumerate(seeds_and_restarts):
            if step in restarts:
                generators[run].manual_seed(restarts[step])
                position[run] = n_rows
        rows = []
        for run in range(n):
            if position[run] + batch_size > n_rows:
                perms[run] = torch.randperm(n_rows, generator=generators[run])
                position[run] = 0
            rows.append(perms[run][position[run] : position[run] + batch_size])
            position[run] += batch_size
        out.append(torch.stack(rows))
    return out


@pytest.mark.parametrize(
    ("n_rows", "batch_size"),
    [(10, 3), (1024, 128), (700, 96), (5, 5), (2, 1)],
    ids=["tiny-remainder", "digits", "remainder", "one-batch", "two-rows"],
)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-run"])
def test_minibatch_order_matches_a_generator_per_run(n_rows, batch_size, batched):
    # Runs restart at different steps, with seeds up to 2**63 - 1 (data_seed range).
    seeds_and_restarts = [
        {0: 0},
        {0: 12345, 5: 2**63 - 1},
        {0: 2**40 + 3, 3: 7, 4: 99},
        {0: 2**32 + 1},
    ]
    steps = 12
    expected = reference_order(seeds_and_restarts, n_rows, batch_size, steps)
    order = MinibatchOrder(len(seeds_and_restarts), n_rows, batch_size, "cpu", batched)
    for step in range(steps):
        for run, restarts in enumerate(seeds_and_restarts):
            if step in restarts:
                order.restart(run, restarts[step])
        assert torch.equal(order.next(), expected[step]), f"step {step}"


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-run"])
@pytest.mark.parametrize("k", [1, 4, 10], ids=["k1", "k4", "k10"])
def test_a_window_of_minibatches_is_k_single_steps(k, batched):
    seeds = {0: 0, 1: 3, 2: 2**33}
    expected = reference_order([{0: s} for s in seeds.values()], 100, 7, 3 * k)
    order = MinibatchOrder(3, 100, 7, "cpu", batched)
    for run, seed in seeds.items():
        order.restart(run, seed)
    got = torch.cat([order.window(k) for _ in range(3)])
    assert torch.equal(got, torch.stack(expected))
