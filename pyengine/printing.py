"""Tensor printing that matches PyTorch's ``str(tensor)``.

A port of ``torch/_tensor_str.py`` (default print options: precision 4,
threshold 1000, edgeitems 3, linewidth 80) for dense CPU tensors, so
``repr(pyengine.tensor(x))`` reads exactly like ``repr(torch.tensor(x))``
with ``pyengine.`` in place of ``torch.`` in the dtype suffix:

* one formatter per tensor decides, from the nonzero finite values shown,
  between integer mode (``1.``), fixed point (``1.2500``) and scientific
  notation (``1.2500e+03``, when max/min > 1000, max > 1e8 or min < 1e-4),
  and pads every element to one width;
* tensors of more than 1000 elements are summarized with ``...``, keeping
  3 items at each end of every dimension;
* rows wrap at 80 columns, and suffixes (``dtype=``, ``size=``,
  ``requires_grad=True``) go on a new line when they would pass it.

Where torch prints ``grad_fn=<...>`` for a non-leaf tensor, pyengine prints
``requires_grad=True`` (its ops have no torch backward-class names).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["tensor_repr", "PRECISION", "THRESHOLD", "EDGEITEMS", "LINEWIDTH"]

PRECISION = 4    # digits after the point
THRESHOLD = 1000  # more elements than this: summarize
EDGEITEMS = 3    # items kept at each end of a summarized dimension
LINEWIDTH = 80   # columns before a row or a suffix wraps

# dtypes torch leaves out of the suffix (its default float, int64 and bool)
_IMPLICIT_DTYPES = (np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.bool_))


class _Formatter:
    """Formats every element of one tensor to a common width (torch's _Formatter)."""

    def __init__(self, shown: np.ndarray):
        self.floating = shown.dtype.kind == "f"
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        if not self.floating:
            self.max_width = max([1] + [len(str(v)) for v in shown.tolist()])
            return
        finite = shown[np.isfinite(shown) & (shown != 0)].astype(np.float64)
        if finite.size == 0:  # only zeros, infs and nans: integer mode, width 1
            return
        magnitude = np.abs(finite)
        smallest, largest = float(magnitude.min()), float(magnitude.max())
        self.int_mode = bool(np.all(finite == np.ceil(finite)))
        self.sci_mode = largest / smallest > 1000.0 or largest > 1.0e8 or smallest < 1.0e-4
        self.max_width = max(len(self._text(v)) for v in finite.tolist())
        if self.int_mode and not self.sci_mode:
            self.max_width += 1  # the trailing "." of an integral float

    def _text(self, value: float) -> str:
        if self.sci_mode:
            return f"{value:.{PRECISION}e}"
        if self.int_mode:
            return f"{value:.0f}"
        return f"{value:.{PRECISION}f}"

    def width(self) -> int:
        return self.max_width

    def format(self, value) -> str:
        if not self.floating:
            text = f"{value}"
        elif self.sci_mode or not self.int_mode:
            text = self._text(value)
        else:
            text = f"{value:.0f}" + ("" if math.isinf(value) or math.isnan(value) else ".")
        return text.rjust(self.max_width)


def _summarized(array: np.ndarray) -> np.ndarray:
    """The elements a summarized print shows (torch's get_summarized_data)."""
    if array.ndim == 0:
        return array
    if array.ndim == 1:
        if array.shape[0] > 2 * EDGEITEMS:
            return np.concatenate((array[:EDGEITEMS], array[-EDGEITEMS:]))
        return array
    rows = range(array.shape[0])
    if array.shape[0] > 2 * EDGEITEMS:
        rows = list(range(EDGEITEMS)) + list(range(array.shape[0] - EDGEITEMS, array.shape[0]))
    return np.stack([_summarized(array[i]) for i in rows])


def _vector_str(vector: np.ndarray, indent: int, summarize: bool, formatter: _Formatter) -> str:
    element_length = formatter.width() + 2  # ", " between elements
    per_line = max(1, math.floor((LINEWIDTH - indent) / element_length))
    if summarize and vector.shape[0] > 2 * EDGEITEMS:
        items = ([formatter.format(v) for v in vector[:EDGEITEMS].tolist()] + [" ..."]
                 + [formatter.format(v) for v in vector[-EDGEITEMS:].tolist()])
    else:
        items = [formatter.format(v) for v in vector.tolist()]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _nested_str(array: np.ndarray, indent: int, summarize: bool, formatter: _Formatter) -> str:
    if array.ndim == 0:
        return formatter.format(array.item())
    if array.ndim == 1:
        return _vector_str(array, indent, summarize, formatter)
    count = array.shape[0]
    rows = list(range(count))
    if summarize and count > 2 * EDGEITEMS:
        rows = rows[:EDGEITEMS] + [None] + rows[-EDGEITEMS:]  # None: the "..." row
    slices = ["..." if i is None else _nested_str(array[i], indent + 1, summarize, formatter)
              for i in rows]
    separator = "," + "\n" * (array.ndim - 1) + " " * (indent + 1)
    return "[" + separator.join(slices) + "]"


def _body(array: np.ndarray, indent: int) -> str:
    """The bracketed values of a non-empty array, continuation lines indented by `indent`."""
    summarize = array.size > THRESHOLD
    shown = _summarized(array) if summarize else array
    return _nested_str(array, indent, summarize, _Formatter(shown.reshape(-1)))


def _add_suffixes(text: str, suffixes: list, indent: int) -> str:
    """Append ", suffix" for each suffix, wrapping one past the line width (torch's rule)."""
    parts = [text]
    last_line_length = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_length + len(suffix) + 2 > LINEWIDTH:
            parts.append(",\n" + " " * indent + suffix)
            last_line_length = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_length += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


def _dtype_suffix(dtype: np.dtype) -> str:
    return f"dtype=pyengine.{np.dtype(dtype).name}"


def tensor_repr(array: np.ndarray, requires_grad: bool = False, prefix: str = "tensor(") -> str:
    """`array` printed as PyTorch prints a tensor holding the same values."""
    array = np.asarray(array)
    indent = len(prefix)
    suffixes = []
    if array.size == 0:
        if array.ndim != 1:  # like numpy, the shape of an empty tensor unless it is (0,)
            suffixes.append(f"size={tuple(array.shape)}")
        if array.dtype != np.float32:  # no values to tell the dtype by
            suffixes.append(_dtype_suffix(array.dtype))
        text = "[]"
    else:
        if array.dtype not in _IMPLICIT_DTYPES:
            suffixes.append(_dtype_suffix(array.dtype))
        text = _body(array, indent)
    if requires_grad:
        suffixes.append("requires_grad=True")
    return _add_suffixes(prefix + text, suffixes, indent)
