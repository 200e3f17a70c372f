"""Base class of optimizers."""

from __future__ import annotations


class Optimizer:
    """Updates a fixed list of parameters from their ``.grad``."""

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        raise NotImplementedError
