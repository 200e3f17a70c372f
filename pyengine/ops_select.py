"""Selection ops: masked_fill, where, tril / triu and integer-array indexing,
with PyTorch's semantics.

- ``MaskedFill`` (x, mask): x with `value` where the boolean mask (which
  broadcasts to x's shape) is true; the gradient flows where it is false.
- ``Where`` (cond, x, y): x where cond else y, the three broadcast together
  as in PyTorch; each gradient is the incoming one where its side was
  chosen, summed over the dims its operand was broadcast along.
- ``Triangle``: tril / triu of the last two dims, keeping the elements on
  and below (above) the `diagonal`-th diagonal.
- ``IndexGetitem`` (x, index): x[..., index, ...] with one int64 index
  array (negative values count from the end), the result a copy
  (``np.take`` into the output); the backward scatter-adds (``np.add.at``:
  repeated indices add up).

The scratch a backward needs (the complement of a mask, the incoming
gradient masked before it is summed) is an extra output, so the graph
executor plans it; forward and backward write only into given buffers.
"""

from __future__ import annotations

import numpy as np

from pyengine import ops as O
from pyengine.ops_layout import _check_index, _is_int

__all__ = ["MaskedFill", "Where", "Triangle", "IndexGetitem", "split_advanced"]

BOOL = np.dtype(np.bool_)
I64 = np.dtype(np.int64)


def _broadcast(fn: str, *shapes) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError(f"{fn}: shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast "
                         f"together") from None


def _reduced_axes(shape: tuple, full: tuple) -> tuple:
    """The axes of `full` that a broadcast operand of `shape` was expanded along."""
    lead = len(full) - len(shape)
    return tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and full[lead + i] != 1)


def _reduced_shape(shape: tuple, full: tuple) -> tuple:
    axes = set(_reduced_axes(shape, full))
    return tuple(d for i, d in enumerate(full) if i not in axes)


def _add_where(grad, grad_out, mask, full, reduced) -> None:
    """grad += grad_out where mask, summed to grad's shape through the
    scratch `full` (grad_out's shape) and `reduced` when grad is broadcast."""
    if grad.shape == grad_out.shape:
        np.add(grad, grad_out, out=grad, where=mask)
        return
    full.fill(0)
    np.copyto(full, grad_out, where=mask)
    np.sum(full, axis=_reduced_axes(grad.shape, full.shape), out=reduced)
    np.add(grad, reduced.reshape(grad.shape), out=grad)


class MaskedFill(O.Op):
    """x.masked_fill(mask, value): outputs (result, complement of the mask)."""

    name = "masked_fill"

    def __init__(self, value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"masked_fill: value must be a Python number or a 0-d tensor, got {type(value).__name__}")
        self.value = value

    def infer(self, x, mask):
        if mask.dtype != BOOL:
            raise TypeError(f"masked_fill: mask must be a bool tensor, got {mask.dtype} with shape {mask.shape}")
        shape = tuple(x.shape)
        if _broadcast("masked_fill", mask.shape, shape) != shape:
            raise ValueError(f"masked_fill: mask of shape {tuple(mask.shape)} does not broadcast to the "
                             f"tensor's shape {shape}")
        if x.dtype.kind in "iu" and not float(self.value).is_integer():
            raise TypeError(f"masked_fill: cannot fill an {x.dtype} tensor with {self.value}")
        return [O.Spec(shape, x.dtype), O.Spec(shape, BOOL)]

    def forward(self, outs, ins):
        x, mask = ins
        np.copyto(outs[0], x)
        np.copyto(outs[0], outs[0].dtype.type(self.value), where=mask)

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is not None:
            keep = outs[1]
            np.logical_not(np.broadcast_to(ins[1], keep.shape), out=keep)
            np.add(grad, grad_out, out=grad, where=keep)

    def saved(self, ins, outs):
        return [ins[1], outs[1]]

    def label(self):
        return f"masked_fill({self.value:g})"


class Where(O.Op):
    """where(cond, x, y). Outputs: the result, the complement of cond
    (broadcast), and, when x or y is broadcast, the scratch of its gradient."""

    name = "where"

    def infer(self, cond, x, y):
        if cond.dtype != BOOL:
            raise TypeError(f"where: condition must be a bool tensor, got {cond.dtype} with shape {cond.shape}")
        if x.dtype != y.dtype:
            raise TypeError(f"where: x and y must have one dtype, got {x.dtype} and {y.dtype} (no implicit casts)")
        full = _broadcast("where", cond.shape, x.shape, y.shape)
        specs = [O.Spec(full, x.dtype), O.Spec(full, BOOL)]
        self._scratch = {}
        for side, spec in (("x", x), ("y", y)):
            if tuple(spec.shape) != full:
                if "full" not in self._scratch:
                    self._scratch["full"] = len(specs)
                    specs.append(O.Spec(full, O.F32))
                self._scratch[side] = len(specs)
                specs.append(O.Spec(_reduced_shape(tuple(spec.shape), full), O.F32))
        return specs

    def forward(self, outs, ins):
        cond, x, y = ins
        np.copyto(outs[0], y)
        np.copyto(outs[0], x, where=cond)

    def backward(self, grad_ins, grad_out, ins, outs):
        cond = np.broadcast_to(ins[0], grad_out.shape)
        full = outs[self._scratch["full"]] if "full" in self._scratch else None
        grad_x, grad_y = grad_ins[1], grad_ins[2]
        if grad_x is not None:
            _add_where(grad_x, grad_out, cond, full, outs[self._scratch.get("x", 0)])
        if grad_y is not None:
            np.logical_not(cond, out=outs[1])
            _add_where(grad_y, grad_out, outs[1], full, outs[self._scratch.get("y", 0)])

    def saved(self, ins, outs):
        return [ins[0], *outs[1:]]


