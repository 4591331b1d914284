"""A plain PyTorch loop with a pilot steering Adam's lr, beta1 and clipping.

    python scripts/example_pilot_loop.py --pilot runs/x/pilot --steps 300

The only changes to an ordinary loop: `pilot.attach(...)` once, `pilot.step(loss)`
between `backward()` and `opt.step()`, and (optionally) `pilot.should_stop()`.
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from hyperpilot import Pilot


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilot", default="default", help="bundle dir or pilot name")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="starting lr")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=3, help="decisions")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)

    # data: sklearn's 8x8 digits, pixels scaled to [0, 1]; 360 rows for validation
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    rows = torch.randperm(len(x))
    val_rows, train_rows = rows[:360], rows[360:]

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def val_fn() -> float:
        return F.cross_entropy(model(x[val_rows]), y[val_rows]).item()

    pilot = Pilot.load(args.pilot)
    pilot.attach(opt, total_steps=args.steps, val_fn=val_fn)
    print(pilot)

    for step in range(args.steps):
        batch = train_rows[torch.randint(len(train_rows), (args.batch_size,))]
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        pilot.step(loss)  # decides every K steps, then clips the gradients
        opt.step()

        if step % pilot.decision_interval == 0:
            hp = pilot.hyperparameters
            beta1 = "-" if hp["beta1"] is None else f"{hp['beta1']:.3f}"
            print(
                f"step {step:5d}  loss {loss.item():.4f}  lr {hp['lr']:.2e}  "
                f"beta1 {beta1}  clip {hp['clip']:.3g}"
            )
        if pilot.should_stop(args.patience):
            why = "diverged" if pilot.diverged else "validation stopped improving"
            print(f"stopping after step {step}: {why}")
            break

    with torch.no_grad():
        logits = model(x[val_rows])
        accuracy = (logits.argmax(1) == y[val_rows]).float().mean().item()
    print(f"validation loss {val_fn():.4f}  accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
