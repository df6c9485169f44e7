"""Training strategies, one module each; `STRATEGIES` is their registry (see `base`)."""

from .base import STRATEGIES, Strategy, register

__all__ = ["STRATEGIES", "Strategy", "register"]
