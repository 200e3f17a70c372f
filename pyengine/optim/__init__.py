"""Optimizers."""

from pyengine.optim.optimizer import Optimizer
from pyengine.optim.sgd import SGD

__all__ = ["Optimizer", "SGD"]
