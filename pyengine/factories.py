"""Tensor factories with PyTorch's names and semantics.

``pyengine.zeros(2, 3)``, ``pyengine.randn((4, 5), generator=g)``,
``pyengine.arange(0, 1, 0.25)`` ... behave as their ``torch.`` namesakes, so
a PyTorch script ports by changing its import:

* sizes come as varargs or one tuple/list (``size=`` works too);
* ``dtype=`` takes ``pyengine.float32`` / ``int64`` / ``int32``, the numpy
  dtypes or their names; the engine has no other dtype, so float64 and the
  rest raise TypeError;
* ``requires_grad=True`` is allowed for float32 only;
* the random factories draw from ``generator=`` (a numpy Generator) or else
  from pyengine's default generator, which ``pyengine.manual_seed`` reseeds.

Every factory returns a new, C-contiguous :class:`pyengine.Tensor`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from pyengine.random import default_generator
from pyengine.tensor import Tensor

__all__ = [
    "zeros", "ones", "full", "empty", "rand", "randn", "randint", "arange", "linspace", "eye",
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
    "float32", "int64", "int32",
]

float32 = np.dtype(np.float32)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
_SUPPORTED_DTYPES = (float32, int64, int32)


# ---- argument checks

def _dtype(fn: str, dtype, default: np.dtype) -> np.dtype:
    """`dtype` as a numpy dtype the engine supports; `default` when None."""
    if dtype is None:
        return default
    try:
        resolved = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: dtype must be pyengine.float32, int64 or int32 (or a numpy dtype "
                        f"or its name), got {dtype!r}") from None
    if resolved not in _SUPPORTED_DTYPES:
        raise TypeError(f"{fn}: dtype {resolved} is not supported: pyengine tensors are float32, "
                        "int64 or int32")
    return resolved


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _count(fn: str, name: str, value) -> int:
    """A non-negative int argument such as eye's n or linspace's steps."""
    if not _is_int(value):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{fn}: {name} must be non-negative, got {value}")
    return int(value)


def _number(fn: str, name: str, value):
    if not _is_number(value):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    return value


def _shape(fn: str, sizes: tuple, size=None) -> tuple:
    """The shape from varargs sizes, one tuple/list, or the size= keyword."""
    if size is not None:
        if sizes:
            raise TypeError(f"{fn}: give the size as arguments or as size=, not both")
        sizes = (size,)
    if not sizes:
        raise TypeError(f"{fn}: missing the size (use () for a 0-d tensor)")
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return _dims(fn, sizes)


def _dims(fn: str, sizes) -> tuple:
    if not isinstance(sizes, (tuple, list)):
        raise TypeError(f"{fn}: size must be a tuple or list of ints, got {type(sizes).__name__}")
    for dim in sizes:  # every type first, as torch: a float anywhere is a TypeError
        if not _is_int(dim):
            raise TypeError(f"{fn}: size must contain ints, "
                            f"got {type(dim).__name__} in {tuple(sizes)}")
    if any(dim < 0 for dim in sizes):
        raise ValueError(f"{fn}: size must be non-negative, got {tuple(sizes)}")
    # numpy cannot even describe a shape whose non-zero dims multiply past 2^63 (empty or not): say so here
    # rather than let its bare "Maximum allowed dimension exceeded" (or an OverflowError) through
    if int(np.prod([int(d) for d in sizes if d], dtype=object)) >= 2**63:
        raise ValueError(f"{fn}: size {tuple(int(d) for d in sizes)} is beyond what an array can describe "
                         f"(the non-zero dims multiply past 2^63)")
    return tuple(int(dim) for dim in sizes)


def _generator(fn: str, generator) -> np.random.Generator:
    if generator is None:
        return default_generator()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"{fn}: generator must be a numpy.random.Generator, "
                        f"got {type(generator).__name__}")
    return generator


def _float_only(fn: str, dtype: np.dtype) -> None:
    if dtype != float32:
        raise TypeError(f"{fn}: dtype {dtype} is not supported: {fn} draws float32 values")


def _source(fn: str, input) -> np.ndarray:
    """The array a *_like factory copies its shape (and default dtype) from."""
    if isinstance(input, Tensor):
        return input.data
    if isinstance(input, np.ndarray):
        return input
    raise TypeError(f"{fn}: input must be a Tensor or numpy array, got {type(input).__name__}")


def _tensor(fn: str, array: np.ndarray, requires_grad: bool) -> Tensor:
    _check_grad(fn, array.dtype, requires_grad)
    return Tensor(np.require(array, requirements="C"), requires_grad=requires_grad)  # keeps 0-d


def _check_grad(fn: str, dtype: np.dtype, requires_grad: bool) -> None:
    """Fail before allocating when an int tensor is asked to require grad."""
    if requires_grad and dtype != float32:
        raise TypeError(f"{fn}: only float32 tensors can require grad, got {dtype}")


# ---- constant fills

def zeros(*sizes, size=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros: ``zeros(2, 3)`` or ``zeros((2, 3))``."""
    shape, resolved = _shape("zeros", sizes, size), _dtype("zeros", dtype, float32)
    _check_grad("zeros", resolved, requires_grad)
    return _tensor("zeros", np.zeros(shape, dtype=resolved), requires_grad)


