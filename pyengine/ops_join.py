"""Joining and splitting ops: cat, stack, and the pieces of split / chunk,
with PyTorch's semantics.

- ``Cat`` and ``Stack`` take any number of inputs and copy them into their
  output with numpy's ``out=`` (one contiguous copy, no temporary); the
  backward adds each input's slice of the incoming gradient into its
  gradient (a numpy view, no copy).
- A piece of a split is a ``NarrowView`` where the layout allows, that is
  where every dim before the split dim has size 1, so the piece is a
  contiguous block of the input: no copy, its gradient is the matching slice
  of the input's gradient (eagerly a slice add, and under capture the
  executor binds it as that slice). Elsewhere it is a ``Narrow``, a
  contiguous copy whose backward adds into the slice.

Every tensor here is C-contiguous, which is why a strided piece is a copy.
"""

from __future__ import annotations

import numpy as np

from pyengine import ops as O
from pyengine import ops_layout as OL
from pyengine.ops_layout import _check_ints, _is_int, normalize_dim

__all__ = ["Cat", "Stack", "Narrow", "NarrowView", "narrow_op", "split_sizes", "chunk_sizes"]


def _check_dtypes(fn: str, specs) -> None:
    dtypes = {s.dtype for s in specs}
    if len(dtypes) > 1:
        raise TypeError(f"{fn}: expected tensors of one dtype, got {sorted(str(d) for d in dtypes)} "
                        f"(no implicit casts)")


def _is_legacy_empty(spec: O.Spec) -> bool:
    """A 1-D tensor of size 0, which torch.cat skips whatever the other shapes."""
    return tuple(spec.shape) == (0,)


class Cat(O.Op):
    """torch.cat(tensors, dim): the inputs joined along an existing dim."""

    name = "cat"

    def __init__(self, dim=0):
        self.dim = dim

    def infer(self, *xs):
        if not xs:
            raise ValueError("cat: expected a non-empty sequence of tensors")
        _check_dtypes("cat", xs)
        self._used = [not _is_legacy_empty(s) for s in xs]
        if not any(self._used):  # only 1-D empty tensors: an empty result
            self._used = [True] * len(xs)
        shaped = [s for s, used in zip(xs, self._used) if used]
        first = tuple(shaped[0].shape)
        if not first:
            raise ValueError("cat: zero-dimensional tensor cannot be concatenated")
        axis = self._axis = normalize_dim(self.dim, len(first), "cat")
        for index, spec in enumerate(xs):
            shape = tuple(spec.shape)
            if self._used[index] and (len(shape) != len(first)
                                      or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]):
                raise ValueError(f"cat: sizes of tensors must match except in dimension {self.dim}; "
                                 f"tensor {index} has shape {shape}, expected {first} but for that dim")
        length = sum(s.shape[axis] for s in shaped)
        return [O.Spec(first[:axis] + (length,) + first[axis + 1:], xs[0].dtype)]

    def forward(self, outs, ins):
        used = [x for x, keep in zip(ins, self._used) if keep]
        np.concatenate(used, axis=self._axis, out=outs[0])

    def backward(self, grad_ins, grad_out, ins, outs):
        start = 0
        for grad, x, used in zip(grad_ins, ins, self._used):
            if not used:
                continue
            length = x.shape[self._axis]
            if grad is not None:
                piece = grad_out[(slice(None),) * self._axis + (slice(start, start + length),)]
                np.add(grad, piece, out=grad)
            start += length

    def saved(self, ins, outs):
        return []  # the backward reads only the incoming gradient (and the shapes it kept)

    def label(self):
        return f"cat(dim={self.dim})"


class Stack(O.Op):
    """torch.stack(tensors, dim): equal-shaped inputs joined along a new dim."""

    name = "stack"

    def __init__(self, dim=0):
        self.dim = dim

    def infer(self, *xs):
        _check_ints("stack", self.dim)  # torch parses the arguments before it compares the shapes
        if not xs:
            raise ValueError("stack: expected a non-empty sequence of tensors")
        _check_dtypes("stack", xs)
        first = tuple(xs[0].shape)
        for index, spec in enumerate(xs):
            if tuple(spec.shape) != first:
                raise ValueError(f"stack: expects each tensor to be equal size, but got {first} at entry 0 "
                                 f"and {tuple(spec.shape)} at entry {index}")
        axis = self._axis = normalize_dim(self.dim, len(first), "stack", extra=1)
        return [O.Spec(first[:axis] + (len(xs),) + first[axis:], xs[0].dtype)]

    def forward(self, outs, ins):
        np.stack(ins, axis=self._axis, out=outs[0])

    def backward(self, grad_ins, grad_out, ins, outs):
        for index, grad in enumerate(grad_ins):
            if grad is not None:
                np.add(grad, grad_out[(slice(None),) * self._axis + (index,)], out=grad)

    def saved(self, ins, outs):
        return []

    def label(self):
        return f"stack(dim={self.dim})"


