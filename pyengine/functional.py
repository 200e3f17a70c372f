"""Functions on tensors, with the names PyTorch users know (torch.nn.functional)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from pyengine import ops as O
from pyengine import ops_attention as OA
from pyengine import ops_cnn as OC
from pyengine import random as R
from pyengine.ops_dropout import Dropout, DropoutAdd, check_probability
from pyengine.ops_embedding import Embedding
from pyengine.tensor import Tensor, apply

__all__ = ["linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "relu", "gelu",
           "tanh", "sigmoid", "silu", "softmax", "log_softmax", "layer_norm", "cross_entropy", "nll_loss", "mse_loss",
           "rms_norm", "l1_loss", "binary_cross_entropy_with_logits", "embedding", "dropout", "dropout_add",
           "scaled_dot_product_attention", "qkv_attention"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, with weight stored (out_features, in_features) as in PyTorch.

    Leading dims of x are folded into one matrix (a view), so the whole batch
    is a single GEMM with the bias added in its epilogue.
    """
    for what, t in (("input", x), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"linear: {what} must be a Tensor, got {type(t).__name__}")
    if x.ndim < 1 or weight.ndim != 2:  # a 0-d input had x.shape[-1] raise a bare IndexError
        raise ValueError(f"linear: input {x.shape} needs at least one dim and weight {weight.shape} must be "
                         f"(out_features, in_features)")
    lead = x.shape[:-1]
    # the row count spelled out: reshape(-1, 0) of an empty input is ambiguous
    flat = x if x.ndim == 2 else x.reshape(int(np.prod(lead, dtype=np.int64)), x.shape[-1])
    inputs = (flat, weight) if bias is None else (flat, weight, bias)
    try:
        y = apply(O.MatMul(trans_b=True), *inputs)
    except ValueError as error:  # said only "matmul_forward: inner dims differ ..."
        raise ValueError(f"linear: input {x.shape} and weight {weight.shape}: {error}") from None
    return y if x.ndim == 2 else y.reshape(*lead, weight.shape[0])


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution as in PyTorch: x (N, C, H, W), weight (K, C / groups, R, S), bias (K,).

    stride, padding (zeros) and dilation are ints or (h, w) pairs; the output
    is (N, K, OH, OW) with OH = (H + 2 padding - dilation (R - 1) - 1) // stride + 1.
    groups splits the channels: output channel k reads the C / groups input
    channels of its group k // (K / groups) (groups = C: depthwise).
    """
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return apply(O.Conv2d(stride, padding, dilation, groups), *inputs)


# ------------------------------------------------------------------ pooling and batch norm
# (N, C, H, W) images, or one unbatched (C, H, W) image, as in PyTorch.


def _pooled(op, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op.name}: x must be a Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        return _unbatched(op, x)
    if x.ndim != 4:
        raise ValueError(f"{op.name}: x must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
    return apply(op, x)


def _unbatched(op, x: Tensor) -> Tensor:
    y = apply(op, x.reshape(1, *x.shape))
    return y.reshape(*y.shape[1:])


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """2-D max pooling as torch.nn.functional.max_pool2d (stride defaults to
    kernel_size; padding at most half the dilated kernel; ties: the first
    largest value). With return_indices, also the int64 flat index in each
    plane of every maximum (computed again eagerly: not a graph value)."""
    op = OC.MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode)
    y = _pooled(op, x)
    if not return_indices:
        return y
    batched = x.data if x.ndim == 4 else x.data.reshape(1, *x.shape)
    outs = [np.empty(spec.shape, spec.dtype) for spec in op.infer(O.Spec(batched.shape))]
    op.forward(outs, [batched])
    indices = outs[1].astype(np.int64)
    return y, Tensor(indices.reshape(y.shape))


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> Tensor:
    """2-D average pooling as torch.nn.functional.avg_pool2d."""
    return _pooled(OC.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), x)


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Adaptive 2-D average pooling to output_size (an int or (OH, OW); 1 is global pooling)."""
    return _pooled(OC.AdaptiveAvgPool2d(output_size), x)


