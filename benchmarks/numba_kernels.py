"""Hand-written numba kernels for the benchmark peers (row-parallel, float32).

Forward kernels write into preallocated outputs; backward kernels overwrite
their gradient outputs (they do not accumulate like pyengine's).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_JIT = dict(parallel=True, fastmath=False, cache=True)
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
