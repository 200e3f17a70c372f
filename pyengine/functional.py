"""Functions on tensors, with the names PyTorch users know (torch.nn.functional)."""

from __future__ import annotations

from pyengine import ops as O
from pyengine.tensor import Tensor, apply

__all__ = ["linear", "conv2d", "relu", "gelu", "tanh", "sigmoid", "silu", "softmax", "log_softmax", "layer_norm",
           "cross_entropy"]


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


def cross_entropy(logits: Tensor, target, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of (rows, classes) logits against integer class targets."""
    if not isinstance(target, Tensor):
        target = Tensor(target)
    return apply(O.CrossEntropy(ignore_index), logits, target)
