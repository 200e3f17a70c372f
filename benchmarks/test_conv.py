"""2-D convolution benchmarks on ResNet-50 shapes at batch 8: pyengine against torch and numpy.

Groups (one row per implementation, the ``impl`` parameter), named pass and layer:

- ``3x3 64->64 @56`` pad 1, ``1x1 256->64 @56``, ``3x3 128->128 @28`` pad 1,
  ``3x3 256->256 @14`` pad 1 and the ``7x7/2 3->64 @224`` stem (stride 2, pad 3), each with a
  bias, NCHW float32;
- ``forward`` (y from x, weight, bias) and ``forward+backward`` (y, then the gradients of x,
  weight and bias from a given grad_y).

pyengine runs ``pyengine.kernels.conv2d`` / ``conv2d_backward`` (im2col + its GEMM) into
preallocated buffers, its backward accumulating (``+=``). torch runs
``torch.nn.functional.conv2d`` (its output allocated per call, as in a model) and, for the
backward, ``aten.convolution_backward``, the kernel torch's autograd calls for a convolution,
without the autograd bookkeeping. numpy (forward only: it has no autodiff) pads x into a
preallocated buffer, copies its ``sliding_window_view`` windows into a preallocated (N, C*R*S,
OH*OW) im2col array and multiplies by the (K, C*R*S) weight with ``np.matmul``, then adds the
bias. numba has no convolution here and is not a row.

Each case runs once untimed (first touch, JIT, the allocator's first pages), and each peer's
outputs are checked against pyengine's on the same inputs before timing; each row then waits
half a second, so that the thread pools of the row before stop spinning on the cores. ``extra_info["flops"]``
(2 N K OH OW C R S per pass, three passes for forward+backward) makes ``compare.py`` print a
GFLOP/s table. The file takes about 30 s at ``--threads 2`` on 2 cores.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import pytest

import pyengine.kernels as K

CONV_IMPLS = ("pyengine", "torch", "numpy")
REFERENCE = "pyengine"
RTOL = 1e-3  # loose: the check only guards against timing a wrong kernel
BATCH = 8

_f32 = np.float32


@dataclass(frozen=True)
class Conv:
    layer: str
    c: int
    k: int
    hw: int      # input height = width
    kernel: int
    stride: int
    padding: int

    @property
    def x_shape(self):
        return (BATCH, self.c, self.hw, self.hw)

    @property
    def w_shape(self):
        return (self.k, self.c, self.kernel, self.kernel)

    @property
    def y_shape(self):
        return K.conv2d_shape(self.x_shape, self.w_shape, self.stride, self.padding)

    @property
    def flops(self):
        return 2 * int(np.prod(self.y_shape)) * self.c * self.kernel * self.kernel


LAYERS = [
    Conv("3x3 64->64 @56 pad 1", 64, 64, 56, 3, 1, 1),
    Conv("1x1 256->64 @56", 256, 64, 56, 1, 1, 0),
    Conv("3x3 128->128 @28 pad 1", 128, 128, 28, 3, 1, 1),
    Conv("3x3 256->256 @14 pad 1", 256, 256, 14, 3, 1, 1),
    Conv("7x7/2 3->64 @224 pad 3 (stem)", 3, 64, 224, 7, 2, 3),
]
PASSES = {"forward": 30, "forward+backward": 15}  # pass: rounds


@dataclass(frozen=True)
class Case:
    conv: Conv
    pass_name: str

    @property
    def group(self):
        return f"conv2d {self.pass_name} resnet50 {self.conv.layer} batch {BATCH}"


CASES = [Case(conv, p) for conv in LAYERS for p in PASSES]


@functools.lru_cache(maxsize=1)  # the rows of a layer run back to back
def inputs(conv):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal(conv.x_shape, dtype=_f32),
            "weight": rng.standard_normal(conv.w_shape, dtype=_f32) * _f32(0.05),
            "bias": rng.standard_normal(conv.k, dtype=_f32),
            "grad_y": rng.standard_normal(conv.y_shape, dtype=_f32)}


# ---------------------------------------------------------------- implementations
# Each builder returns (forward, backward, outputs): argument-less callables and a function
# giving {name: numpy array} after a run; backward is None where the impl has none.


def _pyengine(conv, a):
    geometry = {"stride": conv.stride, "padding": conv.padding}
    y = np.empty(conv.y_shape, _f32)
    grads = {"grad_x": np.zeros_like(a["x"]), "grad_weight": np.zeros_like(a["weight"]),
             "grad_bias": np.zeros_like(a["bias"])}

    def forward():
        K.conv2d(a["x"], a["weight"], a["bias"], **geometry, out=y)

    def backward():
        K.conv2d_backward(a["grad_y"], a["x"], a["weight"], **geometry, with_bias=True, **grads)

    return forward, backward, lambda: {"y": y, **grads}


def _torch(conv, a):
    import torch

    t = {name: torch.from_numpy(arr) for name, arr in a.items()}
    stride, padding = [conv.stride] * 2, [conv.padding] * 2
    result = {}

    def forward():
        result["y"] = torch.nn.functional.conv2d(t["x"], t["weight"], t["bias"], stride, padding)

    def backward():
        result["grad_x"], result["grad_weight"], result["grad_bias"] = \
            torch.ops.aten.convolution_backward(t["grad_y"], t["x"], t["weight"], [conv.k], stride,
                                                padding, [1, 1], False, [0, 0], 1,
                                                [True, True, True])

    return forward, backward, lambda: {name: v.numpy() for name, v in result.items()}


def _numpy(conv, a):
    n, c, h, w = conv.x_shape
    r, p, s = conv.kernel, conv.padding, conv.stride
    _, k, oh, ow = conv.y_shape
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), _f32)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (r, r), axis=(2, 3))[:, :, ::s, ::s]
    cols = np.empty((n, c, r, r, oh, ow), _f32)
    weight = a["weight"].reshape(k, c * r * r)
    y = np.empty(conv.y_shape, _f32)
    bias = a["bias"].reshape(k, 1, 1)

    def forward():
        padded[:, :, p:p + h, p:p + w] = a["x"]
        np.copyto(cols, windows.transpose(0, 1, 4, 5, 2, 3))  # (N, C, R, S, OH, OW)
        np.matmul(weight, cols.reshape(n, c * r * r, oh * ow), out=y.reshape(n, k, oh * ow))
        np.add(y, bias, out=y)

    return forward, None, lambda: {"y": y}


BUILDERS = {"pyengine": _pyengine, "torch": _torch, "numpy": _numpy}


def make_case(impl, case):
    """Build a case and run it once, untimed. Returns (the callable to time, its outputs)."""
    forward, backward, outputs = BUILDERS[impl](case.conv, inputs(case.conv))
    if case.pass_name == "forward":
        forward()
        return forward, {"y": outputs()["y"]}

    def forward_backward():
        forward()
        backward()

    forward_backward()
    return forward_backward, outputs()


@functools.lru_cache(maxsize=1)
def reference_outputs(case):
    """pyengine's outputs after one run, kept while the group's peers are checked."""
    _, outputs = make_case(REFERENCE, case)
    return {name: arr.copy() for name, arr in outputs.items()}


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.group)
def test_conv2d(benchmark, threads, case, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    if impl == "numpy" and case.pass_name != "forward":
        pytest.skip("numpy has no autodiff: forward only")
    timed, outputs = make_case(impl, case)
    if impl != REFERENCE:
        for name, want in reference_outputs(case).items():
            atol = RTOL * float(np.abs(want).max())
            np.testing.assert_allclose(outputs[name], want, rtol=RTOL, atol=atol,
                                       err_msg=f"{impl} {case.group}: {name} differs from {REFERENCE}")
    del outputs
    benchmark.group = case.group
    passes = 1 if case.pass_name == "forward" else 3
    benchmark.extra_info.update(threads=threads, pass_name=case.pass_name, layer=case.conv.layer,
                                x_shape=list(case.conv.x_shape), w_shape=list(case.conv.w_shape),
                                flops=passes * case.conv.flops)
    # The previous row's thread pools (OpenBLAS, torch's OpenMP) keep spinning for a while after
    # their last call, on the cores this row needs: measured, pyengine's first two backward
    # calls after a numpy matmul took 1.8x as long. Let them go to sleep first.
    time.sleep(0.5)
    benchmark.pedantic(timed, rounds=PASSES[case.pass_name], iterations=1, warmup_rounds=1)
