"""matmul, softmax and layer_norm: pyengine against numpy, torch and numba, grouped side by side.

Groups (one row per implementation, the ``impl`` parameter):

- ``matmul NxN`` for N = 256, 512, 1024 and 2048 (forward);
- ``softmax`` and ``layer_norm`` on (8192, 1024) and (4096, 768): forward, backward and
  forward+backward.

numpy runs vectorized float32 ufuncs, torch its aten ops (no autograd), numba the hand-written
kernels of ``numba_kernels.py``; all write into the case's preallocated buffers (see base.py).
pyengine's backward kernels accumulate into the gradient buffers (``+=``); the peers overwrite
them, which is their natural (and cheaper) form.

Run with ``pytest benchmarks/ --benchmark-only`` (see README.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pyengine.kernels as K

from base import PASSES, Case, kernel, parametrize, run

MATMUL_SIZES = (256, 512, 1024, 2048)
ROW_SHAPES = ((8192, 1024), (4096, 768))
EPS = 1e-5


def _matmul_case(n):
    rounds = {256: 200, 512: 100, 1024: 30}.get(n, 10)
    return Case("matmul", "forward", f"matmul {n}x{n}", (n, n), rounds=rounds,
                impl_rounds=(("numba", 5),) if n >= 2048 else ())


def _row_case(name, shape, pass_name):
    rounds = 50 if shape[0] * shape[1] > 4_000_000 else 100
    return Case(name, pass_name, f"{name} {pass_name} {shape}", shape, rounds=rounds)


MATMUL_CASES = [_matmul_case(n) for n in MATMUL_SIZES]
ROW_CASES = [_row_case(name, shape, p)
             for name in ("softmax", "layer_norm") for shape in ROW_SHAPES for p in PASSES]


def _normal(rng, *dims):
    return rng.standard_normal(dims, dtype=np.float32)


def _matmul_inputs(case):
    rng = np.random.default_rng(0)
    rows, cols = case.shape
    return {"a": _normal(rng, rows, cols), "b": _normal(rng, cols, cols)}


def _softmax_inputs(case):
    rng = np.random.default_rng(0)
    return {"x": _normal(rng, *case.shape), "grad_y": _normal(rng, *case.shape)}


def _layer_norm_inputs(case):
    rng = np.random.default_rng(0)
    rows, cols = case.shape
    return {"x": _normal(rng, rows, cols), "weight": _normal(rng, cols),
            "bias": _normal(rng, cols), "grad_y": _normal(rng, rows, cols)}


matmul = kernel("matmul", inputs=_matmul_inputs, ops=("matmul_forward",))
softmax = kernel("softmax", inputs=_softmax_inputs, ops=("softmax_forward", "softmax_backward"))
layer_norm = kernel("layer_norm", inputs=_layer_norm_inputs,
                    ops=("layer_norm_forward", "layer_norm_backward"))


def _row_scratch(b):
    """A (rows, 1) float32 scratch column for per-row reductions."""
    return np.empty((b.x.shape[0], 1), dtype=np.float32)


# ---------------------------------------------------------------- pyengine


@matmul.impl("pyengine")
def pyengine_matmul(case, b):
    return lambda: K.matmul(b.a, b.b, out=b.c), None


@softmax.impl("pyengine")
def pyengine_softmax(case, b):
    def forward():
        K.softmax(b.x, out=b.y)

    def backward():
        K.softmax_backward(b.grad_y, b.y, grad_x=b.grad_x)

    return forward, backward


@layer_norm.impl("pyengine")
def pyengine_layer_norm(case, b):
    def forward():
        K.layer_norm(b.x, b.weight, b.bias, eps=EPS, out=b.y, mean=b.mean, rstd=b.rstd)

    def backward():
        K.layer_norm_backward(b.grad_y, b.x, b.weight, b.mean, b.rstd, grad_x=b.grad_x,
                              grad_weight=b.grad_weight, grad_bias=b.grad_bias)

    return forward, backward


# ---------------------------------------------------------------- numpy (vectorized, float32)


@matmul.impl("numpy")
def numpy_matmul(case, b):
    return lambda: np.matmul(b.a, b.b, out=b.c), None


@softmax.impl("numpy")
def numpy_softmax(case, b):
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


@layer_norm.impl("numpy")
def numpy_layer_norm(case, b):
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


@matmul.impl("torch")
def torch_matmul(case, b):
    import torch

    t = _torch_views(b)
    return lambda: torch.mm(t.a, t.b, out=t.c), None


@softmax.impl("torch")
def torch_softmax(case, b):
    import torch

    aten, t = torch.ops.aten, _torch_views(b)

    def forward():
        aten._softmax.out(t.x, -1, False, out=t.y)

    def backward():
        aten._softmax_backward_data.out(t.grad_y, t.y, -1, torch.float32, grad_input=t.grad_x)

    return forward, backward


@layer_norm.impl("torch")
def torch_layer_norm(case, b):
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


@matmul.impl("numba")
def numba_matmul(case, b):
    import numba_kernels as nk

    return lambda: nk.matmul(b.a, b.b, b.c), None


@softmax.impl("numba")
def numba_softmax(case, b):
    import numba_kernels as nk

    def forward():
        nk.softmax_forward(b.x, b.y)

    def backward():
        nk.softmax_backward(b.grad_y, b.y, b.grad_x)

    return forward, backward


@layer_norm.impl("numba")
def numba_layer_norm(case, b):
    import numba

    import numba_kernels as nk

    partial = np.empty((numba.get_num_threads(), 2, b.x.shape[1]), dtype=np.float32)

    def forward():
        nk.layer_norm_forward(b.x, b.weight, b.bias, EPS, b.y, b.mean, b.rstd)

    def backward():
        nk.layer_norm_backward(b.grad_y, b.x, b.weight, b.mean, b.rstd,
                               b.grad_x, b.grad_weight, b.grad_bias, partial)

    return forward, backward


# ---------------------------------------------------------------- benchmarks


@parametrize(MATMUL_CASES)
def test_matmul(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)


@parametrize(ROW_CASES)
def test_row_kernel(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)

