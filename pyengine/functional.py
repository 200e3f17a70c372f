"""Functions on tensors, with the names PyTorch users know (torch.nn.functional)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from pyengine import ops as O
from pyengine import ops_attention as OA
from pyengine.tensor import Tensor, apply

__all__ = ["linear", "conv2d", "relu", "gelu", "tanh", "sigmoid", "silu", "softmax", "log_softmax", "layer_norm",
           "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "binary_cross_entropy_with_logits",
           "scaled_dot_product_attention", "qkv_attention"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, with weight stored (out_features, in_features) as in PyTorch.

    Leading dims of x are folded into one matrix (a view), so the whole batch
    is a single GEMM with the bias added in its epilogue.
    """
    lead = x.shape[:-1]
    flat = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    inputs = (flat, weight) if bias is None else (flat, weight, bias)
    y = apply(O.MatMul(trans_b=True), *inputs)
    return y if x.ndim == 2 else y.reshape(*lead, weight.shape[0])


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1) -> Tensor:
    """2-D convolution as in PyTorch: x (N, C, H, W), weight (K, C, R, S), bias (K,).

    stride, padding (zeros) and dilation are ints or (h, w) pairs; the output
    is (N, K, OH, OW) with OH = (H + 2 padding - dilation (R - 1) - 1) // stride + 1.
    """
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return apply(O.Conv2d(stride, padding, dilation), *inputs)


def relu(x: Tensor) -> Tensor:
    return x.relu()


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (PyTorch's approximate='tanh')."""
    return x.gelu()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x), as torch.nn.functional.silu."""
    return x.silu()


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis."""
    return x.softmax()


def log_softmax(x: Tensor) -> Tensor:
    """Log-softmax over the last axis."""
    return x.log_softmax()


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Layer norm over the last axis."""
    return apply(O.LayerNorm(eps), x, weight, bias)


def cross_entropy(logits: Tensor, target, ignore_index: int = -100, *, reduction: str = "mean") -> Tensor:
    """Mean cross-entropy of logits against integer class targets, over the
    targets that are not ignore_index, as torch: logits (classes,) with a 0-d
    target, (N, classes) with (N,), or (N, classes, d1, ...) with (N, d1, ...).
    Supported: reduction="mean" only (ValueError otherwise), no class weights."""
    _reduction("cross_entropy", reduction, ("mean",))
    logits, target = _class_rows("cross_entropy", logits, target)
    return apply(O.CrossEntropy(ignore_index), logits, target)


# ------------------------------------------------------------------ losses
# mse, l1 and BCE-with-logits are composed from differentiable Tensor ops;
# nll (like cross_entropy) is a declared kernel pair, which averages.

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(fn: str, reduction, allowed=_REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"{fn}: reduction must be one of {', '.join(map(repr, allowed))}, got {reduction!r}")
    return reduction


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _operands(fn: str, input, target, broadcast: bool) -> Tensor:
    """target as a Tensor; a shape other than input's broadcasts with torch's
    warning (mse, l1) or raises ValueError (BCE)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: input must be a Tensor, got {type(input).__name__}")
    target = target if isinstance(target, Tensor) else Tensor(target)
    if target.shape != input.shape:
        if not broadcast:
            raise ValueError(f"{fn}: target size {target.shape} must be the same as input size {input.shape}")
        warnings.warn(f"{fn}: using a target size ({target.shape}) that is different to the input size "
                      f"({input.shape}); they will broadcast", UserWarning, stacklevel=3)
    return target


def _class_rows(fn: str, input: Tensor, target) -> tuple:
    """(rows, classes) scores and (rows,) targets from torch's layouts of a
    classification loss (a class dim 1 beyond 2 dims is moved last)."""
    target = target if isinstance(target, Tensor) else Tensor(target)
    if input.ndim == 0:
        raise ValueError(f"{fn}: input needs a class dim, got a 0-d tensor")
    expected = () if input.ndim == 1 else (input.shape[0], *input.shape[2:])
    if target.shape != expected:
        raise ValueError(f"{fn}: target has shape {target.shape}, expected {expected} for input of shape "
                         f"{input.shape}")
    if input.ndim == 1:
        return input.reshape(1, -1), target.reshape(1)
    if input.ndim == 2:
        return input, target
    rows = input.permute(0, *range(2, input.ndim), 1).reshape(-1, input.shape[1])
    return rows, target.reshape(-1)


