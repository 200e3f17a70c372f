"""Every kernel as a plain function on numpy arrays, without autodiff.

Inputs are float32, C-contiguous numpy arrays (int64 or int32 for class
indices). Nothing is copied or cast: a wrong dtype, layout or shape raises a
TypeError or ValueError that names the op and the shapes.

Each op comes as ``<op>(...)`` and ``<op>_backward(...)``. Forward functions
return a new array unless ``out=`` is given. Backward functions return the
input gradients; pass ``grad_<name>=`` arrays to accumulate into them
instead (gradients always accumulate, ``+=``), which is what the graph
executor does with its pre-planned buffers.

``reference`` kernels (plain loops) run when the ISA level is set to
``"reference"``; see :func:`pyengine.set_isa`.
"""

from __future__ import annotations

import numpy as np

from pyengine import _C

__all__ = [
    "matmul", "matmul_backward",
    "add", "sub", "mul", "div", "add_backward", "sub_backward", "mul_backward", "div_backward",
    "add_scalar", "sub_scalar", "rsub_scalar", "mul_scalar", "div_scalar", "rdiv_scalar",
    "pow_scalar", "scalar_backward",
    "relu", "relu_backward", "gelu", "gelu_backward", "tanh", "tanh_backward",
    "exp", "exp_backward",
    "sum", "sum_backward", "mean", "mean_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "layer_norm", "layer_norm_backward",
    "cross_entropy", "cross_entropy_backward",
    "conv2d", "conv2d_backward", "conv2d_shape", "conv2d_pairs",
    "sgd_update", "matmul_shape", "fma_probe",
    "BINARY_OPS", "SCALAR_OPS", "reduced_shape", "normalize_axes", "axis_runs",
    "sum_partial_shapes", "mean_scale",
]

BINARY_OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3}
SCALAR_OPS = {"add": 0, "sub": 1, "rsub": 2, "mul": 3, "div": 4, "rdiv": 5, "pow": 6}

_f32 = np.float32


def _empty(shape) -> np.ndarray:
    return np.empty(shape, dtype=_f32)


def _zeros_like(x: np.ndarray) -> np.ndarray:
    return np.zeros(x.shape, dtype=_f32)


def _grad_buffer(given, like: np.ndarray) -> np.ndarray:
    return _zeros_like(like) if given is None else given


# ---------------------------------------------------------------- matmul


