"""The differentiable operations, shared by eager autodiff and the graph executor.

An :class:`Op` knows the shapes of its outputs, and runs its forward and
backward kernels on arrays it is given. Eager mode allocates those arrays;
the executor hands it views into one planned arena. Both paths run the same
code, so a replayed step gives the same numbers as eager mode.

Output 0 is the op's result; further outputs are values saved for the
backward (layer norm's mean and rstd). Backward gradients accumulate (``+=``)
into the buffers given; ``None`` marks an input that needs no gradient. The
executor's first writer of a gradient may overwrite it instead, where the
backward kernel declares an ``accumulate`` flag (KernelOp.overwriting).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np

from pyengine import _C, registry
from pyengine import kernels as K

F32 = np.dtype(np.float32)


# How many times pyengine has written parameters or buffers in place (an
# optimizer step, load_state_dict, batch norm's running statistics). A
# captured graph that holds values computed from them (batch norm folded into
# a convolution) computes them again at its next run when this has moved.
PARAMETER_WRITES = [0]


def parameters_written() -> None:
    PARAMETER_WRITES[0] += 1


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

    def saved(self, ins: list, outs: list) -> list:
        """The forward values the backward reads (the executor keeps only
        these alive until it runs). By default: all of them."""
        return [*ins, *outs]

    # The executor binds each step to its buffers once; a replay calls these.
    def bind_forward(self, outs: list, ins: list):
        return functools.partial(self.forward, outs, ins)

    def bind_backward(self, grad_ins: list, grad_out, ins: list, outs: list):
        return functools.partial(self.backward, grad_ins, grad_out, ins, outs)

    def label(self) -> str:
        return self.name


class _KernelPair:
    """What an Op needs from a declared forward/backward kernel pair, worked
    out once per pair: where each kernel argument comes from."""

    def __init__(self, base: str):
        forward, backward = registry.pairs()[base]
        self.forward, self.backward = forward, backward
        self.inputs, self.outputs = forward.inputs, forward.outputs
        self.float_inputs = [a["name"] for a in forward.args
                             if a["name"] in self.inputs and a["dtype"] == "float32"]
        # Forward arguments in kernel order: ("out", j), ("in", i), or None.
        # Optional outputs (matmul's preact) come after the plain ones: an op
        # given that many output buffers has them written, else None.
        optional = forward.names("optional_output")
        self.forward_sources = []
        for a in forward.args:
            if a["name"] in self.outputs:
                self.forward_sources.append(("out", self.outputs.index(a["name"])))
            elif a["name"] in optional:
                self.forward_sources.append(("out", len(self.outputs) + optional.index(a["name"])))
            elif a["name"] in self.inputs:
                self.forward_sources.append(("in", self.inputs.index(a["name"])))
            else:
                self.forward_sources.append(None)
        self.plan = registry.backward_plan(forward, backward) if backward else None
        self.forward_attrs = [a["name"] for a in forward.attrs]
        self.backward_attrs = [a["name"] for a in backward.attrs] if backward else []
        # A backward with an `accumulate` flag can overwrite its gradients instead of adding into
        # them; the (gradient, input) index pairs its declaration lets share one array (the
        # gradient then written over the input it reads: cross_entropy's dlogits over logits).
        self.backward_overwrites = "accumulate" in self.backward_attrs
        self.grad_over_input = tuple(
            (self.inputs.index(written[1:]), self.inputs.index(read))
            for written, read in (backward.may_alias if backward else ())
            if backward.arg(written)["role"] in ("grad", "optional_grad") and read in self.inputs)


@functools.cache
def _pair(base: str) -> _KernelPair:
    return _KernelPair(base)


def _check_float(op: str, *specs: Spec) -> None:
    for spec in specs:
        if spec.dtype != F32:
            raise TypeError(f"{op}: expected float32 tensors, got {spec.dtype} with shape {spec.shape}")


def _pick(source, outs: list, ins: list):
    """A forward kernel argument: output j, input i, or None (not produced)."""
    if source is None:
        return None
    kind, index = source
    if kind == "out":
        return outs[index] if index < len(outs) else None  # an optional output not asked for
    return ins[index]


class KernelOp(Op):
    """An op whose forward and backward are a declared kernel pair (see
    pyengine.registry): shapes come from the declaration's shape rule, the
    kernels' arguments from their declared names, and what the backward
    saves from the arrays its declaration reads. `options` are the kernels'
    attributes (those the backward does not declare are not passed to it)."""

    def __init__(self, base: str, **options):
        self.name = self.base = base
        self.pair = _pair(base)
        self.options = options
        self._forward_kernel = self.pair.forward.kernel
        self._forward_options = [options[k] for k in self.pair.forward_attrs if k in options]
        if len(self._forward_options) != len(options):
            unknown = set(options) - set(self.pair.forward_attrs)
            raise TypeError(f"{base}: unknown options {sorted(unknown)}")
        self._backward_options = {k: options[k] for k in self.pair.backward_attrs if k in options}

    def infer(self, *inputs: Spec) -> list:
        pair = self.pair
        if len(inputs) > len(pair.inputs):
            raise TypeError(f"{self.name}: takes {len(pair.inputs)} inputs, got {len(inputs)}")
        for name, spec in zip(pair.inputs, inputs):
            if name in pair.float_inputs and spec.dtype != F32:
                raise TypeError(f"{self.name}: expected float32 tensors, got {spec.dtype} with "
                                f"shape {spec.shape}")
        shapes = {name: spec.shape for name, spec in zip(pair.inputs, inputs)}
        expected = _C.infer_shapes(pair.forward.name, shapes, self.options)
        return [Spec(tuple(expected[name])) for name in pair.outputs]

    def forward(self, outs, ins):
        ins = list(ins) + [None] * (len(self.pair.inputs) - len(ins))
        args = [_pick(s, outs, ins) for s in self.pair.forward_sources]
        self._forward_kernel(*args, *self._forward_options)

    def backward(self, grad_ins, grad_out, ins, outs):
        grad_ins = list(grad_ins) + [None] * (len(self.pair.inputs) - len(grad_ins))
        args = []
        for kind, index in self.pair.plan.sources:
            args.append(grad_ins[index] if kind == "grad" else grad_out if kind == "grad_out"
                        else ins[index] if kind == "input" else outs[index])
        self.pair.backward.kernel(*args, **self._backward_options)

    def bind_forward(self, outs, ins):
        """The kernel with every argument already in place: a replayed step
        calls it directly, with no Python in between."""
        ins = list(ins) + [None] * (len(self.pair.inputs) - len(ins))
        args = [_pick(s, outs, ins) for s in self.pair.forward_sources]
        return functools.partial(self._forward_kernel, *args, *self._forward_options)

    def bind_backward(self, grad_ins, grad_out, ins, outs):
        if type(self).backward is not KernelOp.backward:  # a subclass adds checks: keep them
            return super().bind_backward(grad_ins, grad_out, ins, outs)
        grad_ins = list(grad_ins) + [None] * (len(self.pair.inputs) - len(grad_ins))
        args = [grad_ins[i] if kind == "grad" else grad_out if kind == "grad_out"
                else ins[i] if kind == "input" else outs[i] for kind, i in self.pair.plan.sources]
        return functools.partial(self.pair.backward.kernel, *args, **self._backward_options)

    def overwriting(self) -> KernelOp | None:
        """This op with a backward that overwrites its gradients (accumulate=False), for the
        executor's steps that write a gradient first; None when the kernel only adds into them."""
        if not self.pair.backward_overwrites:
            return None
        op = copy.copy(self)
        op._backward_options = {**self._backward_options, "accumulate": False}
        return op

    def saved(self, ins, outs):
        values = []
        for kind, index in self.pair.plan.saves:
            source = ins if kind == "input" else outs
            if index < len(source):  # an optional input may be absent
                values.append(source[index])
        return values


