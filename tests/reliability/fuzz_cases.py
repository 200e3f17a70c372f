"""Fuzz cases for every declared kernel, derived from its declaration and its valid call in op_cases.

A case is a recipe (a small tuple drawn by hypothesis) that `build` turns into
the positional and keyword arguments of one call, the same arrays every time
it is built, so that a call that succeeds can be built again and run at the
reference ISA level to compare. The kinds of recipe:
  resized    every dim size of the valid call mapped to a new one (0, 1, odd,
             around the tile sizes, huge with a zero elsewhere), values with
             inf and NaN, outputs left to the binding to allocate
  leading    extra leading dims on every argument declared "(*, ...)"
  array      one array argument replaced: a Python object, another dtype or
             byte order, a view that is not C-contiguous, a negative stride,
             a misaligned or read-only buffer, a wrong shape or rank
  overlap    a written argument sharing memory with a read one
  attr       one attribute replaced by a float, a huge or negative int, NaN,
             a string, None, a tuple...
  extra      too many arguments, an unknown or a repeated keyword
`outcome` runs a case: it must give the reference answer or raise a
ValueError/TypeError (or a MemoryError giving the size) that names the op.
"""

from __future__ import annotations

import numpy as np
import op_cases
from hypothesis import strategies as st

import pyengine
from pyengine import _C, registry

F32 = np.float32
READ_ROLES = ("input", "optional_input", "grad_input", "inout", "optional_inout")
WRITTEN_ROLES = registry.WRITTEN
SIZES = (0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 127)
HUGE = (2**31 + 3, 2**40, 2**58)  # numpy refuses a shape whose non-zero dims pass 2^63 bytes
MAX_ELEMENTS = 1 << 17  # arrays the fuzzer builds stay small; only shapes with a zero dim may be huge
OBJECTS = ("list", "tuple", "int", "float", "str", "dict", "object", "bytes", "none", "scalar", "0d")
F32_DTYPES = (">f4", "<f4", "f8", "f2", "i4", "i8", "?", "c8", "O", "u1")
INDEX_DTYPES = (">i8", "<i8", "i4", ">i4", "u8", "i2", "f4", "?")
LAYOUTS = ("transposed", "strided", "negative", "fortran", "misaligned", "read_only", "rank0", "rank17",
           "reshaped", "zero_huge")
ATTR_VALUES = (1.5, float("nan"), float("inf"), -1, 0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -2**63, 2**100,
               "x", None, True, "np_int", "np_float", (1, 2), (1.0, 2.0), [1, -1], (2**40, 1), (-1, 0),
               "object", (1, 2, 3))


class Valid:
    """The valid call of every declared kernel and its declaration."""

    calls = op_cases.valid_calls()

    @classmethod
    def ops(cls) -> list:
        return sorted(registry.ops)


def recipes(name: str):
    """The hypothesis strategy of one op's recipes."""
    info = registry.op(name)
    n_args, n_attrs = len(info.args), len(info.attrs)
    seed = st.integers(0, 2**32 - 1)
    kinds = [st.tuples(st.just("resized"), seed, st.lists(st.sampled_from(SIZES), min_size=8, max_size=8),
                       st.booleans(), st.sampled_from((None,) + HUGE)),
             st.tuples(st.just("leading"), seed, st.lists(st.sampled_from((1, 2, 1, 3)), min_size=1, max_size=14)),
             st.tuples(st.just("array"), seed, st.integers(0, n_args - 1),
                       st.sampled_from(OBJECTS + F32_DTYPES + INDEX_DTYPES + LAYOUTS)),
             st.tuples(st.just("overlap"), seed, st.integers(0, n_args - 1), st.integers(0, n_args - 1),
                       st.integers(0, 64)),
             st.tuples(st.just("extra"), seed, st.sampled_from(("positional", "unknown", "repeated", "kw-all")))]
    if n_attrs:
        kinds.append(st.tuples(st.just("attr"), seed, st.integers(0, n_attrs - 1), st.sampled_from(ATTR_VALUES)))
    return st.one_of(kinds)


