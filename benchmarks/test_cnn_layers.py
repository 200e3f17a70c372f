"""Pooling and batch norm at ResNet-18's shapes (batch 8), beside PyTorch's CPU kernels.

- ``max_pool2d`` 3x3 stride 2 padding 1 on the stem's (8, 64, 112, 112): forward (values and
  argmax) and forward+backward;
- ``adaptive_avg_pool2d`` to 1x1 (global pooling) on the head's (8, 512, 7, 7);
- ``batch_norm`` in training mode (batch statistics, running-average update) on (8, 64, 56, 56):
  forward and forward+backward (x, weight and bias).

torch runs the aten kernels nn.MaxPool2d, nn.AdaptiveAvgPool2d and nn.BatchNorm2d call
(``max_pool2d_with_indices``, ``_adaptive_avg_pool2d``, ``native_batch_norm`` and their
backwards); numpy has no such kernels (skipped). The base (base.py) checks torch's outputs
against pyengine's before timing.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pyengine.kernels as K

from base import Case, kernel, parametrize, run

_f32 = np.float32
POOL = (8, 64, 112, 112)
HEAD = (8, 512, 7, 7)
NORM = (8, 64, 56, 56)
WINDOW = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))

CASES = [Case("max_pool2d", "forward", "max_pool2d 3x3/2 forward (8, 64, 112, 112)", POOL, rounds=20),
         Case("max_pool2d", "forward+backward", "max_pool2d 3x3/2 forward+backward (8, 64, 112, 112)", POOL,
              rounds=20),
         Case("global_avg_pool", "forward+backward", "adaptive_avg_pool2d 1x1 forward+backward (8, 512, 7, 7)",
              HEAD, rounds=50),
         Case("batch_norm", "forward", "batch_norm train forward (8, 64, 56, 56)", NORM, rounds=20),
         Case("batch_norm", "forward+backward", "batch_norm train forward+backward (8, 64, 56, 56)", NORM,
              rounds=20)]


def _normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=_f32)


def _tensors(b):
    import torch

    return SimpleNamespace(**{name: torch.from_numpy(arr) for name, arr in vars(b).items()})


def _pool_inputs(case):
    out = (case.shape[0], case.shape[1], case.shape[2] // 2, case.shape[3] // 2)
    # grad_x's shape is what the backward's shape rule starts from (the base zeroes its buffer).
    return {"x": _normal(case.shape), "grad_y": _normal(out, seed=1), "grad_x": np.zeros(case.shape, _f32)}


max_pool = kernel("max_pool2d", inputs=_pool_inputs, ops=("max_pool2d_forward", "max_pool2d_backward"),
                  options=lambda case: WINDOW, missing="numpy has no max pooling kernel")


@max_pool.impl("pyengine")
def pyengine_max_pool(case, b):
    return (lambda: K.max_pool2d(b.x, out=b.y, indices=b.indices, **WINDOW),
            lambda: K.max_pool2d_backward(b.grad_y, b.indices, grad_x=b.grad_x, **WINDOW))


@max_pool.impl("torch")
def torch_max_pool(case, b):
    import torch

    aten, t = torch.ops.aten, _tensors(b)
    indices = torch.empty(b.y.shape, dtype=torch.int64)

    def forward():
        aten.max_pool2d_with_indices.out(t.x, [3, 3], [2, 2], [1, 1], [1, 1], False, out=t.y, indices=indices)
        b.indices = indices.numpy()

    def backward():
        aten.max_pool2d_with_indices_backward.grad_input(t.grad_y, t.x, [3, 3], [2, 2], [1, 1], [1, 1], False,
                                                         indices, grad_input=t.grad_x)

    return forward, backward


global_pool = kernel("global_avg_pool",
                     inputs=lambda case: {"x": _normal(case.shape), "grad_y": _normal(case.shape[:2] + (1, 1), 1),
                                          "grad_x": np.zeros(case.shape, _f32)},
                     ops=("adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward"),
                     options=lambda case: {"output_size": (1, 1)})


@global_pool.impl("pyengine")
def pyengine_global_pool(case, b):
    return (lambda: K.adaptive_avg_pool2d(b.x, out=b.y, output_size=(1, 1)),
            lambda: K.adaptive_avg_pool2d_backward(b.grad_y, grad_x=b.grad_x, output_size=(1, 1)))


@global_pool.impl("numpy")
def numpy_global_pool(case, b):
    hw = case.shape[2] * case.shape[3]

    def backward():
        b.grad_x += b.grad_y / _f32(hw)

    return lambda: np.mean(b.x, axis=(2, 3), keepdims=True, out=b.y), backward


@global_pool.impl("torch")
def torch_global_pool(case, b):
    import torch

    aten, t = torch.ops.aten, _tensors(b)

    def forward():
        t.y = aten._adaptive_avg_pool2d(t.x, [1, 1])
        b.y = t.y.numpy()

    def backward():
        b.grad_x = aten._adaptive_avg_pool2d_backward(t.grad_y, t.x).numpy()

    return forward, backward


def _norm_inputs(case):
    c = case.shape[1]
    return {"x": _normal(case.shape) * _f32(2) + _f32(1), "weight": _normal(c, 2), "bias": _normal(c, 3),
            "running_mean": np.zeros(c, _f32), "running_var": np.ones(c, _f32), "grad_y": _normal(case.shape, 4)}


batch_norm = kernel("batch_norm", inputs=_norm_inputs, ops=("batch_norm_forward", "batch_norm_backward"),
                    missing="numpy has no batch norm kernel")


@batch_norm.impl("pyengine")
def pyengine_batch_norm(case, b):
    def forward():
        K.batch_norm(b.x, b.running_mean, b.running_var, b.weight, b.bias, training=True, out=b.y,
                     save_mean=b.save_mean, save_rstd=b.save_rstd)

    def backward():
        K.batch_norm_backward(b.grad_y, b.x, b.weight, b.save_mean, b.save_rstd, training=True, grad_x=b.grad_x,
                              grad_weight=b.grad_weight, grad_bias=b.grad_bias)

    return forward, backward


@batch_norm.impl("torch")
def torch_batch_norm(case, b):
    import torch

    aten, t = torch.ops.aten, _tensors(b)
    saved = {}

    def forward():
        y, mean, invstd = aten.native_batch_norm(t.x, t.weight, t.bias, t.running_mean, t.running_var, True,
                                                 0.1, 1e-5)
        saved.update(mean=mean, invstd=invstd)
        b.y, b.save_mean, b.save_rstd = y.numpy(), mean.numpy(), invstd.numpy()

    def backward():
        gx, gw, gb = aten.native_batch_norm_backward(t.grad_y, t.x, t.weight, t.running_mean, t.running_var,
                                                     saved["mean"], saved["invstd"], True, 1e-5, [True] * 3)
        b.grad_x, b.grad_weight, b.grad_bias = gx.numpy(), gw.numpy(), gb.numpy()

    return forward, backward


@parametrize(CASES)
def test_cnn_layers(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