class MatMul(KernelOp):
    def __init__(self, trans_a=False, trans_b=False):
        super().__init__("matmul", trans_a=bool(trans_a), trans_b=bool(trans_b))
        self.trans_a, self.trans_b = bool(trans_a), bool(trans_b)

    def label(self):
        flags = "".join(f for f, on in (("ᵀa", self.trans_a), ("ᵀb", self.trans_b)) if on)
        return f"matmul{('[' + flags + ']') if flags else ''}"


class BroadcastMatMul(Op):
    """a @ b for a (..., m, k) and b (..., k, n) whose batch dims broadcast against each other
    without either being 2-D or the two being equal (torch.matmul's rule): (2, 1, 4, 5) @ (3, 5, 6)
    is (2, 3, 4, 6). The batch kernel shares a 2-D operand across a batch (stride 0) but has one
    stride an operand, so the broadcast batch is cut in two: the longest run of trailing batch dims
    over which each operand is either indexed in full or all of size 1 (the kernel's own batch,
    one call), and the dims before it, a loop of such calls on views of a, b and c. Nothing is
    materialized: every view is a contiguous slice of its array (leading dims), and the backward
    accumulates each call's gradients into the slice of da and db it read, so the sum over the
    broadcast dims is the kernel's own += (calls in a fixed order: the same bits on every run)."""

    name = "matmul"

    def __init__(self):
        self._kernel = MatMul()

    def infer(self, a, b):
        _check_float(self.name, a, b)
        if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not multiply (a (..., m, k), b (..., k, n))")
        try:
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: the batch dims of {a.shape} and {b.shape} do not broadcast") from None
        return [Spec((*batch, a.shape[-2], b.shape[-1]))]

    def _calls(self, c, a, b) -> list:
        """[(c view, a view, b view)], one per kernel call, in order (see the class)."""
        batch = c.shape[:-2]
        a = a.reshape((1,) * (len(batch) + 2 - a.ndim) + a.shape)  # leading 1s: views, no copy
        b = b.reshape((1,) * (len(batch) + 2 - b.ndim) + b.shape)
        split, kinds = len(batch), [None, None]  # kinds: "full" or "one" over the inner dims
        while split > 0:
            d = split - 1
            if batch[d] != 1:
                new = ["full" if x.shape[d] == batch[d] else "one" for x in (a, b)]
                if any(k is not None and k != n for k, n in zip(kinds, new)):
                    break
                kinds = new
            split = d
        inner = int(np.prod(batch[split:], dtype=np.int64))
        calls = []
        for outer in np.ndindex(*batch[:split]):
            views = []
            for x, kind in zip((a, b), kinds):
                part = x[tuple(i if x.shape[d] != 1 else 0 for d, i in enumerate(outer))]
                views.append(part.reshape(part.shape[-2:]) if kind == "one" else part.reshape(inner, *part.shape[-2:]))
            shared = all(v.ndim == 2 for v in views)
            part = c[outer]
            calls.append((part.reshape(part.shape[-2:]) if shared else part.reshape(inner, *part.shape[-2:]), *views))
        return calls

    def forward(self, outs, ins):
        self.bind_forward(outs, ins)()

    def backward(self, grad_ins, grad_out, ins, outs):
        self.bind_backward(grad_ins, grad_out, ins, outs)()

    def _grad_views(self, grad_out, da, db, ins) -> list:
        """The slices of da and db (each of its input's shape) that each call accumulates into,
        None where that gradient is not asked for."""
        views = self._calls(grad_out, da if da is not None else ins[0], db if db is not None else ins[1])
        return [(None, ga if da is not None else None, gb if db is not None else None) for _, ga, gb in views]

    def bind_forward(self, outs, ins):
        steps = [self._kernel.bind_forward([c], [a, b]) for c, a, b in self._calls(outs[0], *ins)]
        return functools.partial(_run_all, steps)

    def bind_backward(self, grad_ins, grad_out, ins, outs):
        da, db = grad_ins
        steps = [self._kernel.bind_backward([ga, gb], dc, [a, b], [dc])
                 for (dc, a, b), (_, ga, gb) in zip(self._calls(grad_out, *ins),
                                                    self._grad_views(grad_out, da, db, ins))]
        return functools.partial(_run_all, steps)

    def saved(self, ins, outs):
        return list(ins)


