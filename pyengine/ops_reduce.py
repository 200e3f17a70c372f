"""Reduction ops beyond sum and mean: max, min, argmax, argmin, with PyTorch's
semantics (var and std are composed from differentiable ops in Tensor).

- ``ArgReduce``: argmax / argmin indices (int64, first occurrence on ties,
  as PyTorch and numpy); no gradient.
- ``ExtremumDim``: max / min over one dim. Its second input is the argmax
  (argmin) with the dim kept, so the gradient flows to exactly the element
  whose index is returned, as in PyTorch.
- ``ExtremumAll``: max / min over every element, a 0-d result. Its gradient
  is spread evenly over the elements equal to the result (ties), as
  PyTorch's max() and min() without dim do.

Forward and backward write only into the buffers they are given (numpy's
``out=``, ``where=`` and ``ufunc.at``); the scratch they need (flat indices,
a tie mask) is an extra output, so the graph executor plans it.
"""

from __future__ import annotations

import warnings
from collections import namedtuple

import numpy as np

from pyengine import ops as O
from pyengine.ops_layout import normalize_dim, normalize_dims

__all__ = ["ArgReduce", "ExtremumDim", "ExtremumAll", "RETURN_TYPES", "var_setup"]

I64 = np.dtype(np.int64)

# What x.max(dim) / x.min(dim) return, as torch.return_types.max / min.
RETURN_TYPES = {"max": namedtuple("max", ["values", "indices"]),
                "min": namedtuple("min", ["values", "indices"])}

_REDUCE = {"max": np.max, "min": np.min}
_ARG = {"max": np.argmax, "min": np.argmin}


def _axis(fn: str, shape: tuple, dim):
    """The numpy axis of `dim` (None: every element, also any dim of a 0-d
    tensor); errors name `fn`, for an empty reduction too."""
    if dim is None:
        if 0 in shape:
            raise ValueError(f"{fn}: cannot reduce an empty tensor of shape {shape} over all elements")
        return None
    axis = normalize_dim(dim, len(shape), fn)
    if not shape:
        return None
    if shape[axis] == 0:
        raise ValueError(f"{fn}: cannot reduce dimension {dim} of size 0 (shape {shape})")
    return axis


class ArgReduce(O.Op):
    """argmax / argmin over `dim` (None: over the flattened tensor), int64.
    Over a dim other than the last, the input is first copied with that dim
    moved last into a scratch output (numpy would otherwise allocate that
    copy itself)."""

    def __init__(self, kind: str, dim=None, keepdim=False):
        if kind not in _ARG:
            raise ValueError(f"arg reduction: kind must be 'max' or 'min', got {kind!r}")
        self.kind, self.dim, self.keepdim = kind, dim, bool(keepdim)
        self.name = f"arg{kind}"

    def infer(self, x):
        shape = tuple(x.shape)
        self._axis = _axis(self.name, shape, self.dim)
        if self._axis is None:
            out = (1,) * len(shape) if self.keepdim and self.dim is None else ()
        elif self.keepdim:
            out = shape[:self._axis] + (1,) + shape[self._axis + 1:]
        else:
            out = shape[:self._axis] + shape[self._axis + 1:]
        specs = [O.Spec(out, I64)]
        self._reduced = shape[:self._axis] + shape[self._axis + 1:] if self._axis is not None else ()
        if self._axis is not None and self._axis != len(shape) - 1:
            specs.append(O.Spec(self._reduced + (shape[self._axis],), x.dtype))
        return specs

    def forward(self, outs, ins):
        if self._axis is None:
            _ARG[self.kind](ins[0].reshape(-1), out=outs[0].reshape(()))
            return
        x = ins[0]
        if len(outs) > 1:  # the reduced dim moved last, contiguous
            np.copyto(outs[1], np.moveaxis(x, self._axis, -1))
            x = outs[1]
        _ARG[self.kind](x, axis=-1, out=outs[0].reshape(self._reduced))

    def saved(self, ins, outs):
        return []

    def label(self):
        return f"{self.name}(dim={self.dim}{', keepdim' if self.keepdim else ''})"


