"""softmax, log_softmax and layer_norm at a transformer's shapes, pyengine beside torch (and
numpy, numba where test_kernels.py has them), with the FMA probe in the same run.

Groups (forward, backward and forward+backward each):

- ``softmax`` and ``log_softmax`` over (1024, 50257), the LM head's vocabulary, and over
  (2048, 1024) and (2048, 256), attention-like rows;
- ``layer_norm`` over rows = B*T in {2048, 8192} of cols in {256, 768}.

The softmax and layer_norm builders are test_kernels.py's (one kernel each); log_softmax is
registered here. Run e.g. ``pytest benchmarks/test_transformer_rows.py --threads 2
--benchmark-json /tmp/rows.json -q; python benchmarks/compare.py /tmp/rows.json``.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import _softmax_inputs, _torch_views, layer_norm, softmax

import pyengine.kernels as K

from base import PASSES, Case, kernel, parametrize, run, run_fma_probe

SOFTMAX_SHAPES = ((1024, 50257), (2048, 1024), (2048, 256))
LAYER_NORM_SHAPES = ((2048, 256), (2048, 768), (8192, 256), (8192, 768))


def _case(name, shape, pass_name):
    rounds = 20 if shape[0] * shape[1] > 8_000_000 else 60
    return Case(name, pass_name, f"{name} {pass_name} {shape} (transformer)", shape, rounds=rounds)


CASES = ([_case(name, shape, p) for name in ("softmax", "log_softmax") for shape in SOFTMAX_SHAPES
          for p in PASSES]
         + [_case("layer_norm", shape, p) for shape in LAYER_NORM_SHAPES for p in PASSES])

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


assert softmax.name == "softmax" and layer_norm.name == "layer_norm"  # the shared builders


@parametrize(CASES, impls=("pyengine", "torch", "numpy"))
def test_transformer_rows(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)


@pytest.mark.parametrize("impl", ["pyengine"])
def test_fma_probe(benchmark, threads, impl):
    run_fma_probe(benchmark, threads, threads)