def _run_all(steps: list) -> None:
    for step in steps:
        step()


# The activations a GEMM epilogue applies: the executor fuses these into the
# matmul that alone feeds them (declared once, as the C++ Activation enum).
FUSIBLE_ACTIVATIONS = tuple(name for name in registry.ENUMS["Activation"] if name != "none")


class WithActivation(KernelOp):
    """A matmul or convolution whose output feeds only an activation, fused by
    the executor: the producer's own kernel with the activation in its
    epilogue (its `activation` attribute), writing the activation's output
    (outs[0]) and, when a backward step reads it and the kernel has a
    `preact` output (matmul), its own output (outs[1]). Forward only: the
    backward steps stay those of the two original ops, which read the same
    buffers."""

    def __init__(self, producer: KernelOp, activation: str, in_specs=()):
        if activation not in FUSIBLE_ACTIVATIONS:
            raise ValueError(f"{producer.name}: no epilogue for activation {activation!r}")
        super().__init__(producer.base, **producer.options, activation=activation)
        self.producer, self.activation = producer, activation
        self.name = f"{producer.name}+{activation}"

    def label(self):
        return f"{self.producer.label()}+{self.activation}"


class Binary(KernelOp):
    def __init__(self, op: str):
        super().__init__("binary", op=op)
        self.name = op

    def _passes_gradient(self, a_shape, b_shape) -> bool:
        """add and sub of operands of one shape: the gradients are dout and +-dout, and the
        backward reads neither operand (no sum over broadcast dims either)."""
        return self.name in ("add", "sub") and tuple(a_shape) == tuple(b_shape)

    def saved(self, ins, outs):
        # Then the executor frees the operands after the forward: a residual stream's branch
        # outputs (GPT-2 124M's step: 24 of 1024 x 768 floats, 72 MiB, at its peak).
        if len(ins) == 2 and self._passes_gradient(ins[0].spec.shape, ins[1].spec.shape):
            return []
        return super().saved(ins, outs)

    def backward(self, grad_ins, grad_out, ins, outs):
        if not self._passes_gradient(ins[0].shape, ins[1].shape):
            return super().backward(grad_ins, grad_out, ins, outs)
        da, db = (list(grad_ins) + [None, None])[:2]
        if da is not None:  # da += dout
            _C.binary_forward(da, da, grad_out, "add")
        if db is not None:  # db += dout, or -= for sub (after da: x + x adds twice)
            _C.binary_forward(db, db, grad_out, self.name)


