"""Hand-written numba kernels for the benchmark peers (row-parallel, float32).

Forward kernels write into preallocated outputs; backward kernels overwrite
their gradient outputs (they do not accumulate like pyengine's).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_JIT = {"parallel": True, "fastmath": False, "cache": True}
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@njit(**_JIT)
def matmul(a, b, c):
    """c = a @ b with a prange over the rows of c and an i-k-j inner loop."""
    k = a.shape[1]
    for i in prange(a.shape[0]):
        row = c[i]
        row[:] = _ZERO
        for p in range(k):
            scale = a[i, p]
            b_row = b[p]
            for j in range(row.size):
                row[j] += scale * b_row[j]


@njit(**_JIT)
def softmax_forward(x, y):
    for i in prange(x.shape[0]):
        row, out = x[i], y[i]
        peak = row[0]
        for j in range(1, row.size):
            peak = max(peak, row[j])
        total = _ZERO
        for j in range(row.size):
            e = np.exp(row[j] - peak)
            out[j] = e
            total += e
        scale = _ONE / total
        for j in range(row.size):
            out[j] *= scale


@njit(**_JIT)
def softmax_backward(grad_y, y, grad_x):
    for i in prange(y.shape[0]):
        g, s, out = grad_y[i], y[i], grad_x[i]
        dot = _ZERO
        for j in range(s.size):
            dot += g[j] * s[j]
        for j in range(s.size):
            out[j] = s[j] * (g[j] - dot)


@njit(**_JIT)
def layer_norm_forward(x, weight, bias, eps, y, mean, rstd):
    inv_n = _ONE / np.float32(x.shape[1])
    eps32 = np.float32(eps)
    for i in prange(x.shape[0]):
        row, out = x[i], y[i]
        total = _ZERO
        for j in range(row.size):
            total += row[j]
        mu = total * inv_n
        var = _ZERO
        for j in range(row.size):
            d = row[j] - mu
            var += d * d
        r = _ONE / np.sqrt(var * inv_n + eps32)
        mean[i], rstd[i] = mu, r
        for j in range(row.size):
            out[j] = (row[j] - mu) * r * weight[j] + bias[j]


@njit(**_JIT)
def layer_norm_backward(grad_y, x, weight, mean, rstd, grad_x, grad_weight, grad_bias, partial):
    """partial: (chunks, 2, n) scratch; each chunk of rows sums its own grad_weight/grad_bias."""
    rows, n = x.shape
    chunks = partial.shape[0]
    inv_n = _ONE / np.float32(n)
    for c in prange(chunks):
        part_w, part_b = partial[c, 0], partial[c, 1]
        part_w[:] = _ZERO
        part_b[:] = _ZERO
        for i in range(c * rows // chunks, (c + 1) * rows // chunks):
            g, row, out = grad_y[i], x[i], grad_x[i]
            mu, r = mean[i], rstd[i]
            sum_d = _ZERO
            sum_dx = _ZERO
            for j in range(n):
                xhat = (row[j] - mu) * r
                d = g[j] * weight[j]
                sum_d += d
                sum_dx += d * xhat
                part_w[j] += g[j] * xhat
                part_b[j] += g[j]
            c1, c2 = sum_d * inv_n, sum_dx * inv_n
            for j in range(n):
                xhat = (row[j] - mu) * r
                out[j] = r * (g[j] * weight[j] - c1 - xhat * c2)
    grad_weight[:] = _ZERO
    grad_bias[:] = _ZERO
    for c in range(chunks):
        for j in range(n):
            grad_weight[j] += partial[c, 0, j]
            grad_bias[j] += partial[c, 1, j]


# ---------------------------------------------------------------- elementwise ops, reductions,
# cross-entropy and SGD (benchmarks/test_ops.py). Elementwise kernels take flat (raveled) arrays.

_HALF = np.float32(0.5)
_THREE = np.float32(3.0)
_GELU_K = np.float32(np.sqrt(2.0 / np.pi))
_GELU_C = np.float32(0.044715)


@njit(**_JIT)
def add_rows(a, bias, c):
    """c = a + bias: a and c (rows, n), bias (n,) broadcast over the rows."""
    for i in prange(a.shape[0]):
        row, out = a[i], c[i]
        for j in range(row.size):
            out[j] = row[j] + bias[j]


@njit(**_JIT)
def mul_rows(a, scale, c):
    """c = a * scale: a and c (rows, n), scale (n,) broadcast over the rows."""
    for i in prange(a.shape[0]):
        row, out = a[i], c[i]
        for j in range(row.size):
            out[j] = row[j] * scale[j]


@njit(**_JIT)
def column_sum(x, out, partial):
    """out (n,) = x.sum(axis=0); partial: (chunks, n) scratch, one row per chunk of rows."""
    rows, n = x.shape
    chunks = partial.shape[0]
    for c in prange(chunks):
        part = partial[c]
        part[:] = _ZERO
        for i in range(c * rows // chunks, (c + 1) * rows // chunks):
            row = x[i]
            for j in range(n):
                part[j] += row[j]
    out[:] = _ZERO
    for c in range(chunks):
        for j in range(n):
            out[j] += partial[c, j]


@njit(**_JIT)
def add_rows_backward(grad_c, grad_a, grad_bias, partial):
    """Gradients of add_rows: grad_a = grad_c, grad_bias = grad_c.sum(axis=0), in one pass."""
    rows, n = grad_c.shape
    chunks = partial.shape[0]
    for c in prange(chunks):
        part = partial[c]
        part[:] = _ZERO
        for i in range(c * rows // chunks, (c + 1) * rows // chunks):
            g, out = grad_c[i], grad_a[i]
            for j in range(n):
                out[j] = g[j]
                part[j] += g[j]
    grad_bias[:] = _ZERO
    for c in range(chunks):
        for j in range(n):
            grad_bias[j] += partial[c, j]


@njit(**_JIT)
def row_sum(x, out):
    """out (rows,) = x.sum(axis=-1)."""
    for i in prange(x.shape[0]):
        row = x[i]
        total = _ZERO
        for j in range(row.size):
            total += row[j]
        out[i] = total


@njit(**_JIT)
def relu_forward(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = max(_ZERO, v)


@njit(**_JIT)
def gelu_forward(x, y):
    """Tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    for i in prange(x.size):
        v = x[i]
        t = np.tanh(_GELU_K * (v + _GELU_C * v * v * v))
        y[i] = _HALF * v * (_ONE + t)