class ExtremumDim(O.Op):
    """max / min over one dim of x (ndim >= 1); inputs (x, indices), the
    indices being ArgReduce's with the dim kept. Outputs: the values, and
    scratch for the backward (the flat index of each selected element)."""

    def __init__(self, kind: str, dim, keepdim=False):
        if kind not in _REDUCE:
            raise ValueError(f"extremum: kind must be 'max' or 'min', got {kind!r}")
        self.kind, self.dim, self.keepdim = kind, dim, bool(keepdim)
        self.name = kind

    def infer(self, x, indices):
        shape = tuple(x.shape)
        if not shape:
            raise ValueError(f"{self.name}: ExtremumDim needs at least one dim (reshape a 0-d tensor)")
        axis = self._axis = _axis(self.name, shape, self.dim)
        kept = shape[:axis] + (1,) + shape[axis + 1:]
        if tuple(indices.shape) != kept or indices.dtype != I64:
            raise ValueError(f"{self.name}: indices must be int64 of shape {kept}, got {indices.dtype} "
                             f"{tuple(indices.shape)}")
        # flat index of element (a, i, b) = base[a, 0, b] + i * inner
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        self._inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        starts = np.arange(outer, dtype=np.int64)[:, None] * (shape[axis] * self._inner)
        self._base = (starts + np.arange(self._inner, dtype=np.int64)[None, :]).reshape(kept)
        values = kept if self.keepdim else shape[:axis] + shape[axis + 1:]
        return [O.Spec(values, x.dtype), O.Spec(kept, I64)]

    def forward(self, outs, ins):
        _REDUCE[self.kind](ins[0], axis=self._axis, keepdims=self.keepdim, out=outs[0])

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is None:
            return
        flat = outs[1]
        np.multiply(ins[1], self._inner, out=flat)
        np.add(flat, self._base, out=flat)
        np.add.at(grad.reshape(-1), flat.reshape(-1), grad_out.reshape(-1))

    def saved(self, ins, outs):
        return [ins[1], outs[1]]  # the indices, and the scratch the backward writes

    def label(self):
        return f"{self.name}(dim={self.dim}{', keepdim' if self.keepdim else ''})"


class ExtremumAll(O.Op):
    """max / min of every element (0-d). Outputs: the value, and a tie mask
    (scratch for the backward, which spreads the gradient evenly over the
    elements equal to the value, or over the NaNs when the value is NaN)."""

    def __init__(self, kind: str):
        if kind not in _REDUCE:
            raise ValueError(f"extremum: kind must be 'max' or 'min', got {kind!r}")
        self.kind = self.name = kind

    def infer(self, x):
        _axis(self.name, tuple(x.shape), None)
        return [O.Spec((), x.dtype), O.Spec(tuple(x.shape), np.dtype(np.bool_))]

    def forward(self, outs, ins):
        _REDUCE[self.kind](ins[0], out=outs[0])

    def backward(self, grad_ins, grad_out, ins, outs):
        grad = grad_ins[0]
        if grad is None:
            return
        value, mask = outs
        if np.isnan(value):
            np.isnan(ins[0], out=mask)
        else:
            np.equal(ins[0], value, out=mask)
        share = grad_out / grad.dtype.type(np.count_nonzero(mask))  # float32: no casting buffers
        np.add(grad, share, out=grad, where=mask)

    def label(self):
        return f"{self.name}()"


def var_setup(fn: str, shape: tuple, dim, unbiased, correction) -> tuple:
    """(axes, divisor) of a variance over `dim` of a tensor of `shape`, as
    torch.var: divisor max(0, N - correction), correction 1 by default, 0
    for unbiased=False; a divisor of 0 warns (the result is inf or NaN)."""
    if unbiased is not None and correction is not None:
        raise TypeError(f"{fn}: give unbiased or correction, not both")
    if unbiased is not None and not isinstance(unbiased, (bool, np.bool_)):
        raise TypeError(f"{fn}: unbiased must be a bool, got {type(unbiased).__name__}")
    if correction is None:
        correction = 0 if unbiased is False else 1
    elif isinstance(correction, bool) or not isinstance(correction, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: correction must be a number, got {type(correction).__name__}")
    axes = normalize_dims(dim, len(shape), fn)
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    # no elements: NaN whatever the correction (a negative one must not turn 0 / 0 into 0 / 1), as torch
    divisor = max(0.0, count - float(correction)) if count else 0.0
    if divisor == 0:
        warnings.warn(f"{fn}(): degrees of freedom is <= 0 (N = {count}, correction = {correction})",
                      RuntimeWarning, stacklevel=3)
    return axes, divisor