class AddReLU(KernelOp):
    """relu(a + b) of two same-shape arrays in one pass (a residual block's
    end), and its backward: da += db += dy where y > 0. The executor fuses an
    add and the ReLU that alone reads it into this op, forward and backward."""

    def __init__(self):
        super().__init__("add_relu")
        self.name = "add+relu"


class Scalar(KernelOp):
    def __init__(self, op: str, scalar: float):
        super().__init__("scalar", op=op, s=float(scalar))
        self.op, self.scalar = op, float(scalar)
        self.name = f"{op}_scalar"

    def label(self):
        return f"{self.op}({self.scalar:g})"


class Unary(KernelOp):
    """One input, one output of its shape: the activations, and softmax and
    log-softmax over the last axis; any declared one-input kernel pair."""

    def __init__(self, name: str):
        super().__init__(name)


class StdSqrt(Unary):
    """std's square root of the variance: sqrt, whose backward gives 0 where the std is 0 (a slice
    of equal values), as torch's std does; sqrt's own backward, dy * 0.5 / y, would give inf
    there and the variance's backward 0 * inf = NaN. It reads y as 1 / 0 = inf where y is 0: one
    pass over the (reduced) output, none over the input."""

    def __init__(self):
        super().__init__("sqrt")
        self.name = "std"

    def backward(self, grad_ins, grad_out, ins, outs):
        y = outs[0]
        super().backward(grad_ins, grad_out, ins, [np.where(y == 0, np.float32(np.inf), y)])


# GELU's kernel for torch's `approximate` argument.
_GELU_KERNELS = {"none": "gelu_erf", "tanh": "gelu"}


def gelu_kernel(approximate: str) -> str:
    if approximate not in _GELU_KERNELS:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _GELU_KERNELS[approximate]


class Sum(Op):
    """Sum (or mean) over axes. Adjacent axes are one kernel call; others go
    through partial sums, which are extra outputs so the executor plans them."""

    def __init__(self, axis=None, keepdims=False, mean=False):
        self.axis, self.keepdims, self.mean = axis, keepdims, mean
        self.name = "mean" if mean else "sum"

    def infer(self, x):
        _check_float(self.name, x)
        axis = self.axis
        if not x.shape and axis is not None and all(a in (0, -1) for a in np.atleast_1d(np.asarray(axis, object))):
            axis = ()  # a 0-d tensor's dim 0 (or -1) reduces nothing, as in torch
        self._axes = K.normalize_axes(axis, len(x.shape))
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


