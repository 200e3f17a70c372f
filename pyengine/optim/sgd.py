"""Stochastic gradient descent with momentum, Nesterov and weight decay."""

from __future__ import annotations

import numpy as np

from pyengine import kernels
from pyengine.ops import parameters_written
from pyengine.optim.optimizer import Optimizer


class SGD(Optimizer):
    """SGD with PyTorch's update rule (see pyengine.kernels.sgd_update).

    The hyper-parameters live in ``param_groups`` (one dict per group, as in
    torch.optim.SGD) and are read at every step, so a scheduler's or a user's
    change of ``group["lr"]`` applies from the next step on. The momentum
    buffers (``state[param]["momentum_buffer"]``) are allocated on the first
    step and reused after, so a replayed training step allocates nothing.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        for key in ("lr", "momentum", "dampening", "weight_decay"):
            group[key] = _as_float(group[key], key)
        group["nesterov"] = bool(group["nesterov"])
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if group["nesterov"] and (momentum <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")

    @property
    def momentum_buffers(self) -> list:
        """The momentum buffer of every parameter (None before its first step), in params order."""
        return [self.state.get(p, {}).get("momentum_buffer") for p in self.params]

    def step(self) -> None:
        for group in self.param_groups:
            self._step_group(group)
        self.steps += 1
        parameters_written()

    def _step_group(self, group: dict) -> None:
        momentum = group["momentum"]
        for param in group["params"]:
            grad = param._grad
            if grad is None:
                continue
            buffer = self.state[param].get("momentum_buffer") if momentum else None
            first_step = buffer is None  # PyTorch starts each buffer at the first gradient
            if momentum and first_step:
                buffer = np.zeros(param.shape, dtype=np.float32)
            kernels.sgd_update(param.data, grad, buffer, lr=group["lr"], momentum=momentum,
                               dampening=group["dampening"], weight_decay=group["weight_decay"],
                               nesterov=group["nesterov"], first_step=first_step)
            if momentum and first_step:  # kept only once the update succeeded
                self.state[param]["momentum_buffer"] = buffer


def _as_float(value, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"SGD: {key} must be a number, got {type(value).__name__}") from None