class Triangle(O.Op):
    """tril (kind "tril") or triu of the last two dims, with `diagonal`."""

    def __init__(self, kind: str, diagonal=0):
        if kind not in ("tril", "triu"):
            raise ValueError(f"triangle: kind must be 'tril' or 'triu', got {kind!r}")
        if not _is_int(diagonal):
            raise TypeError(f"{kind}: diagonal must be an int, got {type(diagonal).__name__}")
        if not -2**63 <= diagonal < 2**63:  # torch's diagonal is an int64 (numpy's tri overflowed past it)
            raise ValueError(f"{kind}: diagonal {diagonal} does not fit an int64")
        self.name, self.diagonal = kind, int(diagonal)

    def infer(self, x):
        shape = tuple(x.shape)
        if len(shape) < 2:
            raise ValueError(f"{self.name}: input tensor must have at least 2 dimensions, got shape {shape}")
        rows, cols = shape[-2:]
        lower = np.tri(rows, cols, k=self.diagonal if self.name == "tril" else self.diagonal - 1, dtype=bool)
        self._keep = lower if self.name == "tril" else ~lower  # a constant of the shape, as a kernel's table
        return [O.Spec(shape, x.dtype)]

    def forward(self, outs, ins):
        outs[0].fill(0)
        np.copyto(outs[0], ins[0], where=self._keep)

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is not None:
            np.add(grad, grad_out, out=grad, where=self._keep)

    def saved(self, ins, outs):
        return []

    def label(self):
        return f"{self.name}({self.diagonal})"


# ---------------------------------------------------------------- integer-array indexing


def _as_index_array(item):
    """An int64 index array from an int array, an int tensor or a list of
    ints; None for a basic index item. TypeError for bool masks, floats."""
    from pyengine.tensor import Tensor

    if isinstance(item, Tensor):
        item = item.data
    elif isinstance(item, list):
        item = np.asarray(item) if item else np.zeros(0, dtype=I64)
    if not isinstance(item, np.ndarray):
        return None
    if item.dtype.kind == "b":
        raise TypeError("Tensor.__getitem__: bool mask indexing is not supported; use masked_fill or where")
    if item.dtype.kind not in "iu":
        raise TypeError(f"Tensor.__getitem__: index arrays must be integers, got {item.dtype}")
    if item.dtype != I64:
        raise TypeError(f"Tensor.__getitem__: index arrays must be int64, got {item.dtype} (no implicit casts)")
    return item


def split_advanced(index):
    """(the other index items, the array's position, the int64 array or
    Tensor) when `index` holds one integer array, else None (a basic index)."""
    items = index if isinstance(index, tuple) else (index,)
    arrays = [(i, a) for i, a in ((i, _as_index_array(item)) for i, item in enumerate(items)) if a is not None]
    if not arrays:
        return None
    if len(arrays) > 1:
        raise TypeError("Tensor.__getitem__: only one integer index array is supported")
    position, array = arrays[0]
    if type(items[position]).__name__ == "Tensor":
        array = items[position]  # kept: under capture it may be a graph input
    rest = items[:position] + items[position + 1:]
    _check_index(rest)  # the other items: ints, slices, None, ...
    return rest, position, array


def _output_dims(items) -> int:
    """The dims a run of basic index items (no Ellipsis) produces."""
    return sum(not _is_int(item) for item in items)


class IndexGetitem(O.Op):
    """x[index] where `index` has one int64 array at `position` (the op's
    second input), as PyTorch: the other items are applied first as basic
    indexing (ints select, so they never move the array's dims), then the
    array picks along its dim of that view (its dims replace that one)."""

    name = "index"

    def __init__(self, rest: tuple, position: int):
        self.rest, self.position = tuple(rest), int(position)
        self._basic = _check_index(self.rest[:self.position] + (slice(None),) + self.rest[self.position:])

    def infer(self, x, index):
        if index.dtype != I64:
            raise TypeError(f"Tensor.__getitem__: index arrays must be int64, got {index.dtype}")
        probe = np.broadcast_to(np.zeros((), dtype=x.dtype), tuple(x.shape))  # no memory: checks the index
        try:
            view = probe[self._basic].shape
        except IndexError as error:
            raise IndexError(f"Tensor.__getitem__: {error} (tensor of shape {tuple(x.shape)})") from None
        before, after = self.rest[:self.position], self.rest[self.position:]
        if Ellipsis in before:
            self._axis = len(view) - 1 - _output_dims(i for i in after if i is not Ellipsis)
        else:
            self._axis = _output_dims(before)
        self._pick = (slice(None),) * self._axis
        return [O.Spec(view[:self._axis] + tuple(index.shape) + view[self._axis + 1:], x.dtype)]

    def _check_bounds(self, size: int, index) -> None:
        if index.size and (index.min() < -size or index.max() >= size):
            bad = index.min() if index.min() < -size else index.max()
            raise IndexError(f"Tensor.__getitem__: index {bad} is out of bounds for a dim of size {size}")

    def forward(self, outs, ins):
        x, index = ins
        view = x[self._basic]
        self._check_bounds(view.shape[self._axis], index)
        np.take(view, index, axis=self._axis, out=outs[0], mode="wrap")  # negatives count from the end

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is not None:
            np.add.at(grad[self._basic], self._pick + (ins[1],), grad_out)

    def saved(self, ins, outs):
        return [ins[1]]

    def label(self):
        return f"index(position={self.position})"
