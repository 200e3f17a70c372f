"""Layout ops: views (view, unsqueeze, squeeze, flatten) and copies
(permute, transpose, .T, .mT, basic indexing), with PyTorch's semantics
(and, beyond it, negative slice steps).

The views are :class:`pyengine.ops.Reshape` with another shape rule: no
kernel, the output shares the input's memory, and under capture their
gradients share their input's gradient buffer.

The copies produce contiguous results: the forward copies a numpy view of
the input (a transpose, or a basic-indexing view) into the output buffer it
is given, and the backward adds the incoming gradient into the same view of
the input's gradient. Neither allocates an array beyond those numpy views,
so both run unchanged on the executor's planned buffers (numpy's ufunc
iterator may still use its own bounded buffers, at most 8192 elements per
operand, for the strided adds of a backward).

Dimension arguments follow PyTorch: negative dims count from the end, a 0-d
tensor accepts dims -1 and 0, and a dim out of range raises IndexError.
"""

from __future__ import annotations

import numpy as np

from pyengine import ops as O

__all__ = ["normalize_dim", "normalize_dims", "View", "Unsqueeze", "Squeeze", "Flatten", "Permute",
           "Transpose", "ReverseDims", "MatrixTranspose", "Getitem"]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def normalize_dim(dim, ndim: int, fn: str, extra: int = 0) -> int:
    """`dim` as a non-negative index into `ndim + extra` dims (extra=1 for a
    dim to insert). TypeError for a non-int, IndexError when out of range."""
    if not _is_int(dim):
        raise TypeError(f"{fn}: dim must be an int, got {type(dim).__name__}")
    n = max(ndim + extra, 1)  # a 0-d tensor accepts -1 and 0, as in PyTorch
    if not -n <= dim < n:
        raise IndexError(f"{fn}: dimension out of range (expected to be in range of [{-n}, {n - 1}], "
                         f"but got {dim})")
    return int(dim) % n


def _check_ints(fn: str, *dims) -> None:
    """Every dim an int, checked before any is range-checked (torch's order: a float is a TypeError)."""
    for dim in dims:
        if not _is_int(dim):
            raise TypeError(f"{fn}: dim must be an int, got {type(dim).__name__}")


def normalize_dims(dims, ndim: int, fn: str) -> tuple:
    """An int or a sequence of ints as sorted unique non-negative dims;
    None or () means every dim. ValueError for a repeated dim."""
    if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
        return tuple(range(ndim))
    raw = (dims,) if not isinstance(dims, (tuple, list)) else tuple(dims)
    out = [normalize_dim(d, ndim, fn) for d in raw]
    if len(set(out)) != len(out):
        raise ValueError(f"{fn}: dim {dims} names a dimension more than once")
    return tuple(sorted(d for d in out if d < ndim))  # a 0-d tensor's dim 0 reduces nothing


# ---------------------------------------------------------------- views


class _ShapeView(O.Reshape):
    """A Reshape whose target shape is a rule on the input's shape."""

    def __init__(self):  # noqa: D107 - no fixed shape: `_shape` computes it per input
        self.shape = None

    def _shape(self, shape: tuple) -> tuple:
        raise NotImplementedError

    def infer(self, x):
        return [O.Spec(self._shape(tuple(x.shape)), x.dtype)]


class View(O.Reshape):
    """x.view(*shape): reshape's rule (one -1 allowed), named view in errors."""

    name = "view"

    def infer(self, x):
        try:
            return super().infer(x)
        except ValueError as error:
            raise ValueError(str(error).replace("reshape:", "view:", 1)) from None

    def label(self):
        return f"view{self.shape}"


class Unsqueeze(_ShapeView):
    name = "unsqueeze"

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def _shape(self, shape):
        dim = normalize_dim(self.dim, len(shape), "unsqueeze", extra=1)
        return shape[:dim] + (1,) + shape[dim:]

    def label(self):
        return f"unsqueeze({self.dim})"


class Squeeze(_ShapeView):
    """Drop size-1 dims: all of them (dim=None) or those named that have size 1
    (a named dim of another size stays, as in PyTorch)."""

    name = "squeeze"

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def _shape(self, shape):
        if self.dim is None:
            return tuple(d for d in shape if d != 1)
        dims = normalize_dims(self.dim, len(shape), "squeeze")
        return tuple(d for i, d in enumerate(shape) if not (i in dims and d == 1))

    def label(self):
        return f"squeeze({self.dim})"


class Flatten(_ShapeView):
    """Merge dims start_dim..end_dim (inclusive) into one; a 0-d tensor becomes (1,)."""

    name = "flatten"

    def __init__(self, start_dim=0, end_dim=-1):
        super().__init__()
        _check_ints("flatten", start_dim, end_dim)
        self.start_dim, self.end_dim = start_dim, end_dim

    def _shape(self, shape):
        start = normalize_dim(self.start_dim, len(shape), "flatten")
        end = normalize_dim(self.end_dim, len(shape), "flatten")
        if start > end:
            raise ValueError(f"flatten: start_dim cannot come after end_dim (got {self.start_dim} "
                             f"and {self.end_dim} for {len(shape)} dims)")
        if not shape:
            return (1,)
        merged = int(np.prod(shape[start:end + 1], dtype=np.int64))
        return shape[:start] + (merged,) + shape[end + 1:]

    def label(self):
        return f"flatten({self.start_dim}, {self.end_dim})"


