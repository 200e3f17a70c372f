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
bias. numba has no convolution here (its rows are skipped).

Through the benchmark base (base.py), each case runs once untimed (first touch, JIT, the
allocator's first pages), and each peer's outputs are checked against pyengine's on the same
inputs before timing; each row then waits half a second (``Case.settle_s``), so that the
thread pools of the row before stop spinning on the cores. ``extra_info["flops"]`` (2 N K OH OW
C R S per pass, three passes for forward+backward) makes ``compare.py`` print a GFLOP/s table.
The file takes about 30 s at ``--threads 2`` on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import pyengine.kernels as K

from base import Case, kernel, parametrize, run

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
# The previous row's thread pools (OpenBLAS, torch's OpenMP) keep spinning for a while after
# their last call, on the cores the next row needs: measured, pyengine's first two backward
# calls after a numpy matmul took 1.8x as long. Each row lets them go to sleep first.
SETTLE_S = 0.5


def _case(conv, pass_name):
    passes = 1 if pass_name == "forward" else 3
    info = {"layer": conv.layer, "x_shape": conv.x_shape, "w_shape": conv.w_shape}
    return Case("conv2d", pass_name, f"conv2d {pass_name} resnet50 {conv.layer} batch {BATCH}",
                conv.x_shape, spec=conv, rounds=PASSES[pass_name], flops=passes * conv.flops,
                info=tuple(info.items()), settle_s=SETTLE_S)


CASES = [_case(conv, p) for conv in LAYERS for p in PASSES]


def _inputs(case):
    conv = case.spec
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal(conv.x_shape, dtype=_f32),
            "weight": rng.standard_normal(conv.w_shape, dtype=_f32) * _f32(0.05),
            "bias": rng.standard_normal(conv.k, dtype=_f32),
            "grad_y": rng.standard_normal(conv.y_shape, dtype=_f32)}


conv2d = kernel("conv2d", inputs=_inputs, ops=("conv2d_forward", "conv2d_backward"),
                options=lambda case: {"stride": case.spec.stride, "padding": case.spec.padding})


# ---------------------------------------------------------------- implementations


@conv2d.impl("pyengine")
def pyengine_conv2d(case, b):
    geometry = {"stride": case.spec.stride, "padding": case.spec.padding}

    def forward():
        K.conv2d(b.x, b.weight, b.bias, **geometry, out=b.y)

    def backward():
        K.conv2d_backward(b.grad_y, b.x, b.weight, **geometry, needs_bias=True,
                          grad_x=b.grad_x, grad_weight=b.grad_weight, grad_bias=b.grad_bias)

    return forward, backward


@conv2d.impl("torch")
def torch_conv2d(case, b):
    """F.conv2d allocates its output per call, as in a model: y is rebound to it."""
    import torch

    conv = case.spec
    x, weight, bias, grad_y = (torch.from_numpy(a) for a in (b.x, b.weight, b.bias, b.grad_y))
    stride, padding = [conv.stride] * 2, [conv.padding] * 2

    def forward():
        b.y = torch.nn.functional.conv2d(x, weight, bias, stride, padding)

    def backward():
        b.grad_x, b.grad_weight, b.grad_bias = torch.ops.aten.convolution_backward(
            grad_y, x, weight, [conv.k], stride, padding, [1, 1], False, [0, 0], 1,
            [True, True, True])

    return forward, backward


@conv2d.impl("numpy", skip=lambda case: None if case.pass_name == "forward"
              else "numpy has no autodiff: forward only")
def numpy_conv2d(case, b):
    conv = case.spec
    n, c, h, w = conv.x_shape
    r, p, s = conv.kernel, conv.padding, conv.stride
    _, k, oh, ow = conv.y_shape
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), _f32)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (r, r), axis=(2, 3))[:, :, ::s, ::s]
    cols = np.empty((n, c, r, r, oh, ow), _f32)
    weight = b.weight.reshape(k, c * r * r)
    y = b.y.reshape(n, k, oh * ow)
    bias = b.bias.reshape(k, 1, 1)

    def forward():
        padded[:, :, p:p + h, p:p + w] = b.x
        np.copyto(cols, windows.transpose(0, 1, 4, 5, 2, 3))  # (N, C, R, S, OH, OW)
        np.matmul(weight, cols.reshape(n, c * r * r, oh * ow), out=y)
        np.add(b.y, bias, out=b.y)

    return forward, None


# ---------------------------------------------------------------- benchmarks


@parametrize(CASES)
def test_conv2d(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
