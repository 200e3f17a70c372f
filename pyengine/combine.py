"""PyTorch's joining, splitting and selection functions over Tensors:
``cat``, ``stack``, ``split``, ``chunk``, ``where``, ``tril``, ``triu``, and
what the Tensor methods of the same names (and ``masked_fill``, integer-array
indexing) call. The ops are in pyengine.ops_join and pyengine.ops_select.
"""

from __future__ import annotations

import numpy as np

from pyengine import ops_join as OJ
from pyengine import ops_layout as OL
from pyengine import ops_select as OS
from pyengine.tensor import Tensor, apply

__all__ = ["cat", "concat", "stack", "split", "chunk", "where", "tril", "triu", "masked_fill"]


def _tensors(fn: str, tensors) -> list:
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{fn}: expected a list or tuple of Tensors, got {type(tensors).__name__}")
    for index, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: expected Tensors, got {type(t).__name__} at entry {index}")
    return list(tensors)


def cat(tensors, dim=0) -> Tensor:
    """The tensors joined along `dim`, as torch.cat (1-D empty tensors are skipped)."""
    return apply(OJ.Cat(dim), *_tensors("cat", tensors))


concat = cat


def stack(tensors, dim=0) -> Tensor:
    """Equal-shaped tensors joined along a new dim `dim`, as torch.stack."""
    return apply(OJ.Stack(dim), *_tensors("stack", tensors))


def _pieces(fn: str, x: Tensor, dim, sizes_of) -> tuple:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: expected a Tensor, got {type(x).__name__}")
    axis = OJ.piece_dim(fn, x.shape, dim)
    pieces, start = [], 0
    for length in sizes_of(x.shape[axis]):
        pieces.append(apply(OJ.narrow_op(x.shape, axis, start, length), x))
        start += length
    return tuple(pieces)


def split(x: Tensor, split_size_or_sections, dim=0) -> tuple:
    """x cut along `dim` into pieces of split_size (the last shorter) or of the
    listed sizes, as torch.split. A piece that is a contiguous block of x
    (every dim before `dim` of size 1) is a view; the others are copies."""
    OJ.check_split_arg("split", split_size_or_sections)  # the arguments' types first, as torch parses them
    return _pieces("split", x, dim, lambda size: OJ.split_sizes("split", size, split_size_or_sections))


def chunk(x: Tensor, chunks, dim=0) -> tuple:
    """x cut into `chunks` pieces of ceil(size / chunks) (maybe fewer), as torch.chunk."""
    OJ.check_chunks(chunks)  # the arguments' types first, as torch parses them
    return _pieces("chunk", x, dim, lambda size: OJ.chunk_sizes(size, chunks))


def _operand(fn: str, value, dtype) -> Tensor:
    """A Tensor operand: a Tensor as it is, a Python number as a 0-d tensor
    of the other operand's dtype, an array wrapped."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: bool operands are not supported")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return Tensor(np.array(value, dtype=dtype if dtype is not None else np.float32))
    if isinstance(value, np.ndarray):
        return Tensor(value)
    raise TypeError(f"{fn}: expected a Tensor, an array or a number, got {type(value).__name__}")


def _mask(fn: str, mask) -> Tensor:
    mask = mask if isinstance(mask, Tensor) else Tensor(np.asarray(mask)) if isinstance(mask, (list, np.ndarray)) \
        else None
    if mask is None:
        raise TypeError(f"{fn}: the condition must be a bool Tensor or array")
    return mask


def where(condition, x, y) -> Tensor:
    """x where condition else y, broadcast together as torch.where; x and y
    may be Python numbers (taking the other's dtype, float32 if both are)."""
    dtype = next((v.dtype for v in (x, y) if isinstance(v, (Tensor, np.ndarray))), None)
    cond = _mask("where", condition)
    return apply(OS.Where(), cond, _operand("where", x, dtype), _operand("where", y, dtype))


def masked_fill(x: Tensor, mask, value) -> Tensor:
    """x with `value` where the bool mask (broadcast to x's shape) is true."""
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"masked_fill: only a 0-d tensor value is supported, got shape {value.shape}")
        value = value.item()  # a constant, also under capture
    return apply(OS.MaskedFill(value), x, _mask("masked_fill", mask))


def tril(x: Tensor, diagonal=0) -> Tensor:
    """The lower triangle of the last two dims (on and below the `diagonal`-th diagonal), zeros elsewhere."""
    return apply(OS.Triangle("tril", diagonal), x)


def triu(x: Tensor, diagonal=0) -> Tensor:
    """The upper triangle of the last two dims (on and above the `diagonal`-th diagonal), zeros elsewhere."""
    return apply(OS.Triangle("triu", diagonal), x)


def getitem(x: Tensor, index) -> Tensor:
    """x[index]: basic indexing, or one int64 index array (with its scatter-add backward)."""
    advanced = OS.split_advanced(index)
    if advanced is None:
        return apply(OL.Getitem(index), x)
    rest, position, array = advanced
    return apply(OS.IndexGetitem(rest, position), x, array if isinstance(array, Tensor) else Tensor(array))