def matmul_shape(a_shape, b_shape, trans_a=False, trans_b=False) -> tuple:
    """The output shape of matmul; ValueError when the operands do not fit."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ValueError(f"matmul: operands need at least 2 dims, got {a_shape} and {b_shape}")
    m, ka = (a_shape[-1], a_shape[-2]) if trans_a else (a_shape[-2], a_shape[-1])
    kb, n = (b_shape[-1], b_shape[-2]) if trans_b else (b_shape[-2], b_shape[-1])
    batch_a, batch_b = a_shape[:-2], b_shape[:-2]
    if ka != kb or (batch_a and batch_b and batch_a != batch_b):
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} do not fit "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    return (*(batch_a or batch_b), m, n)


def matmul(a, b, bias=None, *, trans_a=False, trans_b=False, activation="none", out=None,
           preact=None):
    """activation(op(a) @ op(b) + bias); op transposes the last two dims when flagged.

    a: (..., m, k) or (..., k, m); b: (..., k, n) or (..., n, k). Either operand
    may be 2-D to share it across the other's batch dims. bias: (n,).
    activation: "none", "relu" or "gelu" (tanh form), fused into the GEMM's
    epilogue; `preact` (an array shaped like the output) receives the values
    before the activation, which the activation's backward needs.
    """
    if out is None:
        out = _empty(matmul_shape(np.shape(a), np.shape(b), trans_a, trans_b))
    _C.matmul_forward(out, a, b, bias, trans_a, trans_b, activation, preact)
    return out


def matmul_backward(grad_c, a, b, *, trans_a=False, trans_b=False, with_bias=False,
                    needs_a=True, needs_b=True, grad_a=None, grad_b=None, grad_bias=None):
    """Gradients of matmul: returns (grad_a, grad_b, grad_bias); None where not asked."""
    if needs_a:
        grad_a = _grad_buffer(grad_a, a)
    if needs_b:
        grad_b = _grad_buffer(grad_b, b)
    if with_bias and grad_bias is None:
        n = grad_c.shape[-1] if isinstance(grad_c, np.ndarray) and grad_c.ndim else 0
        grad_bias = np.zeros((n,), dtype=_f32)
    _C.matmul_backward(grad_a if needs_a else None, grad_b if needs_b else None,
                       grad_bias if with_bias else None, grad_c, a, b, trans_a, trans_b)
    return (grad_a if needs_a else None, grad_b if needs_b else None,
            grad_bias if with_bias else None)


def fma_probe(iterations: int, threads: int = 1) -> int:
    """Run a register-only FMA loop on `threads` threads at the active ISA
    level; returns the floating-point operations done. Time it to read the
    machine's peak (benchmarks/test_gemm.py does). The 'reference' level runs
    one scalar thread whatever `threads` says."""
    return _C.fma_probe(int(iterations), int(threads))


# ---------------------------------------------------------------- broadcasting binary ops


def _binary(op):
    code = BINARY_OPS[op]

    def forward(a, b, *, out=None):
        if out is None:
            _check_array(op, a)
            _check_array(op, b)
            try:
                out = _empty(np.broadcast_shapes(a.shape, b.shape))
            except ValueError:
                raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
        _C.binary_forward(out, a, b, code)
        return out

    def backward(grad_out, a, b, *, needs_a=True, needs_b=True, grad_a=None, grad_b=None):
        if needs_a:
            grad_a = _grad_buffer(grad_a, a)
        if needs_b:
            grad_b = _grad_buffer(grad_b, b)
        _C.binary_backward(grad_a if needs_a else None, grad_b if needs_b else None,
                           grad_out, a, b, code)
        return (grad_a if needs_a else None, grad_b if needs_b else None)

    forward.__name__, backward.__name__ = op, op + "_backward"
    forward.__doc__ = f"Elementwise {op} with numpy broadcasting."
    backward.__doc__ = f"Gradients of {op}, summed over broadcast dims: (grad_a, grad_b)."
    return forward, backward


add, add_backward = _binary("add")
sub, sub_backward = _binary("sub")
mul, mul_backward = _binary("mul")
div, div_backward = _binary("div")


# ---------------------------------------------------------------- scalar ops


def _scalar(op):
    code = SCALAR_OPS[op]

    def forward(a, s, *, out=None):
        if out is None:
            out = _empty(np.shape(a))
        _C.scalar_forward(out, a, code, float(s))
        return out

    forward.__name__ = op + "_scalar"
    forward.__doc__ = f"Elementwise {op} with the Python scalar s."
    return forward


add_scalar = _scalar("add")
sub_scalar = _scalar("sub")
rsub_scalar = _scalar("rsub")
mul_scalar = _scalar("mul")
div_scalar = _scalar("div")
rdiv_scalar = _scalar("rdiv")
pow_scalar = _scalar("pow")


def scalar_backward(op, grad_out, a, s, *, grad_a=None):
    """Gradient of ``<op>_scalar(a, s)`` with respect to a."""
    grad_a = _grad_buffer(grad_a, a)
    _C.scalar_backward(grad_a, grad_out, a, SCALAR_OPS[op], float(s))
    return grad_a


# ---------------------------------------------------------------- activations


def _unary(name, what, saved):
    """<name>(x, out=) and <name>_backward(grad_y, saved, grad_x=) over one
    input; `saved` is the forward value the backward reads (x or y)."""
    fwd_kernel = getattr(_C, name + "_forward")
    bwd_kernel = getattr(_C, name + "_backward")

    def forward(x, *, out=None):
        if out is None:
            out = _empty(np.shape(x))
        fwd_kernel(out, x)
        return out

    def backward(grad_y, saved_array, *, grad_x=None):
        grad_x = _grad_buffer(grad_x, saved_array)
        bwd_kernel(grad_x, grad_y, saved_array)
        return grad_x

    forward.__name__, backward.__name__ = name, name + "_backward"
    forward.__doc__ = f"{what}."
    backward.__doc__ = f"Gradient of {name}; takes the forward's {saved} as saved_array."
    return forward, backward


relu, relu_backward = _unary("relu", "max(x, 0), elementwise", "input x")
gelu, gelu_backward = _unary("gelu", "GELU, tanh form, elementwise", "input x")
tanh, tanh_backward = _unary("tanh", "tanh, elementwise", "output y")
exp, exp_backward = _unary("exp", "exp, elementwise", "output y")


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
        _C.scalar_forward(scaled, kept, SCALAR_OPS["mul"], scale)
        kept = scaled
    _C.binary_forward(grad_x, grad_x, kept, BINARY_OPS["add"])
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


# ---------------------------------------------------------------- softmax


softmax, softmax_backward = _unary("softmax", "Softmax over the last axis", "output y")
log_softmax, log_softmax_backward = _unary("log_softmax", "Log-softmax over the last axis", "output y")


# ---------------------------------------------------------------- layer norm


def layer_norm(x, weight, bias, eps=1e-5, *, out=None, mean=None, rstd=None):
    """Layer norm over the last axis: returns (y, mean, rstd); keep mean and rstd for the backward."""
    rows_shape = np.shape(x)[:-1]
    y = _empty(np.shape(x)) if out is None else out
    mean = _empty(rows_shape) if mean is None else mean
    rstd = _empty(rows_shape) if rstd is None else rstd
    _C.layernorm_forward(y, mean, rstd, x, weight, bias, float(eps))
    return y, mean, rstd


def layer_norm_backward(grad_y, x, weight, mean, rstd, *, needs_x=True, needs_params=True,
                        grad_x=None, grad_weight=None, grad_bias=None):
    """Gradients of layer_norm: (grad_x, grad_weight, grad_bias)."""
    if needs_x:
        grad_x = _grad_buffer(grad_x, x)
    if needs_params:
        grad_weight = _grad_buffer(grad_weight, weight)
        grad_bias = _grad_buffer(grad_bias, weight)
    _C.layernorm_backward(grad_x if needs_x else None, grad_weight if needs_params else None,
                          grad_bias if needs_params else None, grad_y, x, weight, mean, rstd)
    return (grad_x if needs_x else None, grad_weight if needs_params else None,
            grad_bias if needs_params else None)


# ---------------------------------------------------------------- cross-entropy


def cross_entropy(logits, target, ignore_index=-100, *, out=None):
    """Mean cross-entropy of (rows, classes) logits against integer targets, as a 0-d array."""
    if out is None:
        out = _empty(())
    _C.cross_entropy_forward(out, logits, target, int(ignore_index))
    return out


def cross_entropy_backward(grad_loss, logits, target, ignore_index=-100, *, grad_logits=None):
    """Fused softmax + loss gradient with respect to the logits."""
    if not isinstance(grad_loss, np.ndarray):
        grad_loss = np.asarray(grad_loss, dtype=_f32)
    grad_logits = _grad_buffer(grad_logits, logits)
    _C.cross_entropy_backward(grad_logits, grad_loss, logits, target, int(ignore_index))
    return grad_logits


# ---------------------------------------------------------------- convolution


def _pair(value, name: str) -> tuple:
    """An int or an (h, w) pair of ints as a pair of Python ints."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"conv2d: {name} must be an int or a pair (h, w) of ints, got {value!r}")


