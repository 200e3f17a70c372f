"""The registry of op cases the tests share: one small, valid example per
declared kernel pair (inputs and options), from which valid calls of both
kernels are built through their declarations (pyengine.registry).

The binding-error tests break these calls one argument at a time, the fuzz
test feeds them bad values, and the coverage test fails when a kernel is
declared without an example here. The float64 reference cases, tolerances and
finite-difference problems of the core kernels are tests/reference_cases.py
(``*_case`` factories and FD_CASES), keyed by the same base names.
"""

from __future__ import annotations

import math

import numpy as np

from pyengine import _C, registry

F32 = np.float32


def _normal(*shape, seed=0):
    return np.random.default_rng(seed + len(shape)).standard_normal(shape).astype(F32)


def _positive(*shape):
    return np.abs(_normal(*shape)) + F32(0.5)


# ---------------------------------------------------------------- one-input activations

_C0, _C1 = np.sqrt(2 / np.pi), 0.044715


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(_C0 * (x + _C1 * x**3)))


def _gelu_grad(x):
    t = np.tanh(_C0 * (x + _C1 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * _C0 * (1 + 3 * _C1 * x**2)


def _gelu_erf(x):
    return 0.5 * x * np.vectorize(math.erfc)(-np.asarray(x, np.float64) / math.sqrt(2))


def _gelu_erf_grad(x):
    x = np.asarray(x, np.float64)
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2)) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _torch():
    import torch
    return torch


# name: (float64 numpy forward, numpy d/dx, torch forward). One line adds an
# activation's reference, finite-difference and binding-error tests.
UNARY = {
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, lambda x: _torch().relu(x)),
    "gelu": (_gelu, _gelu_grad,
             lambda x: _torch().nn.functional.gelu(x, approximate="tanh")),
    "gelu_erf": (_gelu_erf, _gelu_erf_grad, lambda x: _torch().nn.functional.gelu(x)),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2, lambda x: _torch().tanh(x)),
    "exp": (np.exp, np.exp, lambda x: _torch().exp(x)),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2,
                lambda x: _torch().sigmoid(x)),
    "silu": (lambda x: x / (1 + np.exp(-x)),
             lambda x: (1 + np.exp(-x) + x * np.exp(-x)) / (1 + np.exp(-x)) ** 2,
             lambda x: _torch().nn.functional.silu(x)),
    "sqrt": (np.sqrt, lambda x: 0.5 / np.sqrt(x), lambda x: _torch().sqrt(x)),
    "rsqrt": (lambda x: 1 / np.sqrt(x), lambda x: -0.5 * x**-1.5, lambda x: _torch().rsqrt(x)),
    "log": (np.log, lambda x: 1 / x, lambda x: _torch().log(x)),
    "abs": (np.abs, np.sign, lambda x: _torch().abs(x)),
    "square": (np.square, lambda x: 2 * x, lambda x: _torch().square(x)),
}


# Activations defined only for x > 0: their tests draw inputs from [0.5, inf).
POSITIVE_DOMAIN = {"sqrt", "rsqrt", "log"}


# base name -> (forward inputs by name, options by name). Shapes are small and
# distinct per dimension, so a swapped dimension shows in a message.
EXAMPLES = {
    "matmul": (dict(a=_normal(3, 4), b=_normal(4, 5), bias=_normal(5)), dict()),
    "binary": (dict(a=_normal(3, 4), b=_positive(4)), dict(op="div")),
    "scalar": (dict(a=_positive(3, 4)), dict(op="pow", s=2.0)),
    **{name: (dict(x=_positive(3, 4) if name in POSITIVE_DOMAIN else _normal(3, 4)), dict())
       for name in UNARY},
    "clamp": (dict(x=_normal(3, 4)), dict(min=-0.5, max=0.75)),
    "add_relu": (dict(a=_normal(3, 4), b=_normal(3, 4, seed=1)), dict()),
    "softmax": (dict(x=_normal(3, 4)), dict()),
    "log_softmax": (dict(x=_normal(3, 4)), dict()),
    "sum": (dict(x=_normal(3, 4)), dict(axis_begin=1, axis_end=2, scale=0.5)),
    "layer_norm": (dict(x=_normal(3, 4), weight=_normal(4), bias=_normal(4)), dict(eps=1e-5)),
    "add_layer_norm": (dict(a=_normal(3, 4), b=_normal(3, 4, seed=1), weight=_normal(4), bias=_normal(4)),
                       dict(eps=1e-5)),
    "cross_entropy": (dict(logits=_normal(3, 4), target=np.array([0, 3, 1], np.int64)),
                      dict(ignore_index=-100)),
    "nll_loss": (dict(logp=_normal(3, 4), target=np.array([2, -100, 1], np.int64)),
                 dict(ignore_index=-100)),
    "conv2d": (dict(x=_normal(2, 3, 6, 5), weight=_normal(4, 3, 3, 2), bias=_normal(4)),
               dict(stride=(1, 2), padding=(1, 0), dilation=(1, 1))),
    # ---- embedding, dropout (helper embdrop)
    "embedding": (dict(weight=_normal(5, 4), idx=np.array([[0, 3, 3], [4, 1, 0]], np.int64)), dict()),
    # ---- CNNs (issue 9): pooling, batch norm
    "max_pool2d": (dict(x=_normal(2, 3, 7, 6)),
                   dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), ceil_mode=True)),
    "avg_pool2d": (dict(x=_normal(2, 3, 7, 6)),
                   dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True, count_include_pad=False)),
    "adaptive_avg_pool2d": (dict(x=_normal(2, 3, 7, 6)), dict(output_size=(3, 4))),
    "batch_norm": (dict(x=_normal(4, 3, 5), weight=_normal(3), bias=_normal(3), running_mean=_normal(3),
                        running_var=_positive(3)), dict(training=True, momentum=0.1, eps=1e-5)),
    # ---- fused attention (csrc/attention): a broadcast additive mask, dropout, cross-attention
    "attention": (dict(q=_normal(2, 3, 5, 4), k=_normal(2, 3, 6, 4, seed=1), v=_normal(2, 3, 6, 4, seed=2),
                       mask=_normal(1, 3, 5, 6), rng=np.array([7, 1], np.int64)),
                  dict(is_causal=True, scale=0.5, dropout_p=0.25)),
    "qkv_attention": (dict(qkv=_normal(2, 5, 3, 2, 4), mask=_normal(2, 1, 1, 5, seed=3),
                           rng=np.array([7, 2], np.int64)),
                      dict(is_causal=True, scale=0.5, dropout_p=0.25)),
    "dropout": (dict(x=_normal(3, 4), rng=np.array([7, 3], np.int64)), dict(p=0.25)),
    "dropout_add": (dict(residual=_positive(3, 4), x=_normal(3, 4), rng=np.array([7, 3], np.int64)), dict(p=0.25)),
    # ---- RMS norm (helper hft5, T5's layer norm)
    "rms_norm": (dict(x=_normal(3, 4), weight=_normal(4)), dict(eps=1e-6)),
}

