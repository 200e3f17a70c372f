"""Neural-network building blocks."""

from pyengine.nn.layers import GELU, CrossEntropyLoss, LayerNorm, Linear, ReLU, Sequential, Tanh
from pyengine.nn.module import Module, Parameter

__all__ = ["Module", "Parameter", "Linear", "LayerNorm", "ReLU", "GELU", "Tanh", "Sequential",
           "CrossEntropyLoss"]
