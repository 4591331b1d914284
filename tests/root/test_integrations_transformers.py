"""PilotCallback in the Hugging Face Trainer: the same decisions as a plain loop."""

import copy

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from hyperpilot.agents.pilot import Pilot  # noqa: E402
from hyperpilot.integrations.transformers import (  # noqa: E402
    STATE_FILE,
    PilotCallback,
)

STEPS, BATCH, CLIP, SEQ, VOCAB = 40, 8, 0.5, 8, 32


def _model():
    """A one-layer GPT-2 built from its config (no download), without dropout."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=16,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        # float64, so that float noise (the Trainer averages eval losses its own
        # way) stays far below the 1e-6 the comparison allows
        return transformers.GPT2LMHeadModel(config).double()


MODEL = _model()


def _tokens(seed, n):
    generator = torch.Generator().manual_seed(seed)
    # a learnable pattern: each next token is the previous one plus a fixed step
    start = torch.randint(VOCAB, (n, 1), generator=generator)
    step = torch.randint(1, 4, (n, 1), generator=generator)
    return (start + step * torch.arange(SEQ)) % VOCAB


TRAIN, VAL = _tokens(0, 64), _tokens(1, 16)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def _reference(counts, accumulate=1):
    """The plain loop: AdamW as `optim="adamw_torch"` builds it, sequential batches.

    `counts`: the `num_items_in_batch` the Trainer passed to the model at each step
    (every micro-batch's summed loss is divided by the whole step's count) and in
    evaluation.
    """
    counts, eval_count = counts
    model = copy.deepcopy(MODEL).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )

    def val_fn():
        model.eval()
        loss = float(
            model(input_ids=VAL, labels=VAL, num_items_in_batch=eval_count).loss
        )
        model.train()
        return loss

    pilot = Pilot.load("default").attach(optimizer, STEPS, val_fn=val_fn, clip=CLIP)
    micro, lrs, losses, row = BATCH // accumulate, [], [], 0
    for step in range(STEPS):
        optimizer.zero_grad()
        rows = [(row + i) % len(TRAIN) for i in range(BATCH)]
        row += BATCH
        ids = TRAIN[rows]
        total = 0.0
        for start in range(0, BATCH, micro):
            part = ids[start : start + micro]
            loss = model(
                input_ids=part, labels=part, num_items_in_batch=counts[step]
            ).loss
            loss.backward()
            total = total + loss.detach()
        pilot.step(total)
        values = pilot.hyperparameters
        lrs.append((optimizer.param_groups[0]["lr"], values["beta1"], values["clip"]))
        losses.append(float(total))
        optimizer.step()
    return np.array(lrs), np.array(losses)


class Recorder(transformers.TrainerCallback):
    """lr, beta1 and clip of each optimizer step, and its `num_items_in_batch`."""

    def __init__(self, pilot):
        self.pilot = pilot
        self.lrs, self.counts = [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, args, kwargs):
            if not module.training:
                self.eval_count = kwargs.get("num_items_in_batch")
            elif len(self.counts) == len(self.lrs):
                self.counts.append(kwargs["num_items_in_batch"])

        model.register_forward_pre_hook(record, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        values = self.pilot.hyperparameters
        lr = optimizer.param_groups[0]["lr"]
        self.lrs.append((lr, values["beta1"], values["clip"]))


def _args(tmp_path, accumulate=1, **kw):
    options = {
        "output_dir": str(tmp_path),
        "max_steps": STEPS,
        "per_device_train_batch_size": BATCH // accumulate,
        "per_device_eval_batch_size": len(VAL),
        "gradient_accumulation_steps": accumulate,
        "learning_rate": 1e-2,
        "optim": "adamw_torch",
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "lr_scheduler_type": "constant",
        "train_sampling_strategy": "sequential",
        "eval_strategy": "steps",
        "eval_steps": 10,
        "eval_on_start": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
    }
    options.update(kw)
    return transformers.TrainingArguments(**options)


def _train(args, callback=None, model=None, resume=None):
    callback = callback or PilotCallback("default", clip=CLIP)
    recorder = Recorder(callback.pilot)
    trainer = transformers.Trainer(
        model=model or copy.deepcopy(MODEL),
        args=args,
        train_dataset=Tokens(TRAIN),
        eval_dataset=Tokens(VAL),
        callbacks=[callback, recorder],
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.counts = (recorder.counts, recorder.eval_count)
    return np.array(recorder.lrs), trainer, callback


@pytest.mark.parametrize(
    "accumulate",
    [1, pytest.param(2, marks=pytest.mark.slow)],
    ids=["plain", "accumulate-2"],
)
def test_the_trainer_matches_the_plain_loop(tmp_path, accumulate):
    got, trainer, callback = _train(_args(tmp_path, accumulate))
    lrs, losses = _reference(trainer.counts, accumulate)
    np.testing.assert_allclose(got, lrs, rtol=1e-6)
    assert len(set(lrs[:, 0].tolist())) > 2
    assert callback.pilot.state_dict()["tracker"]["val_available"].all()
    # the Trainer logged at each decision, with the lr in force and the pilot's values
    records = [r for r in trainer.state.log_history if "pilot/lr" in r]
    assert [r["step"] for r in records] == [1, 11, 21, 31]
    np.testing.assert_allclose(
        [r["learning_rate"] for r in records], lrs[::10, 0], rtol=1e-6
    )
    np.testing.assert_allclose(
        [r["pilot/lr"] for r in records], lrs[::10, 0], rtol=1e-6
    )
    # each record's loss is the mean since the last one: the losses agree too
    windows = [losses[:1], losses[1:11], losses[11:21], losses[21:31]]
    np.testing.assert_allclose(
        [r["loss"] for r in records], [w.mean() for w in windows], rtol=1e-4
    )


@pytest.mark.slow
def test_a_schedule_is_warned_about_and_overridden(tmp_path):
    with pytest.warns(UserWarning, match="'linear'.*has no effect"):
        got, trainer, _ = _train(_args(tmp_path, lr_scheduler_type="linear"))
    lrs, _ = _reference(trainer.counts)
    np.testing.assert_allclose(got, lrs, rtol=1e-6)


def test_trainer_clipping_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        _train(_args(tmp_path, max_grad_norm=1.0))


@pytest.mark.slow
def test_a_resumed_run_makes_the_uninterrupted_decisions(tmp_path):
    lrs, _, _ = _train(_args(tmp_path / "straight"))
    args = _args(tmp_path / "run", save_strategy="steps", save_steps=20)

    class Interrupt(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            control.should_training_stop = True

    callback = PilotCallback("default", clip=CLIP)
    trainer = transformers.Trainer(
        model=copy.deepcopy(MODEL),
        args=args,
        train_dataset=Tokens(TRAIN),
        eval_dataset=Tokens(VAL),
        callbacks=[callback, Interrupt()],
    )
    trainer.train()
    assert (tmp_path / "run" / "checkpoint-20" / STATE_FILE).is_file()
    resumed, _, callback = _train(args, model=_model().apply(_reinit), resume=True)
    np.testing.assert_allclose(resumed, lrs[20:], rtol=1e-6)
    assert callback.pilot.steps_done == STEPS


def _reinit(module):
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.zeros_(module.weight)


@pytest.mark.slow
def test_a_skipped_amp_step_is_no_divergence(tmp_path, monkeypatch):
    """fp16 AMP as on a GPU (accelerate refuses it on the CPU, so it is set by hand),
    and an inf in one scaled gradient at step 5, as an fp16 overflow leaves."""
    callback = PilotCallback("default", clip=CLIP, early_stop=True)
    seen = {}

    class Watch(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 5 and not seen:
                seen["before"] = copy.deepcopy(model.state_dict())

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if seen and "after" not in seen:
                seen["after"] = copy.deepcopy(model.state_dict())

    trainer = transformers.Trainer(
        model=copy.deepcopy(MODEL),
        args=_args(tmp_path),
        train_dataset=Tokens(TRAIN),
        eval_dataset=Tokens(VAL),
        callbacks=[callback, Watch()],
    )
    accelerator = trainer.accelerator
    monkeypatch.setattr(accelerator, "scaler", torch.amp.GradScaler("cpu"))
    monkeypatch.setattr(accelerator, "native_amp", True)
    monkeypatch.setattr(accelerator.state, "_mixed_precision", "fp16")

    def overflow(grad):
        return grad * float("inf") if trainer.state.global_step == 5 else grad

    trainer.model.transformer.h[0].mlp.c_fc.weight.register_hook(overflow)
    trainer.train()
    assert accelerator.optimizer_step_was_skipped is False  # later steps ran
    for name, value in seen["before"].items():
        assert torch.equal(value, seen["after"][name]), name
    assert not callback.pilot.diverged and callback.pilot.steps_done == STEPS


def test_bf16_autocast_runs(tmp_path):
    lrs, trainer, callback = _train(_args(tmp_path, bf16=True))
    assert len(set(lrs[:, 0].tolist())) > 2 and not callback.pilot.diverged
    assert np.isfinite(
        [r["loss"] for r in trainer.state.log_history if "loss" in r]
    ).all()
