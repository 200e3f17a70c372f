"""Neural-network building blocks."""

from pyengine.nn import utils
from pyengine.nn.cnn_layers import AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Flatten, MaxPool2d
from pyengine.nn.containers import ModuleDict, ModuleList
from pyengine.nn.dropout import Dropout
from pyengine.nn.layers import GELU, Conv2d, CrossEntropyLoss, LayerNorm, Linear, ReLU, Sequential, Sigmoid, SiLU, Tanh
from pyengine.nn.losses import BCEWithLogitsLoss, L1Loss, MSELoss, NLLLoss
from pyengine.nn.module import Module, Parameter
from pyengine.nn.normalization import RMSNorm
from pyengine.nn.sparse import Embedding

__all__ = ["Module", "Parameter", "Linear", "Conv2d", "LayerNorm", "ReLU", "GELU", "Tanh", "Sigmoid", "SiLU",
           "Sequential",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "BatchNorm1d", "BatchNorm2d",
           "ModuleList", "ModuleDict", "CrossEntropyLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "NLLLoss",
           "Embedding", "Dropout", "utils", "RMSNorm"]
