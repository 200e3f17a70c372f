"""Dropout (torch.nn.Dropout), active in training mode only."""

from __future__ import annotations

from pyengine import functional as F
from pyengine.nn.module import Module
from pyengine.ops_dropout import check_probability


class Dropout(Module):
    """Zeroes each element with probability p in training mode (``module.train()``,
    the default) and scales the rest by 1 / (1 - p); the identity after
    ``module.eval()``. See pyengine.functional.dropout."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.p = check_probability("Dropout", p)
        if inplace:
            raise ValueError("Dropout: inplace=True is not supported")
        self.inplace = False

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