def nll_loss(input: Tensor, target, weight=None, *, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities `input` at the integer
    targets, averaged over the targets that are not ignore_index (NaN when all
    are), in cross_entropy's layouts. Supported: reduction="mean" only and no
    class weights (ValueError otherwise)."""
    _reduction("nll_loss", reduction, ("mean",))
    if weight is not None:
        raise ValueError("nll_loss: class weights are not supported")
    logp, target = _class_rows("nll_loss", input, target)
    return apply(O.KernelOp("nll_loss", ignore_index=int(ignore_index)), logp, target)


def mse_loss(input: Tensor, target, *, reduction: str = "mean") -> Tensor:
    """(input - target)^2 averaged ("mean"), summed ("sum") or elementwise ("none")."""
    _reduction("mse_loss", reduction)
    target = _operands("mse_loss", input, target, broadcast=True)
    return _reduce((input - target).square(), reduction)


def l1_loss(input: Tensor, target, *, reduction: str = "mean") -> Tensor:
    """|input - target| averaged ("mean"), summed ("sum") or elementwise ("none")."""
    _reduction("l1_loss", reduction)
    target = _operands("l1_loss", input, target, broadcast=True)
    return _reduce((input - target).abs(), reduction)


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, *, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """Binary cross-entropy of sigmoid(input) against targets in [0, 1], in the
    stable form max(x, 0) - x y + log(1 + exp(-|x|)), as torch; `weight`
    scales each element, `pos_weight` the positive term (both broadcast).
    max(x, 0) is written (x + |x|) / 2, so the gradient at x = 0 is exactly
    sigmoid(0) - y. reduction: "mean", "sum" or "none"."""
    _reduction("binary_cross_entropy_with_logits", reduction)
    target = _operands("binary_cross_entropy_with_logits", input, target, broadcast=False)
    magnitude = input.abs()
    log_term = ((-magnitude).exp() + 1.0).log()  # log(1 + exp(-|x|)), at most log 2
    if pos_weight is None:
        loss = (input + magnitude) * 0.5 - input * target + log_term
    else:
        pos_weight = pos_weight if isinstance(pos_weight, Tensor) else Tensor(pos_weight)
        log_weight = (pos_weight - 1.0) * target + 1.0
        loss = (1.0 - target) * input + log_weight * (log_term + (magnitude - input) * 0.5)
    if weight is not None:
        loss = loss * (weight if isinstance(weight, Tensor) else Tensor(weight))
    return _reduce(loss, reduction)


# ------------------------------------------------------------------ attention


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, is_causal: bool = False,
                                 scale: float | None = None, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T * scale + mask) v, as torch.nn.functional.scaled_dot_product_attention, in one fused
    (flash-style) kernel: q (B, H, Tq, D), k and v (B, H, Tk, D), D <= 256, result (B, H, Tq, D).

    attn_mask: boolean (True = attend) or additive float32, broadcastable to (B, H, Tq, Tk) (read with
    stride 0 along broadcast dims, never expanded). A float mask that requires grad (a learned position
    bias) gets its gradient, summed over its broadcast dims. A boolean mask is turned into an additive
    0 / -inf mask of its own shape. is_causal: query i attends key j iff j <= i + (Tk - Tq), aligned to
    the END (what decoding with a KV cache needs); for Tq == Tk this is PyTorch's is_causal, for
    Tq != Tk PyTorch aligns its causal mask to the top left instead. scale defaults to 1 / sqrt(D).
    A row that attends no key (fully masked) gives 0, and zero gradients, as PyTorch does.
    dropout_p > 0 zeroes probabilities (kept ones scaled by 1 / (1 - dropout_p)) from a counter-based
    mask drawn from pyengine's generator.
    """
    fn = "scaled_dot_product_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{fn}: {name} must be 4-D (B, H, T, D), got shape {t.shape}")
    inputs = [q, k, v]
    if attn_mask is not None:
        inputs.append(_additive_mask(fn, attn_mask))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if dropout_p > 0:
        inputs.append(Tensor(OA._next_rng()))
    op = OA.Attention(is_causal=is_causal, scale=scale, dropout_p=dropout_p, has_mask=attn_mask is not None,
                      has_rng=dropout_p > 0)
    return apply(op, *inputs)


def _additive_mask(fn: str, mask) -> Tensor:
    data = mask.data if isinstance(mask, Tensor) else mask
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{fn}: attn_mask must be a Tensor or numpy array, got {type(mask).__name__}")
    if data.dtype == np.bool_:
        return Tensor(np.where(data, np.float32(0), np.float32(-np.inf)))
    if data.dtype != np.float32:
        raise TypeError(f"{fn}: attn_mask must be bool or float32, got {data.dtype} with shape {data.shape}")
    return mask if isinstance(mask, Tensor) else Tensor(mask)


def qkv_attention(qkv: Tensor, is_causal: bool = True, scale: float | None = None,
                  dropout_p: float = 0.0) -> Tensor:
    """Attention straight from a fused QKV projection: qkv (B, T, 3, H, D) (q, k, v along dim 2, as
    ``linear(x, w_qkv).view(B, T, 3, H, D)`` gives them) -> (B, T, H, D), ready for the output
    projection: no transposes. Equals scaled_dot_product_attention on the (B, H, T, D) transposes;
    causal by default, scale 1 / sqrt(D) by default; the backward writes d(qkv) in place."""
    if not isinstance(qkv, Tensor):
        raise TypeError(f"qkv_attention: qkv must be a Tensor, got {type(qkv).__name__}")
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv_attention: qkv must be (B, T, 3, H, D), got shape {qkv.shape}")
    scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
    inputs = [qkv] + ([Tensor(OA._next_rng())] if dropout_p > 0 else [])
    op = OA.QKVAttention(is_causal=is_causal, scale=scale, dropout_p=dropout_p, has_rng=dropout_p > 0)
    return apply(op, *inputs)