@njit(**_JIT)
def gelu_backward(grad_y, x, grad_x):
    for i in prange(x.size):
        v = x[i]
        t = np.tanh(_GELU_K * (v + _GELU_C * v * v * v))
        dt = _GELU_K * (_ONE + _THREE * _GELU_C * v * v) * (_ONE - t * t)
        grad_x[i] = grad_y[i] * _HALF * (_ONE + t + v * dt)


@njit(**_JIT)
def cross_entropy_forward(logits, target, loss, lse):
    """loss (1,) = mean over rows of logsumexp(row) - row[target]; lse (rows,) is kept for
    the backward. Every target must be a valid class (no ignore_index)."""
    rows = logits.shape[0]
    for i in prange(rows):
        row = logits[i]
        peak = row[0]
        for j in range(1, row.size):
            peak = max(peak, row[j])
        total = _ZERO
        for j in range(row.size):
            total += np.exp(row[j] - peak)
        lse[i] = peak + np.log(total)
    acc = _ZERO
    for i in range(rows):
        acc += lse[i] - logits[i, target[i]]
    loss[0] = acc / np.float32(rows)


@njit(**_JIT)
def cross_entropy_backward(grad_loss, logits, target, lse, grad_logits):
    """grad_logits = (softmax(logits) - onehot(target)) * grad_loss[0] / rows, from the
    forward's lse."""
    rows = logits.shape[0]
    scale = grad_loss[0] / np.float32(rows)
    for i in prange(rows):
        row, out = logits[i], grad_logits[i]
        m = lse[i]
        for j in range(row.size):
            out[j] = np.exp(row[j] - m) * scale
        out[target[i]] -= scale


@njit(**_JIT)
def sgd_momentum(param, grad, buf, lr, momentum):
    """PyTorch's SGD step after the first: buf = momentum buf + grad; param -= lr buf."""
    for i in prange(param.size):
        b = momentum * buf[i] + grad[i]
        buf[i] = b
        param[i] -= lr * b


@njit(**_JIT)
def fill(out, value):
    """out[i] = value, across the threads."""
    for i in prange(out.size):
        out[i] = value
