"""Neural-network building blocks."""

from pyengine.nn.containers import ModuleDict, ModuleList
from pyengine.nn.layers import GELU, Conv2d, CrossEntropyLoss, LayerNorm, Linear, ReLU, Sequential, Sigmoid, SiLU, Tanh
from pyengine.nn.losses import BCEWithLogitsLoss, L1Loss, MSELoss, NLLLoss
from pyengine.nn.module import Module, Parameter
from pyengine.nn.sparse import Embedding

__all__ = ["Module", "Parameter", "Linear", "Conv2d", "LayerNorm", "ReLU", "GELU", "Tanh", "Sigmoid", "SiLU",
           "Sequential",
           "ModuleList", "ModuleDict", "CrossEntropyLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "NLLLoss",
           "Embedding"]
