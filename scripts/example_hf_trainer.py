"""The Hugging Face Trainer with a pilot steering AdamW's lr, beta1 and clipping.

    python scripts/example_hf_trainer.py --pilot runs/x/pilot --steps 120

A small GPT-2, built from its config (nothing is downloaded), learns the bytes of a
text that ships with Python. The only changes to an ordinary Trainer run:
`PilotCallback` in `callbacks`, `max_grad_norm=0` (the pilot clips), a constant
schedule, and evaluation before the first step and every K steps (K = the pilot's
decision interval). Needs `pip install 'hyperpilot[transformers]'`.
"""

import argparse
import inspect
import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hyperpilot.integrations.transformers import PilotCallback

SEQ = 32


class Chunks(torch.utils.data.Dataset):
    """Fixed-length byte chunks: each is its own label (the model shifts them)."""

    def __init__(self, data: bytes) -> None:
        ids = torch.tensor(list(data))
        self.ids = ids[: len(ids) // SEQ * SEQ].view(-1, SEQ)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilot", default="default", help="bundle dir or pilot name")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="starting lr")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/example_hf_trainer")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)

    # data: the source of Python's json package, as bytes; the last tenth validates
    text = "".join(inspect.getsource(m) for m in (json.decoder, json.encoder)).encode()
    cut = len(text) * 9 // 10
    train, val = Chunks(text[:cut]), Chunks(text[cut:])

    config = GPT2Config(
        vocab_size=256,
        n_positions=SEQ,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)

    callback = PilotCallback(args.pilot, early_stop=True)
    k = callback.pilot.decision_interval
    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=len(val),
        learning_rate=args.lr,
        max_grad_norm=0,  # the pilot clips
        lr_scheduler_type="constant",  # the pilot sets the lr
        eval_strategy="steps",
        eval_steps=k,  # the pilot reads eval_loss at each decision
        eval_on_start=True,
        save_strategy="no",
        logging_strategy="no",  # the callback logs at each decision
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=val,
        callbacks=[callback],
    )
    trainer.train()

    for record in trainer.state.log_history:
        if "pilot/lr" in record:
            print(
                f"step {record['step']:4d}  loss {record['loss']:.3f}  "
                f"lr {record['pilot/lr']:.2e}  beta1 {record['pilot/beta1']:.3f}  "
                f"clip {record['pilot/clip']:.3g}"
            )
    print(f"eval_loss {trainer.evaluate()['eval_loss']:.4f}")
    if callback.pilot.should_stop():
        print("stopped early:", "diverged" if callback.pilot.diverged else "plateau")


if __name__ == "__main__":
    main()
