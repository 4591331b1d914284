"""PyTorch Lightning with a pilot steering Adam's lr, beta1 and clipping.

    python scripts/example_lightning.py --pilot runs/x/pilot --steps 300

The only change to an ordinary Lightning run: `PilotCallback` in `callbacks`, with
validation every K steps (K = the pilot's decision interval) and before the first
step, and no `gradient_clip_val`. Needs `pip install 'hyperpilot[lightning]'`.
"""

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hyperpilot.integrations.lightning import PilotCallback


class Digits(pl.LightningModule):
    """A small MLP on the digits; it logs `val_loss`, which the pilot reads."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        """The cross-entropy of a batch."""
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        """Logs the validation loss and accuracy."""
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        """Adam, and no scheduler: the pilot owns the lr."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)  # no scheduler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilot", default="default", help="bundle dir or pilot name")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="starting lr")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pl.seed_everything(args.seed, verbose=False)

    # data: sklearn's 8x8 digits, pixels scaled to [0, 1]; 360 rows for validation
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    rows = torch.randperm(len(x))
    val, train = rows[:360], rows[360:]
    train_loader = DataLoader(
        TensorDataset(x[train], y[train]), batch_size=args.batch_size, shuffle=True
    )
    val_loader = DataLoader(TensorDataset(x[val], y[val]), batch_size=len(val))

    callback = PilotCallback(args.pilot, early_stop=True)
    k = callback.pilot.decision_interval
    trainer = pl.Trainer(
        max_steps=args.steps,
        callbacks=[callback],
        val_check_interval=k,  # the pilot reads val_loss at each decision
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,  # a whole validation before the first step
        logger=pl.loggers.CSVLogger("runs", name="example_lightning"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Digits(args.lr), train_loader, val_loader)

    values = callback.pilot.hyperparameters
    print(
        f"after {trainer.global_step} steps: val_loss "
        f"{trainer.callback_metrics['val_loss']:.4f}  val_acc "
        f"{trainer.callback_metrics['val_acc']:.3f}  lr {values['lr']:.2e}  "
        f"beta1 {values['beta1']:.3f}  clip {values['clip']:.3g}"
    )
    if callback.pilot.should_stop():
        print("stopped early:", "diverged" if callback.pilot.diverged else "plateau")
    print(f"pilot/lr, pilot/beta1, pilot/clip per decision: {trainer.logger.log_dir}")


if __name__ == "__main__":
    main()
