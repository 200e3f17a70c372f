"""Dropout and the fused residual + dropout as differentiable ops (kernels:
csrc/dropout/). Each takes, after its float inputs, the (2,) int64 ``rng``
input that pyengine.random.next_rng_input() hands out; the backward
regenerates the mask from it, so nothing else is saved."""

from __future__ import annotations

from pyengine import ops as O

__all__ = ["Dropout", "DropoutAdd", "check_probability"]


def check_probability(fn: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{fn}: p must be a number, got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{fn}: dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


class Dropout(O.KernelOp):
    """y = x * keep / (1 - p); inputs (x, rng)."""

    def __init__(self, p: float):
        super().__init__("dropout", p=check_probability("dropout", p))
        self.p = self.options["p"]

    def label(self):
        return f"dropout(p={self.p:g})"


class DropoutAdd(O.KernelOp):
    """y = residual + dropout(x), one pass; inputs (residual, x, rng)."""

    def __init__(self, p: float):
        super().__init__("dropout_add", p=check_probability("dropout_add", p))
        self.p = self.options["p"]

    def label(self):
        return f"residual+dropout(p={self.p:g})"