class Narrow(OL.Getitem):
    """x.narrow(dim, start, length) as a contiguous copy (a strided piece):
    basic indexing's forward (a copy) and backward (an add into the slice)."""

    name = "narrow"

    def __init__(self, dim: int, start: int, length: int):  # noqa: D107 - no index check: built here
        self.dim, self.start, self.length = int(dim), int(start), int(length)
        self.index = (slice(None),) * self.dim + (slice(self.start, self.start + self.length),)

    def infer(self, x):
        shape = tuple(x.shape)
        if not 0 <= self.dim < len(shape) or self.start < 0 or self.length < 0 \
                or self.start + self.length > shape[self.dim]:
            raise ValueError(f"{self.name}: cannot take [{self.start}, {self.start + self.length}) of dim "
                             f"{self.dim} of a tensor of shape {shape}")
        return [O.Spec(shape[:self.dim] + (self.length,) + shape[self.dim + 1:], x.dtype)]

    def label(self):
        return f"{self.name}({self.dim}, {self.start}, {self.length})"


class NarrowView(Narrow):
    """A contiguous piece of x (every dim before `dim` has size 1): a view,
    sharing x's memory; under capture its gradient is a view of x's gradient."""

    name = "narrow_view"
    is_view = True

    def forward(self, outs, ins):
        pass  # outs[0] is a view of ins[0]

    def view_of(self, x: np.ndarray, spec: O.Spec) -> np.ndarray:
        view = x[self.index]
        assert view.flags.c_contiguous and view.shape == tuple(spec.shape)
        return view


def narrow_op(shape: tuple, dim: int, start: int, length: int) -> Narrow:
    """A view where the piece is contiguous in a tensor of `shape`, else a copy."""
    contiguous = int(np.prod(shape[:dim], dtype=np.int64)) <= 1
    return (NarrowView if contiguous else Narrow)(dim, start, length)


# The most pieces split/chunk hand back: each is a Tensor object, so a count such as 2^31 (torch's
# answer for chunk(2**31) of an empty dim) would run for hours and fill memory before returning.
MAX_PIECES = 1 << 20


def _check_pieces(fn: str, count: int, size: int) -> None:
    if count > MAX_PIECES:
        raise ValueError(f"{fn}: {count} pieces of a dim of size {size} is more than the {MAX_PIECES} "
                         f"pyengine hands back (each piece is a Tensor)")


def _check_int64(fn: str, value: int) -> None:
    """A size or count beyond int64 (which no dim can have) is refused, as torch refuses it, not taken as 'all'."""
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{fn}: {value} is out of the int64 range")


def check_split_arg(fn: str, split_size_or_sections) -> None:
    """split's size argument: an int or a list of ints (TypeError otherwise)."""
    if not _is_int(split_size_or_sections) and (
            not isinstance(split_size_or_sections, (list, tuple)) or
            not all(_is_int(s) for s in split_size_or_sections)):
        raise TypeError(f"{fn}: split_size_or_sections must be an int or a list of ints, got "
                        f"{split_size_or_sections!r}")


def check_chunks(chunks) -> None:
    if not _is_int(chunks):
        raise TypeError(f"chunk: chunks must be an int, got {type(chunks).__name__}")


def split_sizes(fn: str, size: int, split_size_or_sections) -> list:
    """The lengths of the pieces of a dim of `size`, as torch.split: an int
    gives pieces of that length (the last shorter), a list the lengths."""
    if _is_int(split_size_or_sections):
        step = int(split_size_or_sections)
        _check_int64(fn, step)
        if step < 0 or (step == 0 and size > 0):
            raise ValueError(f"{fn}: split_size must be positive for a dim of size {size}, got {step}")
        if size == 0:
            return [0]
        _check_pieces(fn, -(-size // step), size)
        return [min(step, size - start) for start in range(0, size, step)]
    check_split_arg(fn, split_size_or_sections)
    _check_pieces(fn, len(split_size_or_sections), size)
    sections = [int(s) for s in split_size_or_sections]
    for s in sections:
        _check_int64(fn, s)
    if any(s < 0 for s in sections) or sum(sections) != size:
        raise ValueError(f"{fn}: split_with_sizes expects split_sizes to sum exactly to {size} (the size of "
                         f"the dim), got {sections}")
    return sections


def chunk_sizes(size: int, chunks) -> list:
    """torch.chunk: pieces of ceil(size / chunks), so possibly fewer than `chunks`."""
    check_chunks(chunks)
    _check_int64("chunk", int(chunks))
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be greater than 0, got {chunks}")
    if size == 0:
        _check_pieces("chunk", int(chunks), size)
        return [0] * int(chunks)  # as torch: that many empty pieces
    return split_sizes("chunk", size, -(-size // int(chunks)))


def piece_dim(fn: str, shape: tuple, dim) -> int:
    _check_ints(fn, dim)  # a float dim is a TypeError before anything else, as torch parses arguments first
    if not shape:
        raise ValueError(f"{fn}: expects at least a 1-dimensional tensor")
    return normalize_dim(dim, len(shape), fn)
