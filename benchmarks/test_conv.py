"""2-D convolution benchmarks on ResNet-18's layers at batch 8: pyengine against torch (oneDNN),
in its default and its channels_last memory format, and numpy.

Groups (one row per implementation, the ``impl`` parameter), named pass and layer:

- the ``7x7/2 3->64 @224`` stem; the 3x3 stride-1 layers of the four stages (``64 @56``,
  ``128 @28``, ``256 @14``, ``512 @7``); the 3x3 stride-2 and 1x1 stride-2 (projection) layers
  that open stages 2 to 4; a depthwise ``3x3 128 @28`` (MobileNet-style, groups = channels);
  each with a bias, float32;
- ``forward`` (y from x, weight, bias) and ``forward+backward`` (y, then the gradients of x,
  weight and bias from a given grad_y).

pyengine runs ``pyengine.kernels.conv2d`` / ``conv2d_backward`` (NCHW; Winograd F(4x4, 3x3)
for the 3x3 stride-1 layers, im2col + its GEMM for the rest, direct loops for depthwise) into
preallocated buffers, its backward accumulating (``+=``). torch runs
``torch.nn.functional.conv2d`` (its output allocated per call, as in a model) and, for the
backward, ``aten.convolution_backward``, the kernel torch's autograd calls for a convolution,
without the autograd bookkeeping; ``torch_channels_last`` does the same on channels_last tensors (x,
weight and grad_y converted once, outside the timing), the layout oneDNN prefers. A
``peak fma probe`` row (pyengine's register-only FMA loop) in the same run says what the
cores could do: quote the layers as ratios and fractions of it. numpy (forward only: it has no autodiff) pads x into a
preallocated buffer, copies its ``sliding_window_view`` windows into a preallocated (N, C*R*S,
OH*OW) im2col array and multiplies by the (K, C*R*S) weight with ``np.matmul``, then adds the
bias; it has no groups here (the depthwise rows are skipped). numba has no convolution here.

Through the benchmark base (base.py), each case runs once untimed (first touch, JIT, the
allocator's first pages), and each peer's outputs are checked against pyengine's on the same
inputs before timing; each row then waits half a second (``Case.settle_s``), so that the
thread pools of the row before stop spinning on the cores. ``extra_info["flops"]`` (2 N K OH OW
C R S per pass, three passes for forward+backward) makes ``compare.py`` print a GFLOP/s table.
The file takes about 3 minutes at ``--threads 2`` on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import pyengine.kernels as K

from base import IMPLS, Case, kernel, parametrize, run, run_fma_probe

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
    groups: int = 1

    @property
    def x_shape(self):
        return (BATCH, self.c, self.hw, self.hw)

    @property
    def w_shape(self):
        return (self.k, self.c // self.groups, self.kernel, self.kernel)

    @property
    def y_shape(self):
        return K.conv2d_shape(self.x_shape, self.w_shape, self.stride, self.padding, 1, self.groups)

    @property
    def flops(self):
        return 2 * int(np.prod(self.y_shape)) * self.c // self.groups * self.kernel * self.kernel


LAYERS = [
    Conv("7x7/2 3->64 @224 pad 3 (stem)", 3, 64, 224, 7, 2, 3),
    Conv("3x3 64->64 @56 pad 1", 64, 64, 56, 3, 1, 1),
    Conv("3x3 128->128 @28 pad 1", 128, 128, 28, 3, 1, 1),
    Conv("3x3 256->256 @14 pad 1", 256, 256, 14, 3, 1, 1),
    Conv("3x3 512->512 @7 pad 1", 512, 512, 7, 3, 1, 1),
    Conv("3x3/2 64->128 @56 pad 1", 64, 128, 56, 3, 2, 1),
    Conv("3x3/2 128->256 @28 pad 1", 128, 256, 28, 3, 2, 1),
    Conv("3x3/2 256->512 @14 pad 1", 256, 512, 14, 3, 2, 1),
    Conv("1x1/2 64->128 @56 (projection)", 64, 128, 56, 1, 2, 0),
    Conv("1x1/2 128->256 @28 (projection)", 128, 256, 28, 1, 2, 0),
    Conv("1x1/2 256->512 @14 (projection)", 256, 512, 14, 1, 2, 0),
    Conv("3x3 depthwise 128 @28 pad 1", 128, 128, 28, 3, 1, 1, groups=128),
]
PASSES = {"forward": 30, "forward+backward": 15}  # pass: rounds
# The previous row's thread pools (OpenBLAS, torch's OpenMP) keep spinning for a while after
# their last call, on the cores the next row needs: measured, pyengine's first two backward
# calls after a numpy matmul took 1.8x as long. Each row lets them go to sleep first.
SETTLE_S = 0.5


def _case(conv, pass_name):
    passes = 1 if pass_name == "forward" else 3
    info = {"layer": conv.layer, "x_shape": conv.x_shape, "w_shape": conv.w_shape}
    return Case("conv2d", pass_name, f"conv2d {pass_name} resnet18 {conv.layer} batch {BATCH}",
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
                options=lambda case: {"stride": case.spec.stride, "padding": case.spec.padding,
                                      "groups": case.spec.groups})
IMPLS_CONV = (*IMPLS, "torch_channels_last")


# ---------------------------------------------------------------- implementations


@conv2d.impl("pyengine")
def pyengine_conv2d(case, b):
    geometry = {"stride": case.spec.stride, "padding": case.spec.padding, "groups": case.spec.groups}

    def forward():
        K.conv2d(b.x, b.weight, b.bias, **geometry, out=b.y)

    def backward():
        K.conv2d_backward(b.grad_y, b.x, b.weight, **geometry, needs_bias=True,
                          grad_x=b.grad_x, grad_weight=b.grad_weight, grad_bias=b.grad_bias)

    return forward, backward


def _torch_conv2d(case, b, memory_format):
    import torch

    conv = case.spec
    x, weight, bias, grad_y = (torch.from_numpy(a) for a in (b.x, b.weight, b.bias, b.grad_y))
    x, weight, grad_y = (t.contiguous(memory_format=memory_format) for t in (x, weight, grad_y))
    stride, padding = [conv.stride] * 2, [conv.padding] * 2

    def forward():
        b.y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, 1, conv.groups)

    def backward():
        b.grad_x, b.grad_weight, b.grad_bias = torch.ops.aten.convolution_backward(
            grad_y, x, weight, [conv.k], stride, padding, [1, 1], False, [0, 0], conv.groups,
            [True, True, True])

    return forward, backward


@conv2d.impl("torch")
def torch_conv2d(case, b):
    """F.conv2d allocates its output per call, as in a model: y is rebound to it."""
    import torch

    return _torch_conv2d(case, b, torch.contiguous_format)


@conv2d.impl("torch_channels_last")
def torch_channels_last_conv2d(case, b):
    """The same on channels_last (NHWC in memory) tensors."""
    import torch

    return _torch_conv2d(case, b, torch.channels_last)


def _numpy_skip(case):
    if case.pass_name != "forward":
        return "numpy has no autodiff: forward only"
    return "numpy's im2col here has no groups" if case.spec.groups > 1 else None


@conv2d.impl("numpy", skip=_numpy_skip)
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


@parametrize(CASES, impls=IMPLS_CONV)
def test_conv2d(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)


@pytest.mark.parametrize("impl", IMPLS_CONV)
def test_fma_probe(benchmark, threads, impl):
    """The cores' floating-point limit in this run, at the benchmark's thread count."""
    if impl != "pyengine":
        pytest.skip("the FMA probe is pyengine's own (kernels.fma_probe)")
    run_fma_probe(benchmark, threads, threads)
