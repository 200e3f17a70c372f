"""Stochastic gradient descent with momentum, Nesterov and weight decay."""

from __future__ import annotations

import numpy as np

from pyengine import _C
from pyengine.optim.optimizer import Optimizer


class SGD(Optimizer):
    """SGD with PyTorch's update rule (see csrc/core/kernel_list.inc, sgd_update).

    The momentum buffers are allocated on the first step and reused after, so
    a replayed training step allocates nothing.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params)
        self.lr, self.momentum, self.dampening = float(lr), float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.momentum_buffers = [None] * len(self.params)

    def step(self) -> None:
        for index, param in enumerate(self.params):
            if param._grad is None:
                continue
            buffer = self.momentum_buffers[index]
            first_step = buffer is None  # PyTorch starts each buffer at the first gradient
            if self.momentum and buffer is None:
                buffer = self.momentum_buffers[index] = np.zeros(param.shape, dtype=np.float32)
            _C.sgd_update(param.data, buffer, param._grad, self.lr, self.momentum, self.dampening,
                          self.weight_decay, self.nesterov, first_step)
        self.steps += 1

    def state_dict(self) -> dict:
        return {f"momentum_buffer.{i}": b for i, b in enumerate(self.momentum_buffers) if b is not None}
