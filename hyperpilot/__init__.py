"""hyperpilot: learn to steer an optimizer's hyperparameters while a network trains."""

from hyperpilot._version import __version__

__all__ = ["__version__"]
