"""softmax, log_softmax and layer_norm at a transformer's shapes, pyengine beside torch (and
numpy, numba where test_kernels.py has them), with the FMA probe in the same run.

Groups (forward, backward and forward+backward each):

- ``softmax`` and ``log_softmax`` over (1024, 50257), the LM head's vocabulary, and over
  (2048, 1024) and (2048, 256), attention-like rows;
- ``layer_norm`` over rows = B*T in {2048, 8192} of cols in {256, 768};
- ``add_layer_norm`` (layer_norm(a + b), a post-LN block's residual add and its norm, which the
  executor fuses in eval graphs) at the same shapes: torch runs ``aten.add`` into a buffer, then
  its layer norm; its backward writes grad_a and copies it to grad_b (autograd would hand both
  the same tensor; the copy lets the base check both).

The softmax and layer_norm builders are test_kernels.py's (one kernel each); log_softmax and
add_layer_norm are registered here. Run e.g. ``pytest benchmarks/test_transformer_rows.py --threads 2
--benchmark-json /tmp/rows.json -q; python benchmarks/compare.py /tmp/rows.json``.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import EPS, _softmax_inputs, _torch_views, layer_norm, softmax

import pyengine.kernels as K

from base import PASSES, Case, kernel, parametrize, run, run_fma_probe

SOFTMAX_SHAPES = ((1024, 50257), (2048, 1024), (2048, 256))
LAYER_NORM_SHAPES = ((2048, 256), (2048, 768), (8192, 256), (8192, 768))


def _case(name, shape, pass_name):
    rounds = 20 if shape[0] * shape[1] > 8_000_000 else 60
    return Case(name, pass_name, f"{name} {pass_name} {shape} (transformer)", shape, rounds=rounds)


CASES = ([_case(name, shape, p) for name in ("softmax", "log_softmax") for shape in SOFTMAX_SHAPES
          for p in PASSES]
         + [_case(name, shape, p) for name in ("layer_norm", "add_layer_norm") for shape in LAYER_NORM_SHAPES
            for p in PASSES])

log_softmax = kernel("log_softmax", inputs=_softmax_inputs,
                     ops=("log_softmax_forward", "log_softmax_backward"))


@log_softmax.impl("pyengine")
def pyengine_log_softmax(case, b):
    def forward():
        K.log_softmax(b.x, out=b.y)

    def backward():
        K.log_softmax_backward(b.grad_y, b.y, grad_x=b.grad_x)

    return forward, backward


@log_softmax.impl("torch")
def torch_log_softmax(case, b):
    import torch

    aten, t = torch.ops.aten, _torch_views(b)

    def forward():
        aten._log_softmax.out(t.x, -1, False, out=t.y)

    def backward():
        aten._log_softmax_backward_data.out(t.grad_y, t.y, -1, torch.float32, out=t.grad_x)

    return forward, backward


@log_softmax.impl("numpy")
def numpy_log_softmax(case, b):
    shifted = np.empty_like(b.x)
    column = np.empty((b.x.shape[0], 1), dtype=np.float32)

    def forward():
        np.max(b.x, axis=1, keepdims=True, out=column)
        np.subtract(b.x, column, out=shifted)
        np.exp(shifted, out=b.y)
        np.sum(b.y, axis=1, keepdims=True, out=column)
        np.log(column, out=column)
        np.subtract(shifted, column, out=b.y)

    def backward():
        np.sum(b.grad_y, axis=1, keepdims=True, out=column)
        np.exp(b.y, out=b.grad_x)
        np.multiply(b.grad_x, column, out=b.grad_x)
        np.subtract(b.grad_y, b.grad_x, out=b.grad_x)

    return forward, backward


def _add_layer_norm_inputs(case):
    rng = np.random.default_rng(0)
    rows, cols = case.shape
    return {name: rng.standard_normal(shape, dtype=np.float32)
            for name, shape in (("a", (rows, cols)), ("b", (rows, cols)), ("weight", (cols,)),
                                ("bias", (cols,)), ("grad_y", (rows, cols)))}


add_layer_norm = kernel("add_layer_norm", inputs=_add_layer_norm_inputs,
                        ops=("add_layer_norm_forward", "add_layer_norm_backward"))


@add_layer_norm.impl("pyengine")
def pyengine_add_layer_norm(case, b):
    def forward():
        K.add_layer_norm(b.a, b.b, b.weight, b.bias, eps=EPS, out=b.y, mean=b.mean, rstd=b.rstd)

    def backward():
        K.add_layer_norm_backward(b.grad_y, b.a, b.b, b.weight, b.mean, b.rstd, grad_a=b.grad_a,
                                  grad_b=b.grad_b, grad_weight=b.grad_weight, grad_bias=b.grad_bias)

    return forward, backward


@add_layer_norm.impl("torch")
def torch_add_layer_norm(case, b):
    import torch

    aten, t = torch.ops.aten, _torch_views(b)
    total = torch.empty_like(t.a)  # a + b, which torch writes and its backward reads
    normalized_shape = [b.a.shape[-1]]

    def forward():
        aten.add.out(t.a, t.b, out=total)
        aten.native_layer_norm.out(total, normalized_shape, t.weight, t.bias, EPS,
                                   out0=t.y, out1=t.mean, out2=t.rstd)

    def backward():
        aten.native_layer_norm_backward.out(
            t.grad_y, total, normalized_shape, t.mean, t.rstd, t.weight, t.bias,
            [True, True, True], out0=t.grad_a, out1=t.grad_weight, out2=t.grad_bias)
        t.grad_b.copy_(t.grad_a)

    return forward, backward


assert softmax.name == "softmax" and layer_norm.name == "layer_norm"  # the shared builders


@parametrize(CASES, impls=("pyengine", "torch", "numpy"))
def test_transformer_rows(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)


@pytest.mark.parametrize("impl", ["pyengine"])
def test_fma_probe(benchmark, threads, impl):
    run_fma_probe(benchmark, threads, threads)