# Kernels that are not a forward/backward pair: their arguments by name.
UPDATES = {
    "sgd_update": (dict(param=_normal(3, 4), momentum_buffer=_normal(3, 4), grad=_normal(3, 4)),
                   dict(lr=0.1, momentum=0.9)),
    "adam_update": (dict(param=_normal(3, 4), exp_avg=_normal(3, 4), exp_avg_sq=_positive(3, 4),
                         max_exp_avg_sq=_positive(3, 4), grad=_normal(3, 4), grad_scale=np.array(0.5, F32)),
                    dict(lr=1e-3, step=3, amsgrad=True)),
    "fill": (dict(out=_normal(12)), dict(value=0.5)),
    # ---- gradient clipping (helper embdrop)
    "vector_norm": (dict(norm=np.zeros((), F32), x=_normal(12)), dict(norm_type=2.0)),
    "clip_coefficient": (dict(total=np.zeros((), F32), coef=np.zeros((), F32), norms=_positive(5)),
                         dict(norm_type=2.0, max_norm=1.0)),
    # ---- decoding with a key/value cache (helper hfgpt2): 2 new positions after 3 cached, a padding mask
    "cached_attention": (dict(out=np.zeros((2, 2, 3, 4), F32), k_cache=_normal(2, 3, 7, 4), v_cache=_normal(2, 3, 7, 4),
                              qkv=_normal(2, 2, 3, 3, 4), mask=np.zeros((2, 1, 1, 5), F32)),
                         dict(start=3, scale=0.5)),
}


def _attrs(info, options: dict) -> list:
    return [options[a["name"]] if a["name"] in options else a["default"] for a in info.attrs]


def forward_call(base: str, with_outputs: bool = True) -> tuple:
    """(kernel name, positional arguments) of a valid forward call; with
    `with_outputs`, every output (optional ones too) is given as a buffer."""
    info = registry.op(base + "_forward")
    inputs, options = EXAMPLES[base]
    shapes = _C.infer_shapes(info.name, {k: v.shape for k, v in inputs.items()}, options)
    arrays = []
    for a in info.args:
        if a["name"] in inputs:
            arrays.append(inputs[a["name"]].copy())
        elif with_outputs and a["role"] in ("output", "optional_output"):
            arrays.append(np.zeros(shapes[a["name"]], F32))
        else:
            arrays.append(None)
    return info.name, arrays + _attrs(info, options)


def forward_values(base: str) -> dict:
    """Every forward value by name: the inputs, and the outputs computed."""
    info = registry.op(base + "_forward")
    inputs, options = EXAMPLES[base]
    _, args = forward_call(base, with_outputs=False)
    result = getattr(_C, info.name)(*args)
    outputs = result if isinstance(result, tuple) else (result,)
    return {**inputs, **dict(zip(info.outputs, outputs))}


def backward_call(base: str) -> tuple:
    """(kernel name, positional arguments) of a valid backward call: every
    gradient asked for, the incoming gradient all ones."""
    info = registry.op(base + "_backward")
    values = forward_values(base)
    shapes = {k: v.shape for k, v in values.items()}
    _, options = EXAMPLES[base]
    arrays = []
    for a in info.args:
        name, role = a["name"], a["role"]
        if role in ("grad", "optional_grad"):
            arrays.append(np.zeros(shapes[name[1:]], F32))
        elif role == "grad_input":
            arrays.append(np.ones(shapes[name[1:]], F32))
        else:
            arrays.append(values[name].copy())
    return info.name, arrays + _attrs(info, options)


def update_call(name: str) -> tuple:
    info = registry.op(name)
    arrays, options = UPDATES[name]
    return name, [arrays[a["name"]].copy() for a in info.args] + _attrs(info, options)


def valid_calls() -> dict:
    """kernel name -> positional arguments of one valid call, for every declared kernel."""
    calls = {}
    for base in EXAMPLES:
        calls.__setitem__(*forward_call(base))
        if base + "_backward" in registry.ops:
            calls.__setitem__(*backward_call(base))
    for name in UPDATES:
        calls.__setitem__(*update_call(name))
    return calls