def batch_norm(x: Tensor, running_mean, running_var, weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum=0.1, eps: float = 1e-5, num_batches_tracked=None) -> Tensor:
    """Batch norm per channel of x (N, C, ...), as torch.nn.functional.batch_norm.

    training: normalise with the batch's mean and biased variance, and update
    running_mean / running_var in place (when given) with momentum, the
    variance unbiased; else use them. They are float32 (C,) arrays or
    Tensors (or None). A batch of one value per channel in training raises
    ValueError, as in PyTorch.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm: x must be a Tensor, got {type(x).__name__}")
    running_mean, running_var = (_buffer_array(b, name) for b, name in
                                 ((running_mean, "running_mean"), (running_var, "running_var")))
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm: training=False needs running_mean and running_var")
    if training and x.ndim >= 2 and x.size // max(x.shape[1], 1) <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input size {x.shape}")
    counter = None if num_batches_tracked is None else _buffer_array(num_batches_tracked, "num_batches_tracked")
    op = OC.BatchNorm(running_mean, running_var, counter, training, momentum, eps, weight is not None,
                      bias is not None)
    return apply(op, x, *(t for t in (weight, bias) if t is not None))


def _buffer_array(value, name: str):
    if value is None:
        return None
    array = value.data if isinstance(value, Tensor) else value
    if not isinstance(array, np.ndarray):
        raise TypeError(f"batch_norm: {name} must be a Tensor or numpy array, got {type(value).__name__}")
    return array


def relu(x: Tensor) -> Tensor:
    return x.relu()


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU as torch.nn.functional.gelu: x Phi(x) with Phi the normal CDF (approximate='none', the
    default, BERT's), or 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (approximate='tanh', GPT-2's)."""
    return x.gelu(approximate)


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


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMS norm over the last axis, as torch.nn.functional.rms_norm: input * rsqrt(mean(input^2) + eps) * weight
    (no mean subtracted, no bias; T5's layer norm). normalized_shape: the last dimension (an int or a
    1-tuple); weight (that dimension,) or None (ones); eps None is float32's machine epsilon, as torch."""
    if not isinstance(input, Tensor):
        raise TypeError(f"rms_norm: input must be a Tensor, got {type(input).__name__}")
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if len(shape) != 1 or input.ndim < 1 or input.shape[-1] != shape[0]:
        raise ValueError(f"rms_norm: normalized_shape {shape} must be the last dimension of input {input.shape} "
                         f"(one dimension is supported)")
    eps = float(np.finfo(np.float32).eps) if eps is None else float(eps)
    weight = Tensor(np.ones(shape, np.float32)) if weight is None else weight
    return apply(O.RMSNorm(eps), input, weight)


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
        try:
            np.broadcast_shapes(input.shape, target.shape)
        except ValueError:
            raise ValueError(f"{fn}: target size {target.shape} does not broadcast with input size "
                             f"{input.shape}") from None
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


# ------------------------------------------------------------------ transformer building blocks


def embedding(input, weight: Tensor) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) at the integer indices `input`
    (an int64 or int32 Tensor or numpy array of any shape (*)): a (*, dim)
    tensor, as torch.nn.functional.embedding. An index outside
    [0, num_embeddings) is a ValueError naming it. The gradient scatter-adds
    into weight's, repeated indices summed (padding_idx, max_norm and sparse
    gradients are not supported)."""
    idx = input if isinstance(input, Tensor) else Tensor(input)
    if not isinstance(weight, Tensor):
        raise TypeError(f"embedding: weight must be a Tensor, got {type(weight).__name__}")
    return apply(Embedding(), weight, idx)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the others by 1 / (1 - p),
    as torch.nn.functional.dropout. Element e is kept iff philox(seed, stream,
    e) >= p, the stream fresh from pyengine's generator at each call (see
    pyengine.random: replayed graphs draw what eager steps would). With
    training=False or p=0 it returns `input` itself, running nothing.
    inplace=True is not supported (ValueError)."""
    p = check_probability("dropout", p)
    if inplace:
        raise ValueError("dropout: inplace=True is not supported")
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout: input must be a Tensor, got {type(input).__name__}")
    if not training or p == 0.0:
        return input
    return apply(Dropout(p), input, R.next_rng_input())


def dropout_add(input: Tensor, residual: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """residual + dropout(input, p, training), in one pass over the three
    arrays (a transformer block's x + dropout(proj)); the mask is the one
    dropout would draw from the same stream."""
    p = check_probability("dropout_add", p)
    for name, value in (("input", input), ("residual", residual)):
        if not isinstance(value, Tensor):
            raise TypeError(f"dropout_add: {name} must be a Tensor, got {type(value).__name__}")
    if not training or p == 0.0:
        try:
            return residual + input
        except ValueError as error:
            raise ValueError(f"dropout_add: {error}") from None
    return apply(DropoutAdd(p), residual, input, R.next_rng_input())


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
        inputs.append(R.next_rng_input())
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
                  dropout_p: float = 0.0, attn_mask=None) -> Tensor:
    """Attention straight from a fused QKV projection: qkv (B, T, 3, H, D) (q, k, v along dim 2, as
    ``linear(x, w_qkv).view(B, T, 3, H, D)`` gives them) -> (B, T, H, D), ready for the output
    projection: no transposes. Equals scaled_dot_product_attention on the (B, H, T, D) transposes;
    causal by default, scale 1 / sqrt(D) by default; the backward writes d(qkv) in place.
    attn_mask as scaled_dot_product_attention's, broadcast to (B, H, T, T) (a padding mask: (B, 1, 1, T))."""
    if not isinstance(qkv, Tensor):
        raise TypeError(f"qkv_attention: qkv must be a Tensor, got {type(qkv).__name__}")
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv_attention: qkv must be (B, T, 3, H, D), got shape {qkv.shape}")
    scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
    inputs = [qkv]
    if attn_mask is not None:
        inputs.append(_additive_mask("qkv_attention", attn_mask))
    if dropout_p > 0:
        inputs.append(R.next_rng_input())
    op = OA.QKVAttention(is_causal=is_causal, scale=scale, dropout_p=dropout_p, has_mask=attn_mask is not None,
                         has_rng=dropout_p > 0)
    return apply(op, *inputs)
