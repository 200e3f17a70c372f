"""Models built from pyengine.nn."""

from pyengine.models.mlp import MLP

__all__ = ["MLP"]
