"""Models built from pyengine.nn."""

from pyengine.models.cnn import CNN
from pyengine.models.mlp import MLP

__all__ = ["CNN", "MLP"]
