"""Every kernel as a plain function on numpy arrays, without autodiff.

Inputs are float32, C-contiguous numpy arrays (int64 or int32 for class
indices). Nothing is copied or cast: a wrong dtype, layout or shape raises a
TypeError or ValueError that names the op and the shapes.

The functions are generated from the kernels' declarations (the op
registry, see :mod:`pyengine.registry` and ``csrc/core/registry.h``), so
their signatures and docstrings say what the declarations say:

- ``<op>(inputs..., *, options..., out=None)`` returns a new array unless
  ``out=`` is given (ops with several outputs return a tuple);
- ``<op>_backward(grad_out, saved values..., *, options..., grad_<x>=None,
  needs_<x>=...)`` returns the input gradients. Pass ``grad_<x>=`` arrays to
  accumulate into them instead (gradients always accumulate, ``+=``), which
  is what the graph executor does with its pre-planned buffers.

``reference`` kernels (plain loops) run when the ISA level is set to
``"reference"``; see :func:`pyengine.set_isa`.
"""

from __future__ import annotations

import numpy as np

from pyengine import _C
from pyengine import registry as _registry

BINARY_OPS = _registry.ENUMS["BinaryOp"]
SCALAR_OPS = _registry.ENUMS["ScalarOp"]
ACTIVATIONS = _registry.ENUMS["Activation"]

_generated = _registry.generate_wrappers()
globals().update(_generated)

_f32 = np.float32


def _empty(shape) -> np.ndarray:
    return np.empty(shape, dtype=_f32)


def output_shapes(kernel: str, **shapes_and_options) -> dict:
    """The shapes every argument of `kernel` must have, given some of them
    (arrays' shapes as tuples) and its options: the declaration's shape rule,
    the same one the binding checks with. ValueError when they do not fit."""
    info = _registry.op(kernel)
    attrs = {a["name"] for a in info.attrs}
    shapes = {k: tuple(v) for k, v in shapes_and_options.items() if k not in attrs}
    options = {k: v for k, v in shapes_and_options.items() if k in attrs}
    return _C.infer_shapes(kernel, shapes, options)


def matmul_shape(a_shape, b_shape, trans_a=False, trans_b=False) -> tuple:
    """The output shape of matmul; ValueError when the operands do not fit."""
    return output_shapes("matmul_forward", a=a_shape, b=b_shape, trans_a=trans_a,
                         trans_b=trans_b)["c"]


def conv2d_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> tuple:
    """The output shape (N, K, OH, OW) of conv2d of x (N, C, H, W) with weight
    (K, C / groups, R, S); ValueError when they do not fit."""
    return output_shapes("conv2d_forward", x=x_shape, weight=w_shape, stride=stride,
                         padding=padding, dilation=dilation, groups=groups)["y"]


def fma_probe(iterations: int, threads: int = 1) -> int:
    """Run a register-only FMA loop on `threads` threads at the active ISA
    level; returns the floating-point operations done. Time it to read the
    machine's peak (benchmarks/test_gemm.py does). The 'reference' level runs
    one scalar thread whatever `threads` says."""
    return _C.fma_probe(int(iterations), int(threads))


# ---------------------------------------------------------------- named binary and scalar ops


def _binary_pair(op: str):
    def forward(a, b, *, out=None):
        return binary(a, b, op=op, out=out)  # noqa: F821 - generated

    def backward(grad_out, a, b, *, grad_a=None, needs_a=True, grad_b=None, needs_b=True):
        return binary_backward(grad_out, a, b, op=op, grad_a=grad_a,  # noqa: F821 - generated
                               needs_a=needs_a, grad_b=grad_b, needs_b=needs_b)

    forward.__name__, backward.__name__ = op, op + "_backward"
    forward.__doc__ = f"Elementwise {op} with numpy broadcasting (binary with op={op!r})."
    backward.__doc__ = f"Gradients of {op}, summed over broadcast dims: (grad_a, grad_b)."
    return forward, backward


def _scalar_op(op: str):
    def forward(a, s, *, out=None):
        return scalar(a, op=op, s=s, out=out)  # noqa: F821 - generated

    forward.__name__ = op + "_scalar"
    forward.__doc__ = f"Elementwise {op} with the Python scalar s (scalar with op={op!r})."
    return forward


for _op in BINARY_OPS:
    globals()[_op], globals()[_op + "_backward"] = _binary_pair(_op)
for _op in SCALAR_OPS:
    globals()[_op + "_scalar"] = _scalar_op(_op)
del _op


# ---------------------------------------------------------------- reductions