class LayerNorm(KernelOp):
    def __init__(self, eps: float):
        super().__init__("layer_norm", eps=float(eps))
        self.eps = float(eps)


class AddLayerNorm(KernelOp):
    """layer_norm(a + b) of two same-shape arrays in one pass, the sum never written (a post-LN
    block's residual add and its layer norm). The executor fuses an add and the layer norm that
    alone reads it into this op in graphs without a backward (CompiledGraph._fuse_add_layer_norms);
    its backward adds a + b again."""

    def __init__(self, eps: float):
        super().__init__("add_layer_norm", eps=float(eps))
        self.eps = float(eps)
        self.name = "add+layer_norm"


class RMSNorm(KernelOp):
    def __init__(self, eps: float):
        super().__init__("rms_norm", eps=float(eps))
        self.eps = float(eps)


class Conv2d(KernelOp):
    """2-D convolution of x (N, C, H, W) with weight (K, C / groups, R, S), plus bias (K,) when given."""

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        pairs = [_int_pair(name, v) for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation))]
        if not _is_int(groups):  # int(1.5) would be a silent 1
            raise TypeError(f"conv2d: groups must be an int, got {groups!r}")
        super().__init__("conv2d", stride=pairs[0], padding=pairs[1], dilation=pairs[2], groups=int(groups))
        self.stride, self.padding, self.dilation = pairs
        self.groups = int(groups)

    def label(self):
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return f"conv2d(stride={self.stride}, padding={self.padding}, dilation={self.dilation}{groups})"


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_pair(name: str, v) -> tuple:
    """conv2d's stride, padding or dilation: an int or a pair of ints, (h, w)."""
    if _is_int(v):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(i) for i in v):
        return (int(v[0]), int(v[1]))
    raise TypeError(f"conv2d: {name} must be an int or a pair of ints (h, w), got {v!r}")


def _add_relu(op: Binary, activation: str, in_specs) -> Op | None:
    """add_relu for an add of two operands of one shape (no broadcasting)."""
    if op.name != "add" or len(in_specs) != 2 or in_specs[0].shape != in_specs[1].shape:
        return None
    return AddReLU()


@dataclass(frozen=True)
class Fusion:
    """A producer op the executor fuses with the activation that alone reads its output."""

    producer: type  # the producer's Op class
    activations: tuple  # the activations it takes
    writes_preact: bool  # it can also write its own output, for a backward step that reads it
    fused: object  # (producer op, activation name, input specs) -> the fused op, or None: not this one
    fuses_backward: bool = False  # the fused op's backward replaces the two backward steps


# The table the executor's one fusion pass reads (pyengine.graph.executor).
FUSIONS = (
    Fusion(MatMul, FUSIBLE_ACTIVATIONS, True, WithActivation),
    Fusion(Conv2d, FUSIBLE_ACTIVATIONS, False, WithActivation),
    Fusion(Binary, ("relu",), False, _add_relu, fuses_backward=True),
)


class CrossEntropy(KernelOp):
    def __init__(self, ignore_index: int = -100):
        super().__init__("cross_entropy", ignore_index=int(ignore_index))
        self.ignore_index = int(ignore_index)

    def backward(self, grad_ins, grad_out, ins, outs):
        if len(grad_ins) > 1 and grad_ins[1] is not None:
            raise ValueError("cross_entropy: integer targets have no gradient")
        super().backward(grad_ins, grad_out, ins, outs)


class Reshape(Op):
    """A view with a new shape: no kernel, the output shares the input's memory."""

    name = "reshape"
    is_view = True

    def __init__(self, shape):
        for d in shape:  # int(d) took 1.5 (and said only "invalid literal for int()" of 'x')
            if not isinstance(d, (int, np.integer)) or isinstance(d, (bool, np.bool_)):
                raise TypeError(f"{self.name}: shape must contain ints, got {type(d).__name__} in {tuple(shape)}")
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
        _C.binary_forward(g, g, grad_out.reshape(g.shape), "add")

    def view_of(self, x: np.ndarray, spec: Spec) -> np.ndarray:
        return x.reshape(spec.shape)

    def label(self):
        return f"reshape{self.shape}"