# ---------------------------------------------------------------- building a call
def build(name: str, recipe: tuple) -> tuple:
    """(positional args, keyword args) of the call `recipe` describes."""
    info = registry.op(name)
    kind, seed, *params = recipe
    rng = np.random.default_rng(seed)
    base = Valid.calls[name]
    arrays, attrs = list(base[:len(info.args)]), list(base[len(info.args):])
    arrays = [None if a is None else a.copy() for a in arrays]
    if kind == "resized":
        arrays = _resized(info, arrays, rng, *params)
    elif kind == "leading":
        arrays = _leading(info, arrays, rng, params[0])
    elif kind == "array":
        arrays[params[0]] = _hostile_array(info.args[params[0]], arrays[params[0]], rng, params[1])
    elif kind == "overlap":
        arrays = _overlapping(info, arrays, *params)
    elif kind == "attr":
        attrs[params[0]] = _attr_value(params[1])
    args, kwargs = arrays + attrs, {}
    if kind == "extra":
        args, kwargs = _extra(info, args, params[0])
    return args, kwargs


def _zeros(shape, dtype) -> np.ndarray:
    try:
        return np.zeros(shape, dtype)
    except ValueError:  # empty, but the non-zero dims pass 2^63 bytes: numpy cannot describe it at all
        return np.zeros((0,) * len(shape), dtype)


def _values(shape, rng, dtype_role: dict, special: bool) -> np.ndarray:
    dtype = np.int64 if dtype_role["dtype"] == "index" else F32
    if 0 in shape:  # nothing to draw (and numpy's generators refuse huge shapes even when empty)
        return _zeros(shape, dtype)
    if dtype_role["dtype"] == "index":
        return rng.integers(-3, 12, size=shape).astype(np.int64)
    values = rng.standard_normal(shape).astype(F32)
    if special and values.size:
        where = rng.random(shape) < 0.1
        values[where] = rng.choice(np.array([np.inf, -np.inf, np.nan], F32), size=int(where.sum()))
    return values


def _resized(info, arrays, rng, sizes, special, huge):
    """Every distinct dim size of the valid call mapped to a new size, consistently across arguments."""
    shapes = [None if a is None else a.shape for a in arrays]
    distinct = sorted({d for s in shapes if s is not None for d in s})
    mapping = {d: sizes[i % len(sizes)] for i, d in enumerate(distinct)}
    if huge is not None and distinct:
        zero = distinct[int(rng.integers(len(distinct)))]
        mapping[zero] = 0
        holders = [s for s in shapes if s is not None]
        # a dim may be huge only where every array that has it also has the zero dim
        candidates = [d for d in distinct if d != zero and all(zero in s for s in holders if d in s)]
        if candidates:
            mapping[candidates[int(rng.integers(len(candidates)))]] = huge
    result = []
    for a, spec in zip(arrays, info.args):
        if a is None:
            result.append(None)
            continue
        shape = tuple(mapping[d] for d in a.shape)
        if spec["role"] == "output":
            result.append(None)  # the binding allocates it from the shape rule
        elif int(np.prod(shape, dtype=object)) > MAX_ELEMENTS:
            result.append(np.zeros((0,) * len(shape), a.dtype) if 0 in shape else a)
        elif spec["role"] in ("grad", "optional_grad", "optional_output"):
            result.append(_zeros(shape, a.dtype))
        else:
            result.append(_values(shape, rng, spec, special))
    return result


def _leading(info, arrays, rng, dims):
    """Extra leading dims on every argument whose declared shape starts with the group '*'."""
    lead = tuple(dims)
    while int(np.prod(lead)) > 64:  # a large rank, not a large array
        lead = tuple(1 if d == max(lead) else d for d in lead) if max(lead) > 1 else lead[:-1]
    result = []
    for a, spec in zip(arrays, info.args):
        if a is None or not spec["shape"].startswith("(*"):
            result.append(a)
        elif spec["role"] == "output":
            result.append(None)
        else:
            result.append(_values(lead + a.shape, rng, spec, special=False) if spec["role"] in READ_ROLES
                          else np.zeros(lead + a.shape, a.dtype))
    return result