def normalize_axes(axis, ndim: int, op: str = "sum") -> tuple:
    """Sorted, non-negative, unique axes; None means all. Errors name `op`."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"{op}: axis {ax} is out of range for {ndim} dims")
        out.append(int(ax) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))


def reduced_shape(shape, axes, keepdims) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def axis_runs(axes) -> list:
    """Group sorted axes into runs of adjacent axes: (0, 1, 3) -> [(0, 2), (3, 4)]."""
    runs = []
    for ax in axes:
        if runs and runs[-1][1] == ax:
            runs[-1][1] = ax + 1
        else:
            runs.append([ax, ax + 1])
    return [tuple(r) for r in runs]


def sum_partial_shapes(x_shape, axes) -> list:
    """Shapes of the partial sums a reduction over non-adjacent axes goes
    through: one run of adjacent axes at a time, the last run first."""
    shapes, shape = [], tuple(x_shape)
    for begin, end in reversed(axis_runs(axes)[1:]):
        shape = reduced_shape(shape, tuple(range(begin, end)), True)
        shapes.append(shape)
    return shapes


def _check_array(op, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{op}: expected a numpy.ndarray, got {type(x).__name__}")


def sum(x, axis=None, keepdims=False, *, out=None, scale=1.0, partials=None,  # noqa: A001
        _op="sum"):
    """Sum over the given axes (all when None), like numpy.sum, times `scale`.

    Non-adjacent axes are reduced one run at a time through `partials`
    (arrays of sum_partial_shapes(); allocated when not given).
    """
    _check_array(_op, x)
    axes = normalize_axes(axis, x.ndim, _op)
    runs = axis_runs(axes)
    if out is None:
        out = _empty(reduced_shape(x.shape, axes, keepdims))
    if len(runs) <= 1:
        begin, end = runs[0] if runs else (0, 0)
        _C.sum_forward(out, x, begin, end, scale)
        return out
    if partials is None:
        partials = [_empty(shape) for shape in sum_partial_shapes(x.shape, axes)]
    partial = x
    for (begin, end), buffer in zip(reversed(runs[1:]), partials):
        _C.sum_forward(buffer, partial, begin, end, 1.0)
        partial = buffer
    begin, end = runs[0]
    _C.sum_forward(out.reshape(reduced_shape(x.shape, axes, True)), partial, begin, end, scale)
    return out


def sum_backward(grad_out, x_shape, axis=None, keepdims=False, *, grad_x=None, scale=1.0,
                 scaled=None, _op="sum_backward"):
    """Gradient of sum: grad_out (times scale) broadcast back to x_shape.

    Non-adjacent axes with scale != 1 go through `scaled`, an array of the
    reduced shape with kept dims (allocated when not given).
    """
    x_shape = tuple(x_shape)
    axes = normalize_axes(axis, len(x_shape), _op)
    if grad_x is None:
        grad_x = np.zeros(x_shape, dtype=_f32)
    runs = axis_runs(axes)
    if len(runs) <= 1:
        begin, end = runs[0] if runs else (0, 0)
        _C.sum_backward(grad_x, grad_out, begin, end, scale)
        return grad_x
    _check_array(_op, grad_out)
    if grad_out.shape != reduced_shape(x_shape, axes, keepdims):
        raise ValueError(f"{_op}: grad_out has shape {grad_out.shape}, expected "
                         f"{reduced_shape(x_shape, axes, keepdims)} for axes {axes} of {x_shape}")
    kept = grad_out.reshape(reduced_shape(x_shape, axes, True))
    if scale != 1.0:
        scaled = _empty(kept.shape) if scaled is None else scaled
        _C.scalar_forward(scaled, kept, "mul", scale)
        kept = scaled
    _C.binary_forward(grad_x, grad_x, kept, "add")
    return grad_x


def mean_scale(x_shape, axis, op: str = "mean") -> float:
    """1 / (number of elements averaged), NaN for an empty reduction."""
    axes = normalize_axes(axis, len(x_shape), op)
    n = int(np.prod([x_shape[a] for a in axes], dtype=np.int64))
    return 1.0 / n if n else float("nan")



def mean(x, axis=None, keepdims=False, *, out=None):
    """Mean over the given axes (all when None), like numpy.mean."""
    _check_array("mean", x)
    return sum(x, axis, keepdims, out=out, scale=mean_scale(x.shape, axis), _op="mean")


def mean_backward(grad_out, x_shape, axis=None, keepdims=False, *, grad_x=None):
    return sum_backward(grad_out, x_shape, axis, keepdims, grad_x=grad_x,
                        scale=mean_scale(tuple(x_shape), axis, "mean_backward"), _op="mean_backward")


__all__ = sorted(set(_generated) | {
    name for name in list(BINARY_OPS) + [op + "_backward" for op in BINARY_OPS]
} | {op + "_scalar" for op in SCALAR_OPS} | {
    "sum", "sum_backward", "mean", "mean_backward", "matmul_shape", "conv2d_shape",
    "output_shapes", "fma_probe", "BINARY_OPS", "SCALAR_OPS", "ACTIVATIONS", "reduced_shape",
    "normalize_axes", "axis_runs", "sum_partial_shapes", "mean_scale",
})
