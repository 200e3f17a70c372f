"""The differentiable operations, shared by eager autodiff and the graph executor.

An :class:`Op` knows the shapes of its outputs, and runs its forward and
backward kernels on arrays it is given. Eager mode allocates those arrays;
the executor hands it views into one planned arena. Both paths run the same
code, so a replayed step gives the same numbers as eager mode.

Output 0 is the op's result; further outputs are values saved for the
backward (layer norm's mean and rstd). Backward gradients accumulate (``+=``)
into the buffers given; ``None`` marks an input that needs no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyengine import _C
from pyengine import kernels as K

F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class Spec:
    """Shape and dtype of a value."""

    shape: tuple
    dtype: np.dtype = F32

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class Op:
    name = "op"
    is_view = False  # output 0 is a view of input 0 (no kernel, shared memory)

    def infer(self, *inputs: Spec) -> list:
        raise NotImplementedError

    def forward(self, outs: list, ins: list) -> None:
        raise NotImplementedError

    def backward(self, grad_ins: list, grad_out: np.ndarray, ins: list, outs: list) -> None:
        raise NotImplementedError

    def label(self) -> str:
        return self.name


def _check_float(op: str, *specs: Spec) -> None:
    for spec in specs:
        if spec.dtype != F32:
            raise TypeError(f"{op}: expected float32 tensors, got {spec.dtype} with shape {spec.shape}")


class MatMul(Op):
    name = "matmul"

    def __init__(self, trans_a=False, trans_b=False):
        self.trans_a, self.trans_b = trans_a, trans_b

    def infer(self, a, b, bias=None):
        _check_float(self.name, a, b, *([bias] if bias else []))
        return [Spec(K.matmul_shape(a.shape, b.shape, self.trans_a, self.trans_b))]

    def forward(self, outs, ins):
        bias = ins[2] if len(ins) > 2 else None
        _C.matmul_forward(outs[0], ins[0], ins[1], bias, self.trans_a, self.trans_b)

    def backward(self, grad_ins, grad_out, ins, outs):
        dbias = grad_ins[2] if len(grad_ins) > 2 else None
        _C.matmul_backward(grad_ins[0], grad_ins[1], dbias, grad_out, ins[0], ins[1],
                           self.trans_a, self.trans_b)

    def label(self):
        flags = "".join(f for f, on in (("ᵀa", self.trans_a), ("ᵀb", self.trans_b)) if on)
        return f"matmul{('[' + flags + ']') if flags else ''}"


class MatMulActivation(Op):
    """A matmul whose output feeds only an activation, fused by the executor:
    one GEMM writes the activation's output (outs[0]) and, when a backward
    step needs it, the matmul's own output (outs[1]) from its epilogue. Forward only: the backward steps
    stay those of the two original ops, which read the same buffers."""

    is_view = False

    def __init__(self, matmul: MatMul, activation: str):
        self.matmul, self.activation = matmul, activation
        self.name = f"matmul+{activation}"

    def forward(self, outs, ins):
        bias = ins[2] if len(ins) > 2 else None
        preact = outs[1] if len(outs) > 1 else None  # absent when no backward reads it
        _C.matmul_forward(outs[0], ins[0], ins[1], bias, self.matmul.trans_a, self.matmul.trans_b,
                          self.activation, preact)

    def label(self):
        return f"{self.matmul.label()}+{self.activation}"


class Binary(Op):
    def __init__(self, op: str):
        self.name, self.code = op, K.BINARY_OPS[op]

    def infer(self, a, b):
        _check_float(self.name, a, b)
        try:
            return [Spec(tuple(np.broadcast_shapes(a.shape, b.shape)))]
        except ValueError:
            raise ValueError(f"{self.name}: shapes {a.shape} and {b.shape} do not broadcast") from None

    def forward(self, outs, ins):
        _C.binary_forward(outs[0], ins[0], ins[1], self.code)

    def backward(self, grad_ins, grad_out, ins, outs):
        _C.binary_backward(grad_ins[0], grad_ins[1], grad_out, ins[0], ins[1], self.code)


class Scalar(Op):
    def __init__(self, op: str, scalar: float):
        self.op, self.code, self.scalar = op, K.SCALAR_OPS[op], float(scalar)
        self.name = f"{op}_scalar"

    def infer(self, a):
        _check_float(self.name, a)
        return [Spec(a.shape)]

    def forward(self, outs, ins):
        _C.scalar_forward(outs[0], ins[0], self.code, self.scalar)

    def backward(self, grad_ins, grad_out, ins, outs):
        _C.scalar_backward(grad_ins[0], grad_out, ins[0], self.code, self.scalar)

    def label(self):
        return f"{self.op}({self.scalar:g})"


class Unary(Op):
    """One input, one output of its shape: activations, and softmax and
    log-softmax over the last axis."""

    # Which forward value the backward kernel reads: the input or the output.
    SAVES_OUTPUT = {"relu": False, "gelu": False, "tanh": True, "exp": True,
                    "softmax": True, "log_softmax": True}

    def __init__(self, name: str):
        self.name = name
        self._fwd = getattr(_C, name + "_forward")
        self._bwd = getattr(_C, name + "_backward")
        self._uses_output = self.SAVES_OUTPUT[name]

    def infer(self, x):
        _check_float(self.name, x)
        return [Spec(x.shape)]

    def forward(self, outs, ins):
        self._fwd(outs[0], ins[0])

    def backward(self, grad_ins, grad_out, ins, outs):
        self._bwd(grad_ins[0], grad_out, outs[0] if self._uses_output else ins[0])


class Sum(Op):
    """Sum (or mean) over axes. Adjacent axes are one kernel call; others go
    through partial sums, which are extra outputs so the executor plans them."""

    def __init__(self, axis=None, keepdims=False, mean=False):
        self.axis, self.keepdims, self.mean = axis, keepdims, mean
        self.name = "mean" if mean else "sum"

    def infer(self, x):
        _check_float(self.name, x)
        self._axes = K.normalize_axes(self.axis, len(x.shape))
        self._scale = K.mean_scale(x.shape, self._axes) if self.mean else 1.0
        partials = K.sum_partial_shapes(x.shape, self._axes)
        self._n_partials = len(partials)
        specs = [Spec(K.reduced_shape(x.shape, self._axes, self.keepdims))]
        specs += [Spec(shape) for shape in partials]
        if partials and self._scale != 1.0:  # the backward's scaled gradient
            specs.append(Spec(K.reduced_shape(x.shape, self._axes, True)))
        return specs

    def forward(self, outs, ins):
        K.sum(ins[0], self._axes, self.keepdims, out=outs[0], scale=self._scale,
              partials=outs[1:1 + self._n_partials])

    def backward(self, grad_ins, grad_out, ins, outs):
        scaled = outs[-1] if len(outs) > 1 + self._n_partials else None
        K.sum_backward(grad_out, ins[0].shape, self._axes, self.keepdims, grad_x=grad_ins[0],
                       scale=self._scale, scaled=scaled)

    def label(self):
        return f"{self.name}(axis={self.axis})"


class LayerNorm(Op):
    name = "layer_norm"

    def __init__(self, eps: float):
        self.eps = float(eps)

    def infer(self, x, weight, bias):
        _check_float(self.name, x, weight, bias)
        rows = Spec(x.shape[:-1])
        return [Spec(x.shape), rows, rows]  # y, mean, rstd

    def forward(self, outs, ins):
        _C.layernorm_forward(outs[0], outs[1], outs[2], ins[0], ins[1], ins[2], self.eps)

    def backward(self, grad_ins, grad_out, ins, outs):
        _C.layernorm_backward(grad_ins[0], grad_ins[1], grad_ins[2], grad_out, ins[0], ins[1],
                              outs[1], outs[2])


class Conv2d(Op):
    """2-D convolution of x (N, C, H, W) with weight (K, C, R, S), plus bias (K,) when given."""

    name = "conv2d"

    def __init__(self, stride=1, padding=0, dilation=1):
        self.stride, self.padding, self.dilation = K.conv2d_pairs(stride, padding, dilation)

    def infer(self, x, weight, bias=None):
        _check_float(self.name, x, weight, *([bias] if bias else []))
        return [Spec(K.conv2d_shape(x.shape, weight.shape, self.stride, self.padding, self.dilation))]

    def forward(self, outs, ins):
        bias = ins[2] if len(ins) > 2 else None
        _C.conv2d_forward(outs[0], ins[0], ins[1], bias, self.stride, self.padding, self.dilation)

    def backward(self, grad_ins, grad_out, ins, outs):
        dbias = grad_ins[2] if len(grad_ins) > 2 else None
        _C.conv2d_backward(grad_ins[0], grad_ins[1], dbias, grad_out, ins[0], ins[1], self.stride,
                           self.padding, self.dilation)

    def label(self):
        return f"conv2d(stride={self.stride}, padding={self.padding}, dilation={self.dilation})"


class CrossEntropy(Op):
    name = "cross_entropy"

    def __init__(self, ignore_index: int = -100):
        self.ignore_index = int(ignore_index)

    def infer(self, logits, target):
        _check_float(self.name, logits)
        return [Spec(())]

    def forward(self, outs, ins):
        _C.cross_entropy_forward(outs[0], ins[0], ins[1], self.ignore_index)

    def backward(self, grad_ins, grad_out, ins, outs):
        if grad_ins[1] is not None:
            raise ValueError("cross_entropy: integer targets have no gradient")
        _C.cross_entropy_backward(grad_ins[0], grad_out, ins[0], ins[1], self.ignore_index)


class Reshape(Op):
    """A view with a new shape: no kernel, the output shares the input's memory."""

    name = "reshape"
    is_view = True

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)

    def infer(self, x):
        size = int(np.prod(x.shape, dtype=np.int64))
        shape = list(self.shape)
        if shape.count(-1) > 1:
            raise ValueError(f"reshape: only one -1 allowed in {self.shape}")
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            if known == 0 or size % known:
                raise ValueError(f"reshape: cannot reshape {x.shape} into {self.shape}")
            shape[shape.index(-1)] = size // known
        if int(np.prod(shape, dtype=np.int64)) != size:
            raise ValueError(f"reshape: cannot reshape {x.shape} into {self.shape}")
        return [Spec(tuple(shape), x.dtype)]

    def forward(self, outs, ins):
        pass  # the executor binds outs[0] as a view of ins[0]

    def backward(self, grad_ins, grad_out, ins, outs):
        # Eager mode only: the executor shares the gradient buffer instead.
        g = grad_ins[0]
        _C.binary_forward(g, g, grad_out.reshape(g.shape), K.BINARY_OPS["add"])

    def view_of(self, x: np.ndarray, spec: Spec) -> np.ndarray:
        return x.reshape(spec.shape)

    def label(self):
        return f"reshape{self.shape}"
