"""PilotCallback in PyTorch Lightning: the same decisions as the Pilot in a plain loop."""

import copy
import csv

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from hyperpilot.agents.pilot import Pilot  # noqa: E402
from hyperpilot.integrations.lightning import PilotCallback  # noqa: E402

STEPS, BATCH, CLIP = 40, 16, 0.5


def _data(seed=0, n=64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = torch.tanh(x @ torch.randn(4, 1, generator=generator))
    return x, y


def _net(seed=0):
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return net


X, Y = _data()
XV, YV = _data(seed=1, n=32)


def _reference(accumulate=1, with_val=True):
    """The README's plain loop on Lightning's data order (sequential batches)."""
    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)

    def val_fn():
        return float(nn.functional.mse_loss(net(XV), YV))

    pilot = Pilot.load("default").attach(
        optimizer, STEPS, val_fn=val_fn if with_val else None, clip=CLIP
    )
    micro, lrs, losses = BATCH // accumulate, [], []
    batches = iter(_batches(micro))
    for _ in range(STEPS):
        optimizer.zero_grad()
        total = 0.0
        for _ in range(accumulate):
            xb, yb = next(batches)
            loss = nn.functional.mse_loss(net(xb), yb) / accumulate
            loss.backward()
            total = total + loss.detach()
        pilot.step(total)
        values = pilot.hyperparameters
        lrs.append((optimizer.param_groups[0]["lr"], values["beta1"], values["clip"]))
        losses.append(float(total))
        optimizer.step()
    return np.array(lrs), np.array(losses), net


def _batches(size):
    while True:
        for start in range(0, len(X), size):
            yield X[start : start + size], Y[start : start + size]


class Module(pl.LightningModule):
    def __init__(self, scheduler=None, net_seed=0):
        super().__init__()
        self.net = _net(net_seed)
        self.scheduler = scheduler
        self.losses = []

    def training_step(self, batch, batch_idx):
        xb, yb = batch
        return nn.functional.mse_loss(self.net(xb), yb)

    def validation_step(self, batch, batch_idx):
        xb, yb = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(xb), yb))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}


class Recorder(pl.Callback):
    """lr, beta1 and clip of each optimizer step, after the pilot's callback ran."""

    def __init__(self, pilot):
        self.pilot = pilot
        self.lrs, self.losses = [], []
        self._loss = 0.0

    def on_before_backward(self, trainer, pl_module, loss):
        self._loss += float(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        values = self.pilot.hyperparameters
        lr = optimizer.param_groups[0]["lr"]
        self.lrs.append((lr, values["beta1"], values["clip"]))
        self.losses.append(self._loss)
        self._loss = 0.0


def _loader(x, y, size):
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=size, shuffle=False)


def _fit(module=None, accumulate=1, steps=STEPS, ckpt_path=None, callbacks=(), **kw):
    module = module or Module()
    callback = kw.pop("pilot_callback", None) or PilotCallback("default", clip=CLIP)
    recorder = Recorder(callback.pilot)
    options = {
        "max_steps": steps,
        "accumulate_grad_batches": accumulate,
        "val_check_interval": 10 * accumulate,
        "check_val_every_n_epoch": None,
        "num_sanity_val_steps": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(kw)
    trainer = pl.Trainer(callbacks=[callback, recorder, *callbacks], **options)
    trainer.fit(
        module,
        _loader(X, Y, BATCH // accumulate),
        _loader(XV, YV, len(XV)),
        ckpt_path=ckpt_path,
    )
    return np.array(recorder.lrs), np.array(recorder.losses), callback, module


@pytest.mark.parametrize("accumulate", [1, 2], ids=["plain", "accumulate-2"])
def test_lightning_matches_the_plain_loop(accumulate):
    lrs, losses, _ = _reference(accumulate)
    got_lrs, got_losses, callback, _ = _fit(accumulate=accumulate)
    np.testing.assert_allclose(got_lrs, lrs, rtol=1e-6)
    np.testing.assert_allclose(got_losses, losses, rtol=1e-5)
    assert len(set(lrs[:, 0].tolist())) > 2  # the pilot moved the lr at its decisions
    assert callback.pilot.state_dict()["tracker"]["val_available"].all()


def test_without_a_whole_first_validation_the_pilot_runs_without(recwarn):
    lrs, _, _ = _reference(with_val=False)
    got_lrs, _, callback, _ = _fit(num_sanity_val_steps=0)
    np.testing.assert_allclose(got_lrs, lrs, rtol=1e-6)
    assert any("runs without validation" in str(w.message) for w in recwarn)
    assert not callback.pilot.state_dict()["tracker"]["val_available"].any()


def test_a_scheduler_is_warned_about_and_overridden():
    lrs, _, _ = _reference()
    scheduler = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)  # noqa: E731
    with pytest.warns(UserWarning, match="StepLR.*has no effect"):
        got_lrs, _, _, module = _fit(Module(scheduler=scheduler))
    np.testing.assert_allclose(got_lrs, lrs, rtol=1e-6)
    # and what loggers read between steps is the pilot's lr, not the scheduler's
    optimizer = module.trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[-1, 0], rel=1e-6)


