"""The batched engine's clip + Adam step against torch.optim.Adam + clip_grad_norm_."""

import numpy as np
import pytest
import torch

from hyperpilot.envs.actions import Hyperparams
from hyperpilot.envs.engine import BatchedEngine, MinibatchOrder
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.optim import BatchedAdam
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import make_family

NORM = "helpers:NormFamily"
F64 = torch.float64

# Per run: three (lr, beta1, clip) settings that change every 10 steps. The last run
# is aggressive (large lr, heavy clipping); in float32 its rounding differences are
# amplified chaotically (Adam turns tiny gradients into +-lr steps), so float32
# parity is checked on practical settings and the aggressive run in float64.
SCHEDULES = [
    [(1e-3, 0.9, 1.0), (3e-3, 0.8, 0.5), (1e-4, 0.95, 10.0)],
    [(3e-4, 0.99, 0.2), (1e-2, 0.9, 100.0), (1e-3, 0.6, 0.05)],
    [(3e-2, 0.5, 0.05), (1e-3, 0.99, 100.0), (1e-2, 0.9, 0.2)],
]


def runs_for(dtype):
    return SCHEDULES if dtype == "float64" else SCHEDULES[:2]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


FAMILIES = [
    ("mlp_digits", {}),
    ("cnn_digits", {}),
    ("quadratic_2d", {}),
    (NORM, {"kind": "mlp"}),  # BatchNorm1d: buffers, train and eval modes
    (NORM, {"kind": "cnn"}),  # BatchNorm2d
    (NORM, {"dropout": 0.3}),  # SeededDropout: the same masks as a plain loop
    (NORM, {"weight_decay": [0.05, 0.5]}),  # AdamW, a weight decay per run
]
FAMILY_IDS = [
    "mlp_digits",
    "cnn_digits",
    "quadratic_2d",
    "batchnorm1d",
    "batchnorm2d",
    "dropout",
    "weight_decay",
]


def reference_run(instance, schedule, dtype, decisions, k, device="cpu"):
    """The same run with torch.optim.Adam(W) and clip_grad_norm_ in a plain loop."""
    model = instance.model.to(device, dtype).train()
    if instance.weight_decay:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=1.0, eps=1e-8, weight_decay=instance.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1.0, eps=1e-8)
    order = MinibatchOrder(1, len(instance.x_train), instance.batch_size, device)
    order.restart(0, instance.data_seed)
    losses = []
    for decision in range(decisions):
        lr, beta1, clip = schedule[decision % 3]
        for group in optimizer.param_groups:
            group["lr"], group["betas"] = lr, (beta1, 0.999)
        for _ in range(k):
            index = order.next()[0]
            x = instance.x_train.to(device)[index].to(dtype)
            y = instance.y_train.to(device)[index]
            y = y.to(dtype) if y.is_floating_point() else y
            loss = instance.loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            losses.append(float(loss.detach()))
    return model.eval(), losses


def eval_losses(model, instance, dtype, device):
    """Validation loss and test accuracy of `model` as it stands (its own mode)."""
    with torch.no_grad():
        val = instance.loss(model(instance.x_val.to(device, dtype)), instance.y_val)
        output = model(instance.x_test.to(device, dtype))
    share = (
        None
        if instance.accuracy is None
        else instance.accuracy(output, instance.y_test)
    )
    return val, share