def _hostile_array(spec, a, rng, how):
    """`a` (the valid argument, or None) replaced by something else."""
    a = np.zeros((3, 4), F32) if a is None else a
    objects = {"list": lambda: a.tolist(), "tuple": lambda: tuple(a.ravel().tolist()), "int": lambda: 3,
               "float": lambda: 2.5, "str": lambda: "array", "dict": lambda: {"data": a}, "object": object,
               "bytes": lambda: a.tobytes(), "none": lambda: None, "scalar": lambda: F32(1.0),
               "0d": lambda: np.array(1, a.dtype)}
    if how in objects:
        return objects[how]()
    if how in F32_DTYPES + INDEX_DTYPES:
        dtype = np.dtype(how)
        return a.astype(dtype) if dtype.kind != "O" else a.astype(object)
    if how == "transposed":
        return a.T
    if how == "strided":
        return np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a
    if how == "negative":
        return a[::-1] if a.ndim else a
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "misaligned":
        buffer = np.zeros(a.nbytes + 1, np.uint8)
        return np.frombuffer(buffer.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    if how == "read_only":
        a.setflags(write=False)
        return a
    if how == "rank0":
        return np.zeros((), a.dtype)
    if how == "rank17":
        return np.zeros((1,) * 17, a.dtype)
    if how == "reshaped":
        return a.reshape(-1) if a.ndim != 1 else a.reshape(1, -1)
    if how == "zero_huge":
        return np.zeros((0, 2**40) if a.ndim < 2 else (2**40,) + (0,) * (a.ndim - 1), a.dtype)
    raise AssertionError(how)


def _overlapping(info, arrays, written, read, offset):
    """A written argument and a read one in one buffer: the very same array, or shifted by `offset`."""
    w = info.args[written]
    if w["role"] not in WRITTEN_ROLES or arrays[read] is None or written == read:
        return arrays
    target = arrays[written] if arrays[written] is not None else arrays[read]
    source = arrays[read]
    if target.dtype != source.dtype:
        return arrays
    if offset == 0 and target.shape == source.shape:
        arrays[written] = source  # the same array as the input
        return arrays
    buffer = np.zeros(source.size + target.size + offset, source.dtype)
    arrays[read] = buffer[:source.size].reshape(source.shape)
    arrays[read][...] = source
    start = min(offset, source.size)
    arrays[written] = buffer[start:start + target.size].reshape(target.shape)
    return arrays


def _attr_value(value):
    return {"np_int": np.int64(2), "np_float": np.float32(0.5), "object": object()}.get(value, value) \
        if isinstance(value, str) else value


def _extra(info, args, how):
    names = [a["name"] for a in info.args] + [a["name"] for a in info.attrs]
    if how == "positional":
        return args + [None, 1], {}
    if how == "unknown":
        return args, {"bogus": 1}
    if how == "repeated":
        return args, {names[0]: args[0]}
    return [], dict(zip(names, args))  # every argument by keyword: valid


# ---------------------------------------------------------------- running a call
def outcome(name: str, recipe: tuple) -> str:
    """Runs the case: 'ok' (and it matched the reference), 'error' or 'memory'; raises AssertionError
    on a wrong answer or an unclear error (a crash or a hang never returns)."""
    kernel = getattr(_C, name)
    args, kwargs = build(name, recipe)
    try:
        result = kernel(*args, **kwargs)
    except (ValueError, TypeError) as error:
        assert name in str(error), f"{type(error).__name__} does not name the op: {error}"
        return "error"
    except MemoryError as error:
        assert name in str(error) and "bytes" in str(error), f"MemoryError without op and size: {error}"
        return "memory"
    with pyengine.use_isa("reference"):
        ref_args, ref_kwargs = build(name, recipe)
        expected = kernel(*ref_args, **ref_kwargs)
    _assert_same_arrays(_arrays_of(result, args, kwargs), _arrays_of(expected, ref_args, ref_kwargs))
    return "ok"


def _arrays_of(result, args, kwargs) -> list:
    results = list(result) if isinstance(result, tuple) else [result]
    return [a for a in results + list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]


def _assert_same_arrays(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"array {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if a.dtype != F32:
            np.testing.assert_array_equal(a, b, err_msg=f"array {i}")
            continue
        finite = np.isfinite(a) & np.isfinite(b)
        assert (np.isnan(a) == np.isnan(b)).all(), f"array {i}: NaN where the reference has none (or not)"
        assert (a[~finite & ~np.isnan(a)] == b[~finite & ~np.isnan(b)]).all(), f"array {i}: infinities differ"
        scale = max(1.0, float(np.abs(b[finite]).max())) if finite.any() else 1.0
        np.testing.assert_allclose(a[finite], b[finite], rtol=2e-3, atol=2e-3 * scale, err_msg=f"array {i}")