def ones(*sizes, size=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones: ``ones(2, 3)`` or ``ones((2, 3))``."""
    shape, resolved = _shape("ones", sizes, size), _dtype("ones", dtype, float32)
    _check_grad("ones", resolved, requires_grad)
    return _tensor("ones", np.ones(shape, dtype=resolved), requires_grad)


def empty(*sizes, size=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor whose values are not initialised: ``empty(2, 3)``."""
    shape, resolved = _shape("empty", sizes, size), _dtype("empty", dtype, float32)
    _check_grad("empty", resolved, requires_grad)
    return _tensor("empty", np.empty(shape, dtype=resolved), requires_grad)


def _fill_dtype(fn: str, fill_value, dtype) -> np.dtype:
    """torch's rule: an int fill gives int64, a float fill float32 (unless dtype= says)."""
    _number(fn, "fill_value", fill_value)
    resolved = _dtype(fn, dtype, int64 if _is_int(fill_value) else float32)
    if resolved.kind == "i" and not math.isfinite(fill_value):
        raise ValueError(f"{fn}: cannot fill an integer tensor with {fill_value}")
    return resolved


def full(size, fill_value, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of shape `size` (a tuple or list) filled with `fill_value`."""
    if isinstance(fill_value, (bool, np.bool_)):
        raise TypeError("full: a bool fill_value would make a bool tensor, which pyengine lacks: "
                        "pass dtype=")
    shape, resolved = _dims("full", size), _fill_dtype("full", fill_value, dtype)
    _check_grad("full", resolved, requires_grad)
    return _tensor("full", np.full(shape, fill_value, dtype=resolved), requires_grad)


def eye(n, m=None, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """An n x m (default n x n) matrix with ones on the diagonal."""
    rows = _count("eye", "n", n)
    cols = rows if m is None else _count("eye", "m", m)
    resolved = _dtype("eye", dtype, float32)
    _check_grad("eye", resolved, requires_grad)
    return _tensor("eye", np.eye(rows, cols, dtype=resolved), requires_grad)


# ---- random

def rand(*sizes, size=None, generator=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1): ``rand(2, 3)``."""
    shape, resolved = _shape("rand", sizes, size), _dtype("rand", dtype, float32)
    _float_only("rand", resolved)
    values = _generator("rand", generator).random(shape, dtype=np.float32)
    return _tensor("rand", values, requires_grad)


def randn(*sizes, size=None, generator=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples: ``randn(2, 3)``."""
    shape, resolved = _shape("randn", sizes, size), _dtype("randn", dtype, float32)
    _float_only("randn", resolved)
    values = _generator("randn", generator).standard_normal(shape, dtype=np.float32)
    return _tensor("randn", values, requires_grad)


def randint(low, high=None, size=None, *, generator=None, dtype=None,
            requires_grad: bool = False) -> Tensor:
    """Integers drawn uniformly from [low, high): ``randint(10, (3,))`` or
    ``randint(3, 10, (2, 2))``; int64 unless dtype= says otherwise."""
    if size is None and isinstance(high, (tuple, list)):
        low, high, size = 0, low, high  # randint(high, size)
    elif high is None:
        low, high = 0, low  # randint(high, size=...)
    if size is None:
        raise TypeError("randint: missing the size (a tuple or list of ints)")
    for name, value in (("low", low), ("high", high)):
        if not _is_int(value):
            raise TypeError(f"randint: {name} must be an int, got {type(value).__name__}")
    if high <= low:
        raise ValueError(f"randint: high must be greater than low, got low={low}, high={high}")
    shape, resolved = _dims("randint", size), _dtype("randint", dtype, int64)
    if resolved == int32 and (low < -2**31 or high > 2**31):
        raise ValueError(f"randint: [{low}, {high}) does not fit int32")
    _check_grad("randint", resolved, requires_grad)
    draw = _generator("randint", generator)
    values = draw.integers(int(low), int(high), size=shape, dtype=np.int64)
    return _tensor("randint", values.astype(resolved), requires_grad)


# ---- ranges

def arange(start, end=None, step=1, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """Values from `start` (default 0) up to but excluding `end`, `step` apart.

    int64 when start, end and step are all ints, float32 otherwise (torch's rule);
    the length is ceil((end - start) / step).
    """
    if end is None:
        start, end = 0, start
    for name, value in (("start", start), ("end", end), ("step", step)):
        _number("arange", name, value)
        if not math.isfinite(value):
            raise ValueError(f"arange: {name} must be finite, got {value}")
        if _is_int(value) and not -2**63 <= value < 2**63:  # answered for 2**63, as no int64 can hold it
            raise ValueError(f"arange: {name} {value} does not fit an int64")
    integral = all(_is_int(v) for v in (start, end, step))
    resolved = _dtype("arange", dtype, int64 if integral else float32)
    _check_grad("arange", resolved, requires_grad)
    if resolved.kind == "i":  # torch converts the bounds to the integer type first
        start, end, step = (int(v) for v in (start, end, step))  # int() truncates
    _check_step("arange", start, end, step)
    if resolved.kind == "i":
        values = np.arange(start, end, step, dtype=np.int64)
    else:
        count = math.ceil((float(end) - float(start)) / float(step))
        values = float(start) + float(step) * np.arange(count, dtype=np.float64)
    return _tensor("arange", values.astype(resolved), requires_grad)


def _check_step(fn: str, start, end, step) -> None:
    if step == 0:
        raise ValueError(f"{fn}: step must be nonzero")
    if (step > 0 and end < start) or (step < 0 and end > start):
        raise ValueError(f"{fn}: the range {start} -> {end} goes against the sign of step {step}")


def linspace(start, end, steps, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """`steps` values evenly spaced from `start` to `end`, both included.

    Like torch's CPU kernel, the first half counts up from start and the second
    half down from end, so both ends are exact (in float32 arithmetic).
    """
    _number("linspace", "start", start)
    _number("linspace", "end", end)
    count = _count("linspace", "steps", steps)
    resolved = _dtype("linspace", dtype, float32)
    _check_grad("linspace", resolved, requires_grad)
    if resolved.kind == "i":  # integer result: spacing in float64, values truncated
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"linspace: an integer range needs finite ends, got {start} -> {end}")
        values = _linspace_values(float(int(start)), float(int(end)), count, np.float64)
    else:
        values = _linspace_values(start, end, count, np.float32)
    return _tensor("linspace", values.astype(resolved), requires_grad)


def _linspace_values(start, end, count: int, compute) -> np.ndarray:
    first, last = compute(start), compute(end)
    if count <= 1:
        return np.full(count, first, dtype=compute)
    step = (last - first) / compute(count - 1)
    index = np.arange(count)
    rising = first + step * index.astype(compute)
    falling = last - step * (count - 1 - index).astype(compute)
    return np.where(index < count // 2, rising, falling)


# ---- *_like

def _like(fn: str, input, dtype, requires_grad: bool):
    """(shape, dtype) for a *_like factory: input's unless dtype= says."""
    source = _source(fn, input)
    resolved = _dtype(fn, dtype, _dtype(fn, source.dtype, float32))
    _check_grad(fn, resolved, requires_grad)
    return source.shape, resolved


def zeros_like(input, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """Zeros of input's shape and (by default) dtype."""
    shape, resolved = _like("zeros_like", input, dtype, requires_grad)
    return _tensor("zeros_like", np.zeros(shape, dtype=resolved), requires_grad)


def ones_like(input, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """Ones of input's shape and (by default) dtype."""
    shape, resolved = _like("ones_like", input, dtype, requires_grad)
    return _tensor("ones_like", np.ones(shape, dtype=resolved), requires_grad)


def empty_like(input, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """An uninitialised tensor of input's shape and (by default) dtype."""
    shape, resolved = _like("empty_like", input, dtype, requires_grad)
    return _tensor("empty_like", np.empty(shape, dtype=resolved), requires_grad)


def full_like(input, fill_value, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """`fill_value` everywhere, in input's shape and (by default) dtype."""
    _number("full_like", "fill_value", fill_value)  # refuses bools: pyengine has no bool dtype
    shape, resolved = _like("full_like", input, dtype, requires_grad)
    if resolved.kind == "i" and not math.isfinite(fill_value):
        raise ValueError(f"full_like: cannot fill an integer tensor with {fill_value}")
    return _tensor("full_like", np.full(shape, fill_value, dtype=resolved), requires_grad)


def rand_like(input, *, generator=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """Uniform [0, 1) samples in input's shape (float32 only)."""
    shape, resolved = _like("rand_like", input, dtype, requires_grad)
    _float_only("rand_like", resolved)
    values = _generator("rand_like", generator).random(shape, dtype=np.float32)
    return _tensor("rand_like", values, requires_grad)


def randn_like(input, *, generator=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples in input's shape (float32 only)."""
    shape, resolved = _like("randn_like", input, dtype, requires_grad)
    _float_only("randn_like", resolved)
    values = _generator("randn_like", generator).standard_normal(shape, dtype=np.float32)
    return _tensor("randn_like", values, requires_grad)
