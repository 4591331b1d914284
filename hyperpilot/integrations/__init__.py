"""The pilot where people train: callbacks for PyTorch Lightning and the HF Trainer.

Each framework lives in its own module, imported only when asked for, so the core
package never needs either library:

- `hyperpilot.integrations.lightning.PilotCallback` (`pip install 'hyperpilot[lightning]'`)
- `hyperpilot.integrations.transformers.PilotCallback`
  (`pip install 'hyperpilot[transformers]'`)

Both wrap the same `hyperpilot.Pilot` and add nothing of their own beyond the
framework's hooks.
"""
