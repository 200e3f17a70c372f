"""The four implementations (pyengine, numpy, torch, numba) of each benchmarked kernel.

``build(impl, kernel, buffers)`` returns ``(forward, backward)``: two
argument-less callables that read the inputs of ``buffers`` (a namespace of
float32 numpy arrays, see ``cases.new_buffers``) and write its outputs in
place, so nothing is allocated while they are timed. ``backward`` reads what
``forward`` wrote (y, or mean and rstd) and is None for matmul.

pyengine's backward kernels accumulate into the gradient buffers (``+=``);
the peers overwrite them, which is their natural (and cheaper) form.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pyengine.kernels as K

IMPLS = ("pyengine", "numpy", "torch", "numba")
EPS = 1e-5

_BUILDERS = {}


def build(impl, kernel, buffers):
    return _BUILDERS[impl, kernel](buffers)


def _register(impl, kernel):
    def decorate(builder):
        _BUILDERS[impl, kernel] = builder
        return builder
    return decorate


def _row_scratch(b):
    """A (rows, 1) float32 scratch column for per-row reductions."""
    return np.empty((b.x.shape[0], 1), dtype=np.float32)


# ---------------------------------------------------------------- pyengine


@_register("pyengine", "matmul")
def pyengine_matmul(b):
    return lambda: K.matmul(b.a, b.b, out=b.c), None


@_register("pyengine", "softmax")
def pyengine_softmax(b):
    def forward():
        K.softmax(b.x, out=b.y)

    def backward():
        K.softmax_backward(b.grad_y, b.y, grad_x=b.grad_x)

    return forward, backward


@_register("pyengine", "layer_norm")
def pyengine_layer_norm(b):
    def forward():
        K.layer_norm(b.x, b.weight, b.bias, EPS, out=b.y, mean=b.mean, rstd=b.rstd)

    def backward():
        K.layer_norm_backward(b.grad_y, b.x, b.weight, b.mean, b.rstd, grad_x=b.grad_x,
                              grad_weight=b.grad_weight, grad_bias=b.grad_bias)

    return forward, backward


# ---------------------------------------------------------------- numpy (vectorized, float32)


@_register("numpy", "matmul")
def numpy_matmul(b):
    return lambda: np.matmul(b.a, b.b, out=b.c), None


@_register("numpy", "softmax")
def numpy_softmax(b):
    row = _row_scratch(b)

    def forward():
        np.max(b.x, axis=-1, keepdims=True, out=row)
        np.subtract(b.x, row, out=b.y)
        np.exp(b.y, out=b.y)
        np.sum(b.y, axis=-1, keepdims=True, out=row)
        np.divide(b.y, row, out=b.y)

    def backward():  # grad_x = y * (grad_y - sum(grad_y * y))
        np.multiply(b.grad_y, b.y, out=b.grad_x)
        np.sum(b.grad_x, axis=-1, keepdims=True, out=row)
        np.subtract(b.grad_y, row, out=b.grad_x)
        np.multiply(b.grad_x, b.y, out=b.grad_x)

    return forward, backward


@_register("numpy", "layer_norm")
def numpy_layer_norm(b):
    mean, rstd = b.mean[:, None], b.rstd[:, None]
    xhat, dxhat = np.empty_like(b.x), np.empty_like(b.x)
    row = _row_scratch(b)

    def forward():
        np.mean(b.x, axis=-1, keepdims=True, out=mean)
        np.subtract(b.x, mean, out=b.y)
        np.multiply(b.y, b.y, out=xhat)
        np.mean(xhat, axis=-1, keepdims=True, out=rstd)  # the variance, for now
        np.add(rstd, np.float32(EPS), out=rstd)
        np.sqrt(rstd, out=rstd)
        np.reciprocal(rstd, out=rstd)
        b.y *= rstd
        b.y *= b.weight
        b.y += b.bias

    def backward():  # grad_x = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        np.subtract(b.x, mean, out=xhat)
        np.multiply(xhat, rstd, out=xhat)
        np.multiply(b.grad_y, xhat, out=dxhat)
        np.sum(dxhat, axis=0, out=b.grad_weight)
        np.sum(b.grad_y, axis=0, out=b.grad_bias)
        np.multiply(b.grad_y, b.weight, out=dxhat)
        np.multiply(dxhat, xhat, out=b.grad_x)
        np.mean(b.grad_x, axis=-1, keepdims=True, out=row)
        np.multiply(xhat, row, out=b.grad_x)
        np.subtract(dxhat, b.grad_x, out=b.grad_x)
        np.mean(dxhat, axis=-1, keepdims=True, out=row)
        b.grad_x -= row
        b.grad_x *= rstd

    return forward, backward


# ---------------------------------------------------------------- torch (aten ops, no autograd)


def _torch_views(b):
    """Tensors sharing memory with every buffer; mean and rstd as (rows, 1) like aten's."""
    import torch

    t = SimpleNamespace(**{name: torch.from_numpy(arr) for name, arr in vars(b).items()})
    for name in ("mean", "rstd"):
        if hasattr(t, name):
            setattr(t, name, getattr(t, name).unsqueeze(1))
    return t


@_register("torch", "matmul")
def torch_matmul(b):
    import torch

    t = _torch_views(b)
    return lambda: torch.mm(t.a, t.b, out=t.c), None


@_register("torch", "softmax")
def torch_softmax(b):
    import torch

    aten, t = torch.ops.aten, _torch_views(b)

    def forward():
        aten._softmax.out(t.x, -1, False, out=t.y)

    def backward():
        aten._softmax_backward_data.out(t.grad_y, t.y, -1, torch.float32, grad_input=t.grad_x)

    return forward, backward


@_register("torch", "layer_norm")
def torch_layer_norm(b):
    import torch

    aten, t = torch.ops.aten, _torch_views(b)
    normalized_shape = [b.x.shape[-1]]

    def forward():
        aten.native_layer_norm.out(t.x, normalized_shape, t.weight, t.bias, EPS,
                                   out0=t.y, out1=t.mean, out2=t.rstd)

    def backward():
        aten.native_layer_norm_backward.out(
            t.grad_y, t.x, normalized_shape, t.mean, t.rstd, t.weight, t.bias,
            [True, True, True], out0=t.grad_x, out1=t.grad_weight, out2=t.grad_bias)

    return forward, backward


# ---------------------------------------------------------------- numba (hand-written, parallel)


@_register("numba", "matmul")
def numba_matmul(b):
    from . import numba_kernels as nk

    return lambda: nk.matmul(b.a, b.b, b.c), None


@_register("numba", "softmax")
def numba_softmax(b):
    from . import numba_kernels as nk

    def forward():
        nk.softmax_forward(b.x, b.y)

    def backward():
        nk.softmax_backward(b.grad_y, b.y, b.grad_x)

    return forward, backward


@_register("numba", "layer_norm")
def numba_layer_norm(b):
    import numba

    from . import numba_kernels as nk

    partial = np.empty((numba.get_num_threads(), 2, b.x.shape[1]), dtype=np.float32)

    def forward():
        nk.layer_norm_forward(b.x, b.weight, b.bias, EPS, b.y, b.mean, b.rstd)

    def backward():
        nk.layer_norm_backward(b.grad_y, b.x, b.weight, b.mean, b.rstd,
                               b.grad_x, b.grad_weight, b.grad_bias, partial)

    return forward, backward