# ---------------------------------------------------------------- copies


class Permute(O.Op):
    """x.permute(*dims): a contiguous copy with the dims reordered."""

    name = "permute"

    def __init__(self, dims=()):
        self.dims = tuple(dims)

    def _perm(self, ndim: int) -> tuple:
        for d in self.dims:
            if not _is_int(d):
                raise TypeError(f"permute: dims must be ints, got {type(d).__name__} in {self.dims}")
        if len(self.dims) != ndim:
            raise ValueError(f"permute: dims {self.dims} must name each of the {ndim} dims once")
        perm = tuple(normalize_dim(d, ndim, "permute") for d in self.dims) if ndim else ()
        if len(set(perm)) != ndim:
            raise ValueError(f"permute: dims {self.dims} name a dimension more than once")
        return perm

    def infer(self, x):
        self.perm = self._perm(len(x.shape))
        return [O.Spec(tuple(x.shape[d] for d in self.perm), x.dtype)]

    def forward(self, outs, ins):
        np.copyto(outs[0], ins[0].transpose(self.perm))

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is not None:
            view = grad.transpose(self.perm)  # the inverse permutation, as a view
            np.add(view, grad_out, out=view)

    def saved(self, ins, outs):
        return []  # the backward reads only the incoming gradient

    def label(self):
        return f"{self.name}{getattr(self, 'perm', self.dims)}"


class Transpose(Permute):
    """x.transpose(dim0, dim1): swap two dims."""

    name = "transpose"

    def __init__(self, dim0, dim1):
        super().__init__()
        _check_ints("transpose", dim0, dim1)
        self.dim0, self.dim1 = dim0, dim1

    def _perm(self, ndim):
        a, b = (normalize_dim(d, ndim, "transpose") for d in (self.dim0, self.dim1))
        perm = list(range(ndim))
        if ndim:
            perm[a], perm[b] = perm[b], perm[a]
        return tuple(perm)


class ReverseDims(Permute):
    """x.T: every dim reversed (the transpose of a matrix; identity below 2 dims)."""

    name = "T"

    def _perm(self, ndim):
        return tuple(reversed(range(ndim)))


class MatrixTranspose(Permute):
    """x.mT: the last two dims swapped (a batch of matrices transposed)."""

    name = "mT"

    def _perm(self, ndim):
        if ndim < 2:
            raise ValueError(f"mT: only supported on matrices or batches of matrices, got a {ndim}-D tensor")
        return tuple(range(ndim - 2)) + (ndim - 1, ndim - 2)


def _check_index(index) -> tuple:
    """A basic index (ints, slices, None, Ellipsis) as a tuple that always
    selects a numpy view (an Ellipsis appended where none is given, so that
    all-int indices give a 0-d view rather than a scalar copy)."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if item is None or item is Ellipsis or _is_int(item):
            continue
        if isinstance(item, slice):
            for part in (item.start, item.stop, item.step):
                if part is not None and not _is_int(part):
                    raise TypeError(f"Tensor.__getitem__: slice bounds must be ints or None, got {item}")
            if item.step == 0:
                raise ValueError("Tensor.__getitem__: slice step cannot be zero")
            continue
        kind = type(item).__name__  # IndexError, as torch and numpy say for an index of the wrong type
        raise IndexError(f"Tensor.__getitem__: only ints, slices, None, ... and one int64 index array are "
                        f"supported as indices; indexing with a {kind} is not supported")
    ellipses = sum(item is Ellipsis for item in items)
    if ellipses > 1:
        raise IndexError("Tensor.__getitem__: an index can only have a single ellipsis ('...')")
    return items if ellipses else items + (Ellipsis,)


class Getitem(O.Op):
    """x[index] with basic indexing: a contiguous copy of the selected region
    (negative steps too, which PyTorch has not; numpy's semantics). An index
    with an int64 array is pyengine.ops_select.IndexGetitem."""

    name = "getitem"

    def __init__(self, index):
        self.index = _check_index(index)

    def infer(self, x):
        probe = np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape)  # no memory: checks the index
        try:
            shape = probe[self.index].shape
        except (IndexError, OverflowError) as error:  # x[2**63]: numpy cannot even hold the int
            raise IndexError(f"Tensor.__getitem__: {error} (tensor of shape {tuple(x.shape)})") from None
        return [O.Spec(shape, x.dtype)]

    def forward(self, outs, ins):
        np.copyto(outs[0], ins[0][self.index])

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is not None:
            view = grad[self.index]
            np.add(view, grad_out, out=view)

    def saved(self, ins, outs):
        return []

    def label(self):
        return f"getitem[{_index_text(self.index)}]"


def _index_text(index: tuple) -> str:
    def one(item):
        if item is Ellipsis:
            return "..."
        if isinstance(item, slice):
            text = f"{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}"
            return text + (f":{item.step}" if item.step is not None else "")
        return str(item)
    shown = index[:-1] if index and index[-1] is Ellipsis else index
    return ", ".join(one(i) for i in shown)