def test_lightning_clipping_is_refused():
    with pytest.raises(ValueError, match="gradient_clip_val"):
        _fit(gradient_clip_val=1.0, steps=2)


def test_a_resumed_run_makes_the_uninterrupted_decisions(tmp_path):
    lrs, losses, _, _ = _fit()
    # 4 batches an epoch: the checkpoint after epoch 5 is at step 20, a decision
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_top_k=-1, every_n_epochs=5, save_on_train_epoch_end=True
    )

    class Interrupt(pl.Callback):  # as a kill after the checkpoint would
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.global_step == 20

    _fit(callbacks=[Interrupt(), checkpoint], enable_checkpointing=True)
    (path,) = tmp_path.glob("*step=20.ckpt")
    resumed_lrs, resumed_losses, callback, _ = _fit(
        Module(net_seed=1), ckpt_path=str(path)
    )
    np.testing.assert_allclose(resumed_lrs, lrs[20:], rtol=1e-6)
    np.testing.assert_allclose(resumed_losses, losses[20:], rtol=1e-5)
    assert callback.pilot.steps_done == STEPS


class _Overflow(Module):
    """Leaves an inf in a scaled gradient at step 5, as an fp16 overflow would."""

    def on_after_backward(self):
        if self.trainer.global_step == 5:
            self.net[0].weight.grad[0, 0] = float("inf")


def test_a_skipped_amp_step_is_no_divergence():
    from lightning.pytorch.plugins import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module = _Overflow()
    before = {}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5 and not before:
                before.update(copy.deepcopy(pl_module.net.state_dict()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if before and "checked" not in before:  # the skipped step: no update
                for name, value in pl_module.net.state_dict().items():
                    assert torch.equal(value, before[name]), name
                before["checked"] = True

    callback = PilotCallback("default", clip=CLIP, early_stop=True)
    _fit(module, plugins=[plugin], pilot_callback=callback, callbacks=[Watch()])
    assert before.get("checked")
    assert not callback.pilot.diverged and callback.pilot.steps_done == STEPS


def test_bf16_autocast_runs_and_the_values_are_logged(tmp_path):
    callback = PilotCallback("default", clip=CLIP)
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    lrs, losses, _, _ = _fit(
        precision="bf16-mixed", pilot_callback=callback, logger=logger
    )
    assert np.isfinite(losses).all() and len(set(lrs[:, 0].tolist())) > 2
    assert not callback.pilot.diverged
    (metrics,) = tmp_path.glob("run/*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("pilot/lr")]
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30]
    logged = [float(r["pilot/lr"]) for r in rows]
    np.testing.assert_allclose(logged, lrs[::10, 0], rtol=1e-6)
    assert all(r["pilot/beta1"] and r["pilot/clip"] for r in rows)


def test_divergence_stops_training_when_asked():
    class Exploding(Module):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == 7 else loss

    callback = PilotCallback("default", clip=CLIP, early_stop=True)
    lrs, _, _, module = _fit(Exploding(), pilot_callback=callback)
    assert callback.pilot.diverged and len(lrs) == 8
    assert all(torch.isfinite(p).all() for p in module.parameters())
