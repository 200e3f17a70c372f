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

The executor's CNN fusions, eval mode (no gradients), beside torch's eager modules in its default
and its channels_last memory format (torch.no_grad):

- ResNet's basic block (two 3x3 64->64 convolutions with batch norm, identity shortcut) on
  (8, 64, 56, 56): pyengine captured with its fusions (batch norm folded into each convolution,
  the first ReLU in the convolution's bias pass, the closing add and ReLU one pass) and without
  them (capture(fuse=False, fold_batch_norm=False): the ops as recorded);
- ResNet-18 (3 channels, 224x224, 1000 classes) at batch 8, with batch norm folding and without
  (fold_batch_norm=False; the activation fusions on in both).

Each torch model is loaded with pyengine's weights and statistics, and its output checked
against pyengine's before timing.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import pyengine
import pyengine.kernels as K

from base import Case, kernel, parametrize, run, run_fma_probe

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


# ---------------------------------------------------------------- fusions, eval mode

BLOCK = (8, 64, 56, 56)
RESNET18 = (8, 3, 224, 224)
BLOCK_FLOPS = 2 * (2 * 8 * 64 * 56 * 56 * 64 * 9)  # the two 3x3 convolutions
FUSED_CASES = [
    *(Case("basic_block", "forward", f"resnet basic block eval forward (8, 64, 56, 56) (pyengine {mode})", BLOCK,
           spec=mode, rounds=10, warmup_rounds=2, flops=BLOCK_FLOPS, info=(("mode", mode),))
      for mode in ("fused", "unfused")),
    *(Case("resnet18", "forward", f"resnet-18 eval forward batch 8, 224x224 (pyengine {mode})", RESNET18,
           spec=mode, rounds=3, warmup_rounds=1, info=(("mode", mode),))
      for mode in ("folded", "unfolded")),
]
_CAPTURE = {"fused": {}, "unfused": {"fuse": False, "fold_batch_norm": False}, "folded": {},
            "unfolded": {"fold_batch_norm": False}}


def _eval_model(case):
    """The pyengine model in eval mode with running statistics that are not the defaults."""
    from pyengine.models import ResNet
    from pyengine.models.resnet import BasicBlock

    pyengine.manual_seed(0)
    model = BasicBlock(64, 64) if case.kernel == "basic_block" else ResNet(in_channels=3, classes=1000, size=224)
    rng = np.random.default_rng(1)
    for name, value in model.named_buffers():
        if name.endswith("running_mean"):
            value.data[...] = rng.standard_normal(value.shape) * 0.1
        elif name.endswith("running_var"):
            value.data[...] = rng.uniform(0.5, 2.0, value.shape)
    model.eval()
    return model


def _torch_forward(model, channels_last: bool):
    """torch's eager functional ops on the pyengine model's own parameters and statistics
    (torch.nn's modules call the same ops; torchvision is not a dependency)."""
    import torch

    tf = torch.nn.functional
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tensors = {id(v): torch.tensor(np.array(v.data)) for _, v in [*model.named_parameters(), *model.named_buffers()]}

    def t(value):
        tensor = tensors[id(value)]
        return tensor.to(memory_format=fmt) if tensor.ndim == 4 else tensor

    def conv_bn(h, conv, bn):
        h = tf.conv2d(h, t(conv.weight), None, conv.stride, conv.padding)
        return tf.batch_norm(h, t(bn.running_mean), t(bn.running_var), t(bn.weight), t(bn.bias), False, 0.0, bn.eps)

    def block(h, b):
        out = conv_bn(torch.relu(conv_bn(h, b.conv1, b.bn1)), b.conv2, b.bn2)
        return torch.relu(out + (h if b.downsample is None else conv_bn(h, *b.downsample)))

    def resnet(h):
        h = tf.max_pool2d(torch.relu(conv_bn(h, model.conv1, model.bn1)), 3, 2, 1)
        for stage in range(1, model.stages + 1):
            for b in getattr(model, f"layer{stage}"):
                h = block(h, b)
        return tf.linear(tf.adaptive_avg_pool2d(h, 1).flatten(1), t(model.fc.weight), t(model.fc.bias))

    return resnet if hasattr(model, "stages") else (lambda h: block(h, model))


fused_model = kernel("basic_block", inputs=lambda case: {"x": _normal(case.shape)},
                     missing="numpy has no convolutional network")
resnet18 = kernel("resnet18", inputs=lambda case: {"x": _normal(case.shape)},
                  missing="numpy has no convolutional network")


def _pyengine_eval(case, b):
    model = _eval_model(case)
    graph = pyengine.capture(lambda x: model(x), b.x, **_CAPTURE[case.spec])
    b.pyengine_out = graph.run(b.x).numpy().copy()
    return lambda: graph.run(b.x), None


def _torch_eval(channels_last: bool):
    def build(case, b):
        import torch

        model = _eval_model(case)
        theirs = _torch_forward(model, channels_last)
        x = torch.from_numpy(b.x)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        graph = pyengine.capture(lambda t: model(t), b.x)
        expected = graph.run(b.x).numpy()
        with torch.no_grad():
            got = theirs(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())

        def forward():
            with torch.no_grad():
                theirs(x)

        return forward, None

    return build


for _k in (fused_model, resnet18):
    _k.impl("pyengine")(_pyengine_eval)
    _k.impl("torch")(_torch_eval(False))
    _k.impl("torch_channels_last")(_torch_eval(True))


@pytest.mark.parametrize("impl", ["pyengine"])
def test_peak_fma_probe(benchmark, threads, impl):
    run_fma_probe(benchmark, threads, threads)


@parametrize(FUSED_CASES, impls=("pyengine", "torch", "torch_channels_last"))
def test_cnn_fusions(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
