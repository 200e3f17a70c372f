"""Gradient clipping, torch.nn.utils.clip_grad_norm_'s semantics, on kernels;
and fuse_conv_bn_eval (torch.nn.utils.fusion's), batch norm folded into a convolution.

The norm of every gradient buffer is one ``vector_norm`` kernel call (in
double), and ``clip_coefficient`` combines them into the total norm and the
coefficient min(1, max_norm / (total + 1e-6)), in persistent buffers.

Two ways to clip:

- eagerly, as in PyTorch: ``clip_grad_norm_(model.parameters(), 1.0)``
  between ``loss.backward()`` and ``opt.step()`` scales each ``.grad`` in
  place (a pass over the gradients) and returns the total norm;
- fused into the update: ``optim.AdamW(params, ..., max_grad_norm=1.0)``
  computes the same coefficient at every ``step()`` and the Adam kernel reads
  each gradient times it (``adam_update``'s ``grad_scale``), saving the
  scaling pass. That is the form a captured training step
  (``pyengine.capture(..., optimizer=opt)``) replays, with no allocation;
  ``opt.grad_norm`` is the last step's total norm.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from pyengine import _C
from pyengine.tensor import Tensor

__all__ = ["clip_grad_norm_", "GradNormClip", "fuse_conv_bn_eval"]

F32 = np.float32


def _norm_type(norm_type, fn: str) -> float:
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: norm_type must be a number, got {type(norm_type).__name__}") from None
    if not p > 0:
        raise ValueError(f"{fn}: norm_type must be > 0 or inf, got {norm_type}")
    return p


class GradNormClip:
    """The norm computation for a fixed number of gradient slots, in buffers
    kept across steps: ``norms`` (one per slot, 0 for a slot without a
    gradient), ``total`` and ``coef`` (0-d float32)."""

    def __init__(self, count: int, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                 fn: str = "clip_grad_norm_"):
        self.max_norm, self.norm_type = float(max_norm), _norm_type(norm_type, fn)
        self.error_if_nonfinite = bool(error_if_nonfinite)
        self.norms = np.zeros(count, F32)
        self._slots = [self.norms[i, ...] for i in range(count)]  # 0-d views, made once
        self.total = np.zeros((), F32)
        self.coef = np.ones((), F32)

    def compute(self, grads: list) -> np.ndarray:
        """Total norm and coefficient of `grads` (arrays or None, one per
        slot); raises RuntimeError for a non-finite total when asked. Returns
        the coefficient buffer."""
        for slot, grad in zip(self._slots, grads):
            if grad is None:
                slot.fill(0)
            else:
                _C.vector_norm(slot, grad.reshape(-1), self.norm_type)
        _C.clip_coefficient(self.total, self.coef, self.norms, self.norm_type, self.max_norm)
        if self.error_if_nonfinite and not math.isfinite(float(self.total)):
            raise RuntimeError(f"The total norm of order {self.norm_type} for gradients from `parameters` is "
                               "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
                               "by the non-finite norm anyway, set `error_if_nonfinite=False`")
        return self.coef


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> Tensor:
    """Scale the gradients of `parameters` in place so that their total
    `norm_type`-norm is at most `max_norm`, as torch.nn.utils.clip_grad_norm_:
    every gradient is multiplied by min(1, max_norm / (total + 1e-6)). Returns
    the total norm (before clipping) as a 0-d Tensor. `foreach` is accepted for
    PyTorch's signature and ignored. To clip inside an AdamW step instead (one
    pass over the gradients fewer, and captured), see the module docstring."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p._grad for p in params if p._grad is not None]
    if not grads:
        return Tensor(np.zeros((), F32))
    clip = GradNormClip(len(grads), max_norm, norm_type, error_if_nonfinite)
    coef = float(clip.compute(grads))
    if coef != 1.0:  # a product with 1 changes nothing
        for grad in grads:
            _C.scalar_forward(grad, grad, "mul", coef)
    return Tensor(clip.total)


def fuse_conv_bn_eval(conv, bn):
    """A new Conv2d that computes bn(conv(x)) in eval mode, as
    torch.nn.utils.fusion.fuse_conv_bn_eval: the convolution's weight scaled
    per output channel by weight / sqrt(running_var + eps) of the batch
    norm, and a bias (added where the convolution had none) of
    (bias - running_mean) times that plus the batch norm's bias (folded in
    float64, rounded once). Both modules must be in eval mode and the batch
    norm must track running statistics; neither is changed. A captured eval
    graph folds such pairs by itself (pyengine.capture)."""
    from pyengine.nn.module import Parameter
    from pyengine.ops_cnn import fold_batch_norm

    if conv.training or bn.training:
        raise ValueError("fuse_conv_bn_eval: fusion only for eval (call .eval() on both modules)")
    if bn.running_mean is None:
        raise ValueError("fuse_conv_bn_eval: the batch norm has no running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fuse_conv_bn_eval: the batch norm has {bn.num_features} features, the convolution "
                         f"{conv.out_channels} output channels")
    fused = copy.deepcopy(conv)
    weight, bias = fold_batch_norm(conv.weight.data, None if conv.bias is None else conv.bias.data,
                                   bn.running_mean.data, bn.running_var.data,
                                   None if bn.weight is None else bn.weight.data,
                                   None if bn.bias is None else bn.bias.data, bn.eps)
    fused.weight, fused.bias = Parameter(weight), Parameter(bias)
    return fused
