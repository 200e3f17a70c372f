"""Optimizers, and learning-rate schedulers in ``pyengine.optim.lr_scheduler`` (as in torch)."""

from pyengine.optim import lr_scheduler
from pyengine.optim.adam import Adam, AdamW
from pyengine.optim.optimizer import Optimizer
from pyengine.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
