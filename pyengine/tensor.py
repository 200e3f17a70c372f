"""Tensor: a numpy array with reverse-mode autodiff.

Every operation on tensors runs its kernel at once (eager mode) and, when a
gradient may be needed, records a :class:`Node` linking the result to its
inputs. ``loss.backward()`` walks those nodes in reverse topological order
(computed iteratively, so deep graphs do not hit Python's recursion limit)
and accumulates gradients into ``.grad``.

While a graph capture is active (see :mod:`pyengine.graph`), every node is
recorded, even where no gradient is needed, so the same code that runs
eagerly can be captured into a static, memory-planned graph.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import numpy as np

from pyengine import ops as O
from pyengine import ops_layout as OL
from pyengine import ops_reduce as OR

__all__ = ["Tensor", "Node", "no_grad", "is_grad_enabled", "tensor", "from_numpy", "topological_order"]


class _State(threading.local):
    def __init__(self):
        self.grad_enabled = True
        self.capturing = False  # inside pyengine.graph.capture: record every node


_state = _State()
# The captured graphs alive (pyengine.graph adds each): a parameter or constant a graph holds is
# read in place by its replays, so Tensor.data assignment must keep that array (see Tensor.data).
GRAPHS: weakref.WeakSet = weakref.WeakSet()


def is_grad_enabled() -> bool:
    return _state.grad_enabled


@contextlib.contextmanager
def no_grad():
    """Run operations without recording them for backward."""
    previous = _state.grad_enabled
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextlib.contextmanager
def _capturing():
    previous = _state.capturing
    _state.capturing = True
    try:
        yield
    finally:
        _state.capturing = previous


class Node:
    """One application of an op: its inputs (tensors) and output arrays."""

    __slots__ = ("op", "inputs", "outputs")

    def __init__(self, op: O.Op, inputs: tuple, outputs: list):
        self.op, self.inputs, self.outputs = op, inputs, outputs


def topological_order(roots, parents) -> list:
    """Every item reachable from `roots` through `parents(item)`, each after its
    parents. Iterative depth-first search: no recursion limit."""
    order, visited = [], set()
    for root in roots:
        if id(root) in visited:
            continue
        visited.add(id(root))
        stack = [(root, iter(parents(root)))]
        while stack:
            item, pending = stack[-1]
            for parent in pending:
                if id(parent) not in visited:
                    visited.add(id(parent))
                    stack.append((parent, iter(parents(parent))))
                    break
            else:
                stack.pop()
                order.append(item)
    return order


# The dtypes a Tensor can hold: bool, integers and floats (the ops compute in float32 and index in int64).
_KINDS = "biuf"


def _as_array(data, fn: str = "Tensor") -> np.ndarray:
    """The array a Tensor wraps. A numpy array is taken as it is, never copied or cast: one that is
    not C-contiguous, not in native byte order or of a dtype no Tensor holds raises, naming the
    explicit fix. A list or a scalar is converted (floats to float32, integers to int64)."""
    if isinstance(data, Tensor):
        return data.data
    if isinstance(data, np.ndarray):
        if isinstance(data, np.ma.MaskedArray):
            raise TypeError(f"{fn}: a masked array would lose its mask; pass a.filled(value) or np.asarray(a)")
        array = data if type(data) is np.ndarray else data.view(np.ndarray)  # np.matrix, memmap: no copy
        _check_shareable(fn, array)
        return array
    array = np.asarray(data)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu":
        array = array.astype(np.int64)
    if array.dtype.kind not in _KINDS:
        raise TypeError(f"{fn}: cannot hold {type(data).__name__} data of numpy dtype {array.dtype} "
                        f"(a Tensor holds bool, integer or float values)")
    return np.require(array, requirements="C")  # keeps 0-d arrays 0-d


def _check_shareable(fn: str, array: np.ndarray) -> None:
    """A numpy array a Tensor can wrap as it is (see Tensor)."""
    dtype = array.dtype
    if dtype.kind not in _KINDS or dtype.fields is not None:
        raise TypeError(f"{fn}: a Tensor holds bool, integer or float arrays, got dtype {dtype}; "
                        f"convert it explicitly, e.g. a.astype(np.float32)")
    if not dtype.isnative:
        native = dtype.newbyteorder("=")
        raise TypeError(f"{fn}: the array's dtype {dtype.str!r} is not in native byte order and a Tensor "
                        f"never converts silently; pass a.astype({native.str!r})")
    if not array.flags.c_contiguous:
        raise ValueError(f"{fn}: the array of shape {array.shape} is not C-contiguous (strides {array.strides}) "
                         f"and a Tensor wraps arrays without copying; pass np.ascontiguousarray(a), or "
                         f"pyengine.tensor(a) for a copy")


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    ``Tensor(numpy_array)`` wraps the array without copying or casting, as
    ``torch.from_numpy`` does: the Tensor and the array share memory. No copy
    and no cast is ever made silently, so an array a Tensor cannot hold as it
    is raises at once, naming the fix:

    - not C-contiguous (a transpose, a slice with a step, negative strides):
      ValueError; pass ``np.ascontiguousarray(a)``, or ``pyengine.tensor(a)``
      (a copy);
    - not in native byte order (``'>f4'`` on x86): TypeError; pass
      ``a.astype('<f4')``;
    - not bool, integer or float (object, strings, complex, structured):
      TypeError.

    A float64 or int32 array is held as it is (and a Tensor of it can be
    printed, indexed, saved); the math ops take float32 and raise a TypeError
    naming the op otherwise, and ``requires_grad`` needs float32. A read-only
    array is held too (an optimizer, which updates in place, refuses it). A
    0-d array is a 0-d Tensor; a Tensor given is shared. Lists and Python
    scalars are converted (floats to float32, integers to int64), being no
    array to share.
    """

    __array_priority__ = 1000  # numpy defers `ndarray op Tensor` to Tensor

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        self.data = _as_array(data)
        if requires_grad and self.data.dtype != np.float32:
            raise TypeError(f"Tensor: only float32 tensors can require grad, got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.name = name
        self._grad: np.ndarray | None = None
        self._node: Node | None = None

    # ---- plain attributes
    @property
    def data(self) -> np.ndarray:
        """The array the tensor wraps (shared, never a copy)."""
        return self._data

    @data.setter
    def data(self, value) -> None:
        """Wrap another array (torch's ``t.data = value``), checked as Tensor() checks it: an array
        not C-contiguous or not native raises, a Tensor's array is shared. The dtype must stay
        (TypeError: ops and gradients were recorded for it). A new shape is allowed, as in torch (a
        gradient of the old shape is dropped), except for a tensor a captured graph holds in place
        (a parameter or constant of a live graph): the graph's plan and buffers are fixed, so a new
        shape raises ValueError, and the same shape is copied into the array the graph reads, which
        a replay then sees (as load_state_dict copies)."""
        array = _as_array(value, "Tensor.data")
        old = self.__dict__.get("_data")
        if old is None:  # __init__
            self._data = array
            return
        if array.dtype != old.dtype:
            raise TypeError(f"Tensor.data: got dtype {array.dtype} for a tensor of dtype {old.dtype} (shape "
                            f"{old.shape}); a Tensor keeps its dtype: make a new Tensor, or pass a.astype({old.dtype})")
        if any(graph.holds(self) for graph in list(GRAPHS)):
            if array.shape != old.shape:
                raise ValueError(f"Tensor.data: got shape {array.shape} for a tensor of shape {old.shape} that a "
                                 f"captured graph reads in place; its plan would break (capture again instead)")
            if not old.flags.writeable:
                raise ValueError(f"Tensor.data: the tensor of shape {old.shape} a captured graph reads is read-only")
            if array is not old:
                np.copyto(old, array)
                O.parameters_written()  # a graph with batch norm folded from it folds again
            return
        if array.shape != old.shape:
            self._grad = None
        self._data = array

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def grad(self) -> Tensor | None:
        return None if self._grad is None else Tensor(self._grad)

    @grad.setter
    def grad(self, value) -> None:
        if value is None:
            self._grad = None
            return
        grad = _as_array(value, "Tensor.grad")
        if grad.dtype != np.float32:
            raise TypeError(f"Tensor.grad: must be float32, got {grad.dtype}")
        if grad.shape != self.shape:
            raise ValueError(f"Tensor.grad: must have the tensor's shape {self.shape}, got {grad.shape}")
        self._grad = grad

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self._grad = None

    def __repr__(self) -> str:
        """As PyTorch prints a tensor of the same values (see pyengine.printing)."""
        from pyengine.printing import tensor_repr
        return tensor_repr(self.data, requires_grad=self.requires_grad)

    def __len__(self) -> int:
        return len(self.data)

    # ---- autodiff
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        `grad` defaults to 1 for a scalar (one-element) tensor.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input did)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: grad can be implicit only for a scalar, got shape {self.shape}")
            seed = np.ones(self.shape, dtype=np.float32)
        else:
            seed = np.array(grad.data if isinstance(grad, Tensor) else grad, dtype=np.float32).reshape(self.shape)
        if self._node is None:  # backward of a leaf (x.contiguous() of a contiguous x is x): its grad is seed
            _grad_buffer(self, {})[...] += seed
            return
        order = topological_order([self], _differentiable_parents)
        grads = {id(self): seed}
        for tensor in reversed(order):
            node = tensor._node
            grad_out = grads.pop(id(tensor), None)
            if node is None or grad_out is None:
                continue
            grad_ins = [_grad_buffer(t, grads) if t.requires_grad else None for t in node.inputs]
            shared = _unshare(grad_ins)
            node.op.backward(grad_ins, grad_out, [t.data for t in node.inputs], node.outputs)
            for buffer, own in shared:
                buffer += own

    # ---- operators
    def _binary(self, other, op: str, reverse: bool = False) -> Tensor:
        if isinstance(other, Tensor):
            a, b = (other, self) if reverse else (self, other)
            return apply(O.Binary(op), a, b)
        if isinstance(other, (int, float, np.floating, np.integer)):
            scalar_op = {("add", False): "add", ("add", True): "add",
                         ("sub", False): "sub", ("sub", True): "rsub",
                         ("mul", False): "mul", ("mul", True): "mul",
                         ("div", False): "div", ("div", True): "rdiv"}[(op, reverse)]
            return apply(O.Scalar(scalar_op, float(other)), self)
        if isinstance(other, np.ndarray):
            return self._binary(Tensor(other), op, reverse)
        return NotImplemented

    def __add__(self, other): return self._binary(other, "add")
    def __radd__(self, other): return self._binary(other, "add", reverse=True)
    def __sub__(self, other): return self._binary(other, "sub")
    def __rsub__(self, other): return self._binary(other, "sub", reverse=True)
    def __mul__(self, other): return self._binary(other, "mul")
    def __rmul__(self, other): return self._binary(other, "mul", reverse=True)
    def __truediv__(self, other): return self._binary(other, "div")
    def __rtruediv__(self, other): return self._binary(other, "div", reverse=True)
    def __neg__(self): return apply(O.Scalar("mul", -1.0), self)

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError("Tensor ** x: only a Python number exponent is supported")
        # x ** 0.5 and x ** -0.5 are sqrt and rsqrt, as in torch: (-inf) ** 0.5 is NaN, not C's +inf
        if exponent in (0.5, -0.5):
            return self.sqrt() if exponent > 0 else self.rsqrt()
        return apply(O.Scalar("pow", float(exponent)), self)

    def __matmul__(self, other):
        return self._matmul(other if isinstance(other, Tensor) else Tensor(other))

    def __rmatmul__(self, other):
        return Tensor(other)._matmul(self)

    # ---- functions
    def matmul(self, other, trans_a=False, trans_b=False) -> Tensor:
        return apply(O.MatMul(trans_a, trans_b), self, other)

    def _matmul(self, other: Tensor) -> Tensor:
        """self @ other with torch's 1-D rules: a vector on the left is a row, on the right a
        column, and the dim it added is dropped from the result."""
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul: both arguments need at least 1 dim, got shapes {self.shape} and {other.shape}")
        a = self.reshape(1, -1) if self.ndim == 1 else self
        b = other.reshape(-1, 1) if other.ndim == 1 else other
        # batch dims that broadcast (neither operand 2-D, not equal): torch's rule, a loop of batch calls
        broadcast = a.ndim > 2 and b.ndim > 2 and a.shape[:-2] != b.shape[:-2]
        out = apply(O.BroadcastMatMul() if broadcast else O.MatMul(), a, b)
        if self.ndim == 1 and other.ndim == 1:
            return out.reshape(())
        if self.ndim == 1:
            return out.reshape(*out.shape[:-2], out.shape[-1])
        return out.reshape(out.shape[:-1]) if other.ndim == 1 else out

    def relu(self) -> Tensor: return apply(O.Unary("relu"), self)
    def gelu(self, approximate: str = "none") -> Tensor:
        """GELU as torch.Tensor.gelu: exact x Phi(x) ('none', the default) or the tanh form ('tanh')."""
        return apply(O.Unary(O.gelu_kernel(approximate)), self)

    def tanh(self) -> Tensor: return apply(O.Unary("tanh"), self)
    def sigmoid(self) -> Tensor: return apply(O.Unary("sigmoid"), self)
    def silu(self) -> Tensor: return apply(O.Unary("silu"), self)
    def sqrt(self) -> Tensor: return apply(O.Unary("sqrt"), self)
    def rsqrt(self) -> Tensor: return apply(O.Unary("rsqrt"), self)
    def log(self) -> Tensor: return apply(O.Unary("log"), self)
    def abs(self) -> Tensor: return apply(O.Unary("abs"), self)
    def square(self) -> Tensor: return apply(O.Unary("square"), self)
    def __abs__(self) -> Tensor: return self.abs()

    def clamp(self, min=None, max=None) -> Tensor:  # noqa: A002 - PyTorch's names
        """Limit to [min, max] (either may be None), as torch.clamp."""
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must be given")
        lo = float("-inf") if min is None else float(min)
        hi = float("inf") if max is None else float(max)
        if lo > hi:  # torch: min(max(x, min), max) is max wherever x is not NaN, and no gradient passes
            return apply(O.KernelOp("clamp", min=0.0, max=0.0), self) * 0.0 + hi
        return apply(O.KernelOp("clamp", min=lo, max=hi), self)

    clip = clamp
    def exp(self) -> Tensor: return apply(O.Unary("exp"), self)
    def softmax(self) -> Tensor: return self._rowwise("softmax")
    def log_softmax(self) -> Tensor: return self._rowwise("log_softmax")

    def _rowwise(self, name: str) -> Tensor:
        """An op over the last dim; a 0-d tensor is a row of one, as in torch."""
        if self.ndim == 0:
            return apply(O.Unary(name), self.reshape(1)).reshape(())
        if self.size == 0:  # rows of nothing, or no rows: an empty answer, as torch's
            return self * 1.0
        return apply(O.Unary(name), self)

    def sum(self, axis=None, keepdims=False) -> Tensor:
        return apply(O.Sum(axis, keepdims), self)

    def mean(self, axis=None, keepdims=False) -> Tensor:
        return apply(O.Sum(axis, keepdims, mean=True), self)

    def reshape(self, *shape) -> Tensor:
        if not shape:  # x.reshape() took () and answered for a 0-d x; torch: a TypeError
            raise TypeError("reshape: missing the shape (reshape(()) for a 0-d tensor)")
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return apply(O.Reshape(shape), self)

    # ---- layout, as in PyTorch (pyengine.ops_layout): views share memory, the rest copy
    def view(self, *shape) -> Tensor:
        """The same data with a new shape (one -1 allowed), a view as reshape."""
        if not shape:
            raise TypeError("view: missing the shape (view(()) for a 0-d tensor)")
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return apply(OL.View(shape), self)

    def unsqueeze(self, dim) -> Tensor: return apply(OL.Unsqueeze(dim), self)
    def squeeze(self, dim=None) -> Tensor: return apply(OL.Squeeze(dim), self)

    def flatten(self, start_dim=0, end_dim=-1) -> Tensor:
        return apply(OL.Flatten(start_dim, end_dim), self)

    def permute(self, *dims) -> Tensor:
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return apply(OL.Permute(dims), self)

    def transpose(self, dim0, dim1) -> Tensor: return apply(OL.Transpose(dim0, dim1), self)

    @property
    def T(self) -> Tensor:  # noqa: N802 - PyTorch's name
        """Every dim reversed: the transpose of a matrix (a contiguous copy)."""
        return apply(OL.ReverseDims(), self)

    @property
    def mT(self) -> Tensor:  # noqa: N802 - PyTorch's name
        """The last two dims swapped (a contiguous copy)."""
        return apply(OL.MatrixTranspose(), self)

    def contiguous(self) -> Tensor:
        return self  # every tensor's data is contiguous here

    def __getitem__(self, index) -> Tensor:
        """Basic indexing (ints, slices, negative steps too, None, ...) and one
        int64 index array (an array, a list or an int Tensor) with numpy's
        semantics: a contiguous copy. Bool masks raise TypeError."""
        from pyengine import combine
        return combine.getitem(self, index)

    # ---- joining, splitting and selecting (pyengine.combine)
    def split(self, split_size_or_sections, dim=0) -> tuple:
        """Pieces along dim, as torch.split (views where contiguous)."""
        from pyengine import combine
        return combine.split(self, split_size_or_sections, dim)

    def chunk(self, chunks, dim=0) -> tuple:
        from pyengine import combine
        return combine.chunk(self, chunks, dim)

    def masked_fill(self, mask, value) -> Tensor:
        from pyengine import combine
        return combine.masked_fill(self, mask, value)

    def tril(self, diagonal=0) -> Tensor:
        from pyengine import combine
        return combine.tril(self, diagonal)

    def triu(self, diagonal=0) -> Tensor:
        from pyengine import combine
        return combine.triu(self, diagonal)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    # ---- reductions, as in PyTorch (pyengine.ops_reduce)
    def max(self, dim=None, keepdim=False):
        """Without dim: the largest element (0-d), its gradient spread evenly
        over ties. With dim: (values, indices) as torch.return_types.max, the
        gradient going to the element at the index."""
        return self._extremum("max", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        """As max, for the smallest elements."""
        return self._extremum("min", dim, keepdim)

    def _extremum(self, kind: str, dim, keepdim: bool):
        if isinstance(dim, Tensor):
            raise TypeError(f"{kind}: the elementwise form {kind}(other) is not supported")
        if dim is None:
            if keepdim:
                raise TypeError(f"{kind}: keepdim needs a dim")
            return apply(OR.ExtremumAll(kind), self)
        if self.ndim == 0:
            OL.normalize_dim(dim, 0, kind)
            return self.reshape(1)._extremum(kind, 0, False)
        indices = apply(OR.ArgReduce(kind, dim, keepdim=True), self)
        values = apply(OR.ExtremumDim(kind, dim, keepdim), self, indices)
        return OR.RETURN_TYPES[kind](values, indices if keepdim else indices.squeeze(dim))

    def argmax(self, dim=None, keepdim=False) -> Tensor:
        """int64 index of the largest element (over the flattened tensor without dim)."""
        return apply(OR.ArgReduce("max", dim, keepdim), self)

    def argmin(self, dim=None, keepdim=False) -> Tensor:
        return apply(OR.ArgReduce("min", dim, keepdim), self)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None) -> Tensor:
        """Variance over dim (None: all), sum((x - mean)^2) / max(0, N - correction),
        as torch.var: correction defaults to 1; unbiased=False means correction=0."""
        return self._variance("var", dim, unbiased, keepdim, correction)

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None) -> Tensor:
        """sqrt(var), with var's arguments."""
        return apply(O.StdSqrt(), self._variance("std", dim, unbiased, keepdim, correction))

    def _variance(self, fn: str, dim, unbiased, keepdim, correction) -> Tensor:
        axes, divisor = OR.var_setup(fn, self.shape, dim, unbiased, correction)
        centered = self - self.mean(axes, keepdims=True)
        return (centered * centered).sum(axes, keepdims=keepdim) / divisor


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """A tensor holding a copy of `data` (as torch.tensor): C-contiguous and in native byte order
    whatever the layout of an array given; its dtype kept, or `dtype` if given (an explicit cast)."""
    if isinstance(data, (Tensor, np.ndarray)):
        array = data.data if isinstance(data, Tensor) else data
        if array.dtype.kind in _KINDS and dtype is None:
            dtype = array.dtype.newbyteorder("=")
        array = np.array(array, dtype=dtype, order="C")
    else:
        array = np.array(_as_array(data, "tensor"), dtype=dtype, order="C")
    _check_shareable("tensor", array)
    return Tensor(array, requires_grad=requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """A Tensor sharing `array`'s memory, as torch.from_numpy: the array is taken as Tensor(array)
    takes it (C-contiguous, native byte order, bool, integer or float), never copied."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy array, got {type(array).__name__}")
    return Tensor(_as_array(array, "from_numpy"))


def _differentiable_parents(t: Tensor):
    return () if t._node is None else [p for p in t._node.inputs if p.requires_grad]


def _grad_buffer(t: Tensor, grads: dict) -> np.ndarray:
    """The array that t's gradient accumulates into: .grad for a leaf, a
    temporary for an intermediate tensor."""
    if t._node is None:
        if t._grad is None:
            t._grad = np.zeros(t.shape, dtype=np.float32)
        return t._grad
    buffer = grads.get(id(t))
    if buffer is None:
        buffer = grads[id(t)] = np.zeros(t.shape, dtype=np.float32)
    return buffer


def _unshare(grad_ins: list) -> list:
    """A tensor given to one op twice (layer_norm(x, w, w), attention(q, k, k)), or two views of
    one buffer, would have overlapping buffers for two gradients, which a kernel must not be
    handed (its outputs may not overlap): each later one gets a zeroed buffer of its own, to be
    added into the shared one after the backward. Returns those (shared buffer, own buffer)
    pairs; grad_ins is changed in place. Used by eager backward and by the executor."""
    kept, shared = [], []
    for i, buffer in enumerate(grad_ins):
        if buffer is None:
            continue
        if any(np.may_share_memory(buffer, other) for other in kept):
            grad_ins[i] = np.zeros_like(buffer)
            shared.append((buffer, grad_ins[i]))
        else:
            kept.append(buffer)
    return shared


def apply(op: O.Op, *inputs: Tensor) -> Tensor:
    """Run `op` eagerly on `inputs` and record it for backward and capture."""
    for t in inputs:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op.name}: expected Tensor inputs, got {type(t).__name__}")
    try:
        specs = [O.Spec(t.shape, t.dtype) for t in inputs]
        out_specs = op.infer(*specs)
        if op.is_view:
            outputs = [op.view_of(inputs[0].data, out_specs[0])]
        else:
            outputs = [np.empty(s.shape, dtype=s.dtype) for s in out_specs]
            op.forward(outputs, [t.data for t in inputs])
    except (ValueError, TypeError) as error:
        # every error says which Tensor-level op it came from, not only the kernel below it
        # (a failed broadcast in `x + y` said "binary_forward: ...", never "add")
        if str(error).startswith(op.name):
            raise
        raise type(error)(f"{op.name}: {error}") from error
    # Integer results (indices) never require grad, whatever their inputs do.
    requires_grad = (_state.grad_enabled and out_specs[0].dtype == O.F32
                     and any(t.requires_grad for t in inputs))
    result = Tensor(outputs[0], requires_grad=requires_grad)
    if requires_grad or _state.capturing:
        result._node = Node(op, inputs, outputs)
    return result

