"""Adam and AdamW, PyTorch's rules, one fused kernel pass per parameter."""

from __future__ import annotations

import numpy as np

from pyengine import kernels
from pyengine.nn.utils import GradNormClip
from pyengine.ops import parameters_written
from pyengine.optim.optimizer import Optimizer
from pyengine.tensor import Tensor

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam with PyTorch's update rule (see pyengine.kernels.adam_update).

    ``weight_decay`` is an L2 penalty added to the gradient, as in
    torch.optim.Adam; :class:`AdamW` decays the weights directly. The moments
    (``state[param]["exp_avg"]``, ``"exp_avg_sq"`` and, with amsgrad,
    ``"max_exp_avg_sq"``) are allocated on a parameter's first step and
    updated in place after, so a replayed training step allocates nothing.
    Hyper-parameters are read from ``param_groups`` at every step.

    Gradient clipping fused into the step: with ``max_grad_norm``, every
    ``step()`` first computes the total ``grad_norm_type``-norm of all the
    optimizer's gradients and the coefficient min(1, max_norm / (total +
    1e-6)), exactly as torch.nn.utils.clip_grad_norm_, and the kernel reads
    each gradient times that coefficient (``.grad`` itself is left as it is):
    the same update as clip_grad_norm_ then step(), without the pass that
    scales the gradients, and part of a captured step. ``grad_norm`` is the
    last step's total norm (a 0-d Tensor over a buffer the next step
    overwrites); ``error_if_nonfinite`` raises RuntimeError before any
    parameter changes, as clip_grad_norm_ does.
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, max_grad_norm: float | None = None,
                 grad_norm_type: float = 2.0, error_if_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
        if max_grad_norm is not None:
            GradNormClip(0, max_grad_norm, grad_norm_type, fn=type(self).__name__)  # checks the options
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.grad_norm_type, self.error_if_nonfinite = grad_norm_type, bool(error_if_nonfinite)
        self._clip: GradNormClip | None = None

    def _check_group(self, group: dict) -> None:
        name = type(self).__name__
        for key in ("lr", "eps", "weight_decay"):
            group[key] = _as_float(group[key], key, name)
        try:
            beta1, beta2 = (float(b) for b in group["betas"])
        except (TypeError, ValueError):
            raise TypeError(f"{name}: betas must be a pair of numbers, got {group['betas']!r}") from None
        group["betas"] = (beta1, beta2)
        group["amsgrad"] = bool(group["amsgrad"])
        if group["lr"] < 0 or group["eps"] < 0 or group["weight_decay"] < 0:
            raise ValueError(f"{name}: lr, eps and weight_decay must be >= 0, got {group['lr']}, "
                             f"{group['eps']}, {group['weight_decay']}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"{name}: betas must be in [0, 1), got {group['betas']}")

    @property
    def grad_norm(self) -> Tensor | None:
        """The total gradient norm of the last step (with max_grad_norm), else None."""
        return None if self._clip is None else Tensor(self._clip.total)

    def step(self) -> None:
        scale = self._clip_coefficient() if self.max_grad_norm is not None else None
        for group in self.param_groups:
            self._step_group(group, scale)
        self.steps += 1
        parameters_written()

    def _clip_coefficient(self):
        """The clip coefficient of this step's gradients (a 0-d buffer), or None without gradients."""
        params = self.params
        if self._clip is None or len(self._clip.norms) != len(params):
            self._clip = GradNormClip(len(params), self.max_grad_norm, self.grad_norm_type, self.error_if_nonfinite,
                                      fn=type(self).__name__)
        grads = [p._grad for p in params]
        if all(g is None for g in grads):
            return None
        self._clip.max_norm = self.max_grad_norm  # may be changed between steps
        return self._clip.compute(grads)

    def _step_group(self, group: dict, grad_scale=None) -> None:
        beta1, beta2 = group["betas"]
        for param in group["params"]:
            grad = param._grad
            if grad is None:
                continue
            state = self.state[param]
            if not state:
                state.update(self._fresh_state(param, group["amsgrad"]))
            step = state["step"] + 1
            kernels.adam_update(param.data, state["exp_avg"], state["exp_avg_sq"], grad,
                                state.get("max_exp_avg_sq"), grad_scale, lr=group["lr"], step=step,
                                beta1=beta1, beta2=beta2, eps=group["eps"],
                                weight_decay=group["weight_decay"], decoupled=self.decoupled,
                                amsgrad=group["amsgrad"])
            state["step"] = step  # counted once the update succeeded

    @staticmethod
    def _fresh_state(param, amsgrad: bool) -> dict:
        zeros = lambda: np.zeros(param.shape, dtype=np.float32)  # noqa: E731
        state = {"step": 0, "exp_avg": zeros(), "exp_avg_sq": zeros()}
        if amsgrad:
            state["max_exp_avg_sq"] = zeros()
        return state


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): each step first
    scales the weights by 1 - lr * weight_decay. weight_decay defaults to 0.01."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, max_grad_norm: float | None = None,
                 grad_norm_type: float = 2.0, error_if_nonfinite: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, max_grad_norm=max_grad_norm,
                         grad_norm_type=grad_norm_type, error_if_nonfinite=error_if_nonfinite)


def _as_float(value, key: str, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: {key} must be a number, got {type(value).__name__}") from None
