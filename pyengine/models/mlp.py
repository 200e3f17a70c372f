"""A multi-layer perceptron."""

from __future__ import annotations

from pyengine import nn


class MLP(nn.Sequential):
    """Linear -> ReLU blocks, then a Linear classifier head.

    MLP(64, [128, 64], 10) is Linear(64, 128), ReLU, Linear(128, 64), ReLU,
    Linear(64, 10): parameter names match torch.nn.Sequential's ('0.weight', ...).
    """

    def __init__(self, in_features: int, hidden: list, out_features: int):
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