def conv2d_pairs(stride, padding, dilation) -> tuple:
    """(stride, padding, dilation) as three (h, w) pairs."""
    return _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")


def conv2d_shape(x_shape, w_shape, stride=1, padding=0, dilation=1) -> tuple:
    """The output shape (N, K, OH, OW) of conv2d of x (N, C, H, W) with weight
    (K, C, R, S); ValueError when they do not fit. OH = (H + 2 padding -
    dilation (R - 1) - 1) // stride + 1, OW alike."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    (sh, sw), (ph, pw), (dh, dw) = conv2d_pairs(stride, padding, dilation)
    if len(x_shape) != 4 or len(w_shape) != 4 or x_shape[1] != w_shape[1]:
        raise ValueError(f"conv2d: x {x_shape} (N, C, H, W) and weight {w_shape} (K, C, R, S) "
                         "do not fit")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"conv2d: stride {(sh, sw)} and dilation {(dh, dw)} must be >= 1, "
                         f"padding {(ph, pw)} >= 0")
    (n, _, h, w), (k, _, r, s) = x_shape, w_shape
    oh = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: weight {w_shape} with dilation {(dh, dw)} does not fit x "
                         f"{x_shape} with padding {(ph, pw)}: no output")
    return (n, k, oh, ow)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, out=None):
    """2-D convolution (cross-correlation, as in PyTorch) of x (N, C, H, W) with
    weight (K, C, R, S) plus bias (K,): (N, K, OH, OW), see conv2d_shape.
    stride, padding (zeros) and dilation are ints or (h, w) pairs."""
    geometry = conv2d_pairs(stride, padding, dilation)
    if out is None:
        _check_array("conv2d", x)
        _check_array("conv2d", weight)
        out = _empty(conv2d_shape(x.shape, weight.shape, *geometry))
    _C.conv2d_forward(out, x, weight, bias, *geometry)
    return out


def conv2d_backward(grad_y, x, weight, *, stride=1, padding=0, dilation=1, with_bias=False,
                    needs_x=True, needs_weight=True, grad_x=None, grad_weight=None,
                    grad_bias=None):
    """Gradients of conv2d: (grad_x, grad_weight, grad_bias); None where not asked."""
    geometry = conv2d_pairs(stride, padding, dilation)
    if needs_x:
        grad_x = _grad_buffer(grad_x, x)
    if needs_weight:
        grad_weight = _grad_buffer(grad_weight, weight)
    if with_bias and grad_bias is None:
        grad_bias = np.zeros(np.shape(weight)[:1], dtype=_f32)
    _C.conv2d_backward(grad_x if needs_x else None, grad_weight if needs_weight else None,
                       grad_bias if with_bias else None, grad_y, x, weight, *geometry)
    return (grad_x if needs_x else None, grad_weight if needs_weight else None,
            grad_bias if with_bias else None)


# ---------------------------------------------------------------- optimizers


def sgd_update(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, first_step=False):
    """One SGD step in place (PyTorch's rule); momentum_buffer is updated in place."""
    _C.sgd_update(param, momentum_buffer, grad, float(lr), float(momentum), float(dampening),
                  float(weight_decay), bool(nesterov), bool(first_step))
    return param