@pytest.mark.parametrize(("family", "kwargs"), FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [("float64", 1e-10, 1e-12), ("float32", 1e-4, 1e-6)],
    ids=["float64", "float32"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_engine_matches_torch_adam_with_clipping(
    family, kwargs, dtype, rtol, atol, device
):
    torch_dtype = getattr(torch, dtype)
    k, decisions = 10, 10
    fam = make_family(family, horizon=k * decisions, **kwargs)
    rng = np.random.default_rng(0)
    schedules = runs_for(dtype)
    instances = [fam.sample(rng) for _ in schedules]
    engine = BatchedEngine(len(schedules), EnvSettings(device=device, dtype=dtype))
    episodes = [Episode(inst, 1e-3, 0.9, 1.0, True) for inst in instances]
    engine.start(range(len(schedules)), episodes)
    window_losses = []
    for decision in range(decisions):
        values = [s[decision % 3] for s in schedules]
        hparams = Hyperparams(
            *(torch.tensor(v, dtype=torch_dtype, device=device) for v in zip(*values))
        )
        window_losses.append(engine.advance(hparams).train_loss)
    assert not engine.running.any()  # horizon spent, nothing diverged
    val_loss, test_accuracy = engine.evaluate("val"), engine.accuracy("test")
    for run, instance in enumerate(instances):
        model, losses = reference_run(
            instance, schedules[run], torch_dtype, decisions, k, device
        )
        means = torch.tensor(losses, dtype=torch.float64).reshape(decisions, k).mean(1)
        engine_means = torch.stack([w[run] for w in window_losses]).cpu()
        torch.testing.assert_close(engine_means, means, rtol=rtol, atol=atol)
        for name, param in model.named_parameters():
            torch.testing.assert_close(
                engine.params[name][run], param.detach(), rtol=rtol, atol=atol
            )
        for name, buffer in model.named_buffers():
            torch.testing.assert_close(
                engine.buffers[name][run], buffer, rtol=rtol, atol=atol
            )
        val, share = eval_losses(model, instance, torch_dtype, device)
        torch.testing.assert_close(val_loss[run], val, rtol=rtol, atol=atol)
        if share is not None:
            torch.testing.assert_close(test_accuracy[run], share)


def test_buffers_are_trained_in_train_mode_and_read_in_eval_mode():
    """The BatchNorm parity above has teeth: the statistics move and modes differ."""
    instance = make_family(NORM, horizon=20).sample(np.random.default_rng(0))
    engine = BatchedEngine(1, EnvSettings(device="cpu", dtype="float64"))
    engine.start([0], [Episode(instance, 1e-2, 0.9, 10.0, True)])
    engine.advance(engine.hparams)
    model = instance.model.double()
    statistics = {"1.running_mean": 0.0, "1.running_var": 1.0}
    for name, start in statistics.items():
        assert torch.equal(
            getattr(model[1], name[2:]), torch.full((8,), start, dtype=F64)
        )
        moved = engine.buffers[name][0] - start
        assert moved.abs().min() > 1e-3, name  # the inputs have mean 3, std 2
    assert int(engine.buffers["1.num_batches_tracked"][0]) == 10
    eval_val = engine.evaluate("val")[0]
    for name, param in model.named_parameters():
        param.data.copy_(engine.params[name][0])
    for name, buffer in model.named_buffers():
        buffer.copy_(engine.buffers[name][0])
    train_val, _ = eval_losses(model.train(), instance, F64, "cpu")
    assert not torch.isclose(eval_val, train_val, rtol=1e-3)


def test_adamw_steps_by_hand():
    """Two AdamW steps on 2 elements, written out; lr and beta1 change in between.

    Run 0 decays, run 1 has no decay (plain Adam), run 2 is inactive at step 2.
    """
    p0, g1, g2 = [1.0, -2.0], [0.5, 0.1], [-0.2, 0.3]
    (lr1, b1), (lr2, b2), beta2, eps, wd = (0.1, 0.9), (0.05, 0.8), 0.999, 1e-8, 0.5

    def by_hand(decay):
        p, m, v = list(p0), [0.0, 0.0], [0.0, 0.0]
        for t, (g, lr, beta1) in enumerate(((g1, lr1, b1), (g2, lr2, b2)), 1):
            for i in range(2):
                p[i] *= 1 - lr * decay
                m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                v[i] = beta2 * v[i] + (1 - beta2) * g[i] ** 2
                denom = (v[i] / (1 - beta2**t)) ** 0.5 + eps
                p[i] -= lr / (1 - beta1**t) * m[i] / denom
        return p

    params = torch.tensor([p0] * 3, dtype=F64)
    adam = BatchedAdam(params, beta2, eps)
    decays = torch.tensor([wd, 0.0, wd], dtype=F64)
    for g, lr, beta1, active in (
        (g1, lr1, b1, [True, True, True]),
        (g2, lr2, b2, [True, True, False]),
    ):
        adam.step(
            params,
            torch.tensor([g] * 3, dtype=F64),
            torch.full((3,), lr, dtype=F64),
            torch.full((3,), beta1, dtype=F64),
            torch.tensor(active),
            decays,
        )
    expected = torch.tensor([by_hand(wd), by_hand(0.0)], dtype=F64)
    torch.testing.assert_close(params[:2], expected, rtol=1e-14, atol=0)
    # after one step only, run 2 matches step 1 by hand: (0.95, -1.9) - 0.1 * ~1
    step1 = [0.95 - 0.1 * 0.5 / (0.5 + eps), -1.9 - 0.1 * 0.1 / (0.1 + eps)]
    torch.testing.assert_close(params[2], torch.tensor(step1, dtype=F64))
    # and torch.optim.AdamW agrees
    for decay, row in ((wd, 0), (0.0, 1)):
        param = torch.tensor(p0, dtype=F64, requires_grad=True)
        optimizer = torch.optim.AdamW(
            [param], lr=lr1, betas=(b1, beta2), eps=eps, weight_decay=decay
        )
        for g, lr, beta1 in ((g1, lr1, b1), (g2, lr2, b2)):
            optimizer.param_groups[0].update(lr=lr, betas=(beta1, beta2))
            param.grad = torch.tensor(g, dtype=F64)
            optimizer.step()
        torch.testing.assert_close(params[row], param.detach(), rtol=1e-14, atol=0)


def test_the_returned_update_is_the_whole_parameter_change():
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(2, 5, dtype=F64, generator=generator)
    before = params.clone()
    adam = BatchedAdam(params)
    update = adam.step(
        params,
        torch.randn(2, 5, dtype=F64, generator=generator),
        torch.tensor([1e-2, 1e-2], dtype=F64),
        torch.tensor([0.9, 0.9], dtype=F64),
        torch.tensor([True, True]),
        torch.tensor([0.3, 0.0], dtype=F64),
    )
    torch.testing.assert_close(update, params - before, rtol=1e-12, atol=1e-15)
