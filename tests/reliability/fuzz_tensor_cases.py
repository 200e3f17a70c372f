"""Fuzz cases for the public Tensor surface (methods, operators, pyengine.functional, the factories),
each against PyTorch in float64, forward and backward.

A case is a recipe (seed, shape, layout, special, params) drawn by hypothesis;
`outcome` builds float32 leaves from it (values with inf and NaN when
`special`, a non-contiguous or negatively strided view when `layout` says so),
runs the pyengine call and the torch call on float64 copies, and requires:
the same answer within tolerance (and the same gradients of every leaf), or a
ValueError/TypeError naming the op, or a MemoryError. Anything else (an
OverflowError, an IndexError from internals, a wrong answer) fails the case;
a crash or a hang ends the child (fuzz_child.py), which the parent reports.
OPS maps each op to (pe call, torch call, params strategy, leaves' rank range).
"""

from __future__ import annotations

import numpy as np
from fuzz_tensor_valid import VALID
from hypothesis import strategies as st

import pyengine as pe
import pyengine.functional as F
from pyengine.tensor import Tensor

F32, F64 = np.float32, np.float64
SIZES = (0, 1, 1, 2, 3, 5, 7, 8, 9, 16, 17)
LAYOUTS = ("contiguous", "contiguous", "transposed", "negative", "strided")
# dims, counts and sizes that are absurd: floats, huge or negative ints, strings, None
ODD_INTS = (0, 1, -1, 2, -2, 3, 2**31, 2**63, -2**63, 2**100, 1.0, 2.5, float("nan"), "x", None, True)
DIMS = (0, 1, -1, 2, -2, 3, -4, 2**31, 2**63, -2**70, 1.0, None)
FLOATS = (0.0, 1.0, -1.5, 0.5, float("inf"), float("-inf"), float("nan"), 1e30, -2, None)


def _torch():
    import torch
    return torch


# ---------------------------------------------------------------- the ops
def _unary(pe_name, torch_name=None):
    return (lambda x, p: getattr(x, pe_name)(), lambda x, p: getattr(_torch(), torch_name or pe_name)(x),
            st.just(()), 1)


def _binary(op):
    import operator
    fn = getattr(operator, op)
    return (lambda x, y, p: fn(x, y if p == "tensor" else p), lambda x, y, p: fn(x, y if p == "tensor" else p),
            st.sampled_from(("tensor", "tensor", 2.0, -1, 0.0, float("nan"))), 2)


def _reduction(pe_call, torch_call, keep=True):
    params = st.tuples(st.sampled_from(DIMS), st.booleans() if keep else st.just(False))
    return pe_call, torch_call, params, 1


def _variance(name):
    params = st.tuples(st.sampled_from(DIMS[:7] + (None, 2**31, 1.5)), st.booleans(),
                       st.sampled_from((None, 0, 1, 2, -1, -3, 0.5, 100, 2**40)))
    return (lambda x, p: getattr(x, name)(p[0], keepdim=p[1], correction=p[2]),
            lambda x, p: getattr(x, name)(p[0], keepdim=p[1], correction=p[2]), params, 1)


def _chunked(name):
    return (lambda x, p: getattr(x, name)(p[0], p[1]), lambda x, p: getattr(x, name)(p[0], p[1]),
            st.tuples(st.sampled_from((1, 2, 3, 5, 0, -1, 2**31, 2**63, 1.5, [1, 1], None)), st.sampled_from(DIMS)), 1)


def _sequence(name):
    def call(lib):
        return lambda x, y, p: getattr(lib, name)([x, y], p)
    return call(pe), call(_torch()), st.sampled_from(DIMS), 2


def _shape_op(name):
    shapes = st.sampled_from(((-1,), (1, -1), (-1, 1), (0,), (2, -1), (-1, -1), (2**31, 0), (2**63,), (1.0,),
                              ("x",), ()))
    return (lambda x, p: getattr(x, name)(*p), lambda x, p: getattr(x, name)(*p), shapes, 1)


def _index():
    keys = st.sampled_from((0, -1, 1, slice(None, None, -1), slice(None, None, 2), slice(1, None, -2),
                            (slice(None), 0), (Ellipsis, -1), None, 2**63, 1.5, slice(0, 2**40), (0, 0, 0, 0, 0)))
    return lambda x, p: x[p], lambda x, p: x[p], keys, 1


def _dim_op(pe_call, torch_call=None):
    return pe_call, torch_call or pe_call, st.sampled_from(DIMS), 1


def _t(): return _torch()
def _tf(): return _torch().nn.functional


# class targets: a 0-d one, rows, out of range, negative (ignore_index is -100), empty
TARGETS = (0, (0, 1), (1, 0, 2), ((0, 1),), (5,), (-1,), (-100, 0), ())


def _stats(x, lib):
    """batch_norm's running mean and variance (C,) for x (N, C, ...) (one channel for a smaller x)."""
    channels = x.shape[1] if x.ndim > 1 else 1
    if lib is np:
        return np.zeros(channels, F32), np.ones(channels, F32)
    return lib.zeros(channels, dtype=lib.float64), lib.ones(channels, dtype=lib.float64)


def _torch_qkv(qkv, causal):
    """qkv_attention in torch: (B, T, 3, H, D) -> sdpa of the (B, H, T, D) transposes -> (B, T, H, D)."""
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError("qkv must be (B, T, 3, H, D)")
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return _tf().scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)


OPS = {
    # operators, with broadcasting and scalars
    "add": _binary("add"), "sub": _binary("sub"), "mul": _binary("mul"), "truediv": _binary("truediv"),
    "neg": (lambda x, p: -x, lambda x, p: -x, st.just(()), 1),
    "pow": (lambda x, p: x ** p, lambda x, p: x ** p, st.sampled_from((2, 3, 0.5, -1, 0, 2.0)), 1),
    "matmul": (lambda x, y, p: x @ y, lambda x, y, p: x @ y, st.just(()), 2),
    # unary math and activations
    **{n: _unary(n) for n in ("relu", "tanh", "sigmoid", "sqrt", "rsqrt", "log", "abs", "square", "exp")},
    "silu": (lambda x, p: x.silu(), lambda x, p: _tf().silu(x), st.just(()), 1),
    "gelu": (lambda x, p: x.gelu(p), lambda x, p: _tf().gelu(x, approximate=p), st.sampled_from(("none", "tanh")), 1),
    "softmax": (lambda x, p: x.softmax(), lambda x, p: x.softmax(-1), st.just(()), 1),
    "log_softmax": (lambda x, p: x.log_softmax(), lambda x, p: x.log_softmax(-1), st.just(()), 1),
    "clamp": (lambda x, p: x.clamp(*p), lambda x, p: x.clamp(*p),
              st.tuples(st.sampled_from(FLOATS), st.sampled_from(FLOATS)), 1),
    # reductions
    "sum": _reduction(lambda x, p: x.sum(p[0], keepdims=p[1]), lambda x, p: x.sum(p[0], keepdim=p[1])),
    "mean": _reduction(lambda x, p: x.mean(p[0], keepdims=p[1]), lambda x, p: x.mean(p[0], keepdim=p[1])),
    "max": _reduction(lambda x, p: x.max(p[0], p[1]) if p[0] is not None else x.max(),
                      lambda x, p: x.max(p[0], p[1]) if p[0] is not None else x.max()),
    "min": _reduction(lambda x, p: x.min(p[0], p[1]) if p[0] is not None else x.min(),
                      lambda x, p: x.min(p[0], p[1]) if p[0] is not None else x.min()),
    "argmax": _reduction(lambda x, p: x.argmax(p[0], p[1]), lambda x, p: x.argmax(p[0], p[1])),
    "argmin": _reduction(lambda x, p: x.argmin(p[0], p[1]), lambda x, p: x.argmin(p[0], p[1])),
    "var": _variance("var"), "std": _variance("std"),
    # views
    "reshape": _shape_op("reshape"), "view": _shape_op("view"),
    "T": (lambda x, p: x.T, lambda x, p: x.permute(*reversed(range(x.ndim))) if x.ndim else x, st.just(()), 1),
    "mT": (lambda x, p: x.mT, lambda x, p: x.mT, st.just(()), 1),
    "transpose": (lambda x, p: x.transpose(*p), lambda x, p: x.transpose(*p),
                  st.tuples(st.sampled_from(DIMS), st.sampled_from(DIMS)), 1),
    "permute": (lambda x, p: x.permute(*p), lambda x, p: x.permute(p),
                st.lists(st.sampled_from(DIMS), max_size=4), 1),
    "unsqueeze": _dim_op(lambda x, p: x.unsqueeze(p)),
    "squeeze": _dim_op(lambda x, p: x.squeeze(p), lambda x, p: x.squeeze() if p is None else x.squeeze(p)),
    "flatten": (lambda x, p: x.flatten(*p), lambda x, p: x.flatten(*p),
                st.tuples(st.sampled_from(DIMS), st.sampled_from(DIMS)), 1),
    "contiguous": (lambda x, p: x.contiguous(), lambda x, p: x.contiguous(), st.just(()), 1),
    "getitem": _index(),
    # joins and pieces
    "cat": _sequence("cat"), "stack": _sequence("stack"),
    "split": _chunked("split"), "chunk": _chunked("chunk"),
    "where": (lambda x, y, p: pe.where(Tensor(np.asarray(x.numpy() > 0)), x, y),
              lambda x, y, p: _t().where(x > 0, x, y), st.just(()), 2),
    "masked_fill": (lambda x, p: x.masked_fill(Tensor(np.asarray(x.numpy() > 0)), p),
                    lambda x, p: x.masked_fill(x > 0, p), st.sampled_from(FLOATS[:-1]), 1),
    "tril": _dim_op(lambda x, p: x.tril(p)), "triu": _dim_op(lambda x, p: x.triu(p)),
    # functional
    "linear": (lambda x, w, p: F.linear(x, w), lambda x, w, p: _tf().linear(x, w), st.just(()), 2),
    "conv2d": (lambda x, w, p: F.conv2d(x, w, None, *p), lambda x, w, p: _tf().conv2d(x, w, None, *p),
               st.tuples(st.sampled_from((1, 2, 0, -1, 2**31, 1.5)), st.sampled_from((0, 1, 2, -1, 2**40)),
                         st.sampled_from((1, 2, 0)), st.sampled_from((1, 2, 0, -1))), 2),
    "max_pool2d": (lambda x, p: F.max_pool2d(x, *p), lambda x, p: _tf().max_pool2d(x, *p),
                   st.tuples(st.sampled_from((1, 2, 3, 0, -1, 2**31)), st.sampled_from((None, 1, 2, 0)),
                             st.sampled_from((0, 1, -1, 2**40))), 1),
    "avg_pool2d": (lambda x, p: F.avg_pool2d(x, *p), lambda x, p: _tf().avg_pool2d(x, *p),
                   st.tuples(st.sampled_from((1, 2, 3, 0, -1, 2**31)), st.sampled_from((None, 1, 2, 0)),
                             st.sampled_from((0, 1, -1))), 1),
    "adaptive_avg_pool2d": (lambda x, p: F.adaptive_avg_pool2d(x, p), lambda x, p: _tf().adaptive_avg_pool2d(x, p),
                            st.sampled_from((1, 2, 3, (1, 2), 0, -1, 2**31)), 1),
    "layer_norm": (lambda x, w, p: F.layer_norm(x, w, w), lambda x, w, p: _tf().layer_norm(x, x.shape[-1:], w, w),
                   st.just(()), 2),
    # torch's default eps is its dtype's: float32's for pyengine's float32, given to the float64 twin
    "rms_norm": (lambda x, w, p: F.rms_norm(x, x.shape[-1:], w),
                 lambda x, w, p: _tf().rms_norm(x, x.shape[-1:], w, eps=float(np.finfo(F32).eps)), st.just(()), 2),
    "mse_loss": (lambda x, y, p: F.mse_loss(x, y), lambda x, y, p: _tf().mse_loss(x, y), st.just(()), 2),
    "l1_loss": (lambda x, y, p: F.l1_loss(x, y), lambda x, y, p: _tf().l1_loss(x, y), st.just(()), 2),
    "dropout": (lambda x, p: F.dropout(x, p, training=False), lambda x, p: _tf().dropout(x, p, training=False),
                st.sampled_from((0.0, 0.5, 1.0, -0.1, 1.5, float("nan"))), 1),
    "scaled_dot_product_attention": (lambda q, k, p: F.scaled_dot_product_attention(q, k, k, is_causal=p),
                                     lambda q, k, p: _tf().scaled_dot_product_attention(q, k, k, is_causal=p),
                                     st.booleans(), 2),
    "batch_norm": (lambda x, w, p: F.batch_norm(x, *_stats(x, np), w, w, training=p),
                   lambda x, w, p: _tf().batch_norm(x, *_stats(x, _t()), w, w, training=p), st.booleans(), 2),
    "embedding": (lambda w, p: F.embedding(np.array(p, np.int64), w),
                  lambda w, p: _tf().embedding(_t().tensor(p, dtype=_t().int64), w),
                  st.sampled_from(((0,), (0, 1), (-1,), (5,), (2**40,), ())), 1),
    "cross_entropy": (lambda x, p: F.cross_entropy(x, np.array(p, np.int64)),
                      lambda x, p: _tf().cross_entropy(x, _t().tensor(p, dtype=_t().int64)),
                      st.sampled_from(TARGETS), 1),
    "nll_loss": (lambda x, p: F.nll_loss(x, np.array(p, np.int64)),
                 lambda x, p: _tf().nll_loss(x, _t().tensor(p, dtype=_t().int64)), st.sampled_from(TARGETS), 1),
    "binary_cross_entropy_with_logits": (lambda x, y, p: F.binary_cross_entropy_with_logits(x, y),
                                         lambda x, y, p: _tf().binary_cross_entropy_with_logits(x, y), st.just(()), 2),
    "dropout_add": (lambda x, r, p: F.dropout_add(x, r, p, training=False),
                    lambda x, r, p: r + _tf().dropout(x, p, training=False), st.sampled_from((0.0, 0.5, 1.5)), 2),
    "qkv_attention": (lambda x, p: F.qkv_attention(x, is_causal=p), lambda x, p: _torch_qkv(x, p), st.booleans(), 1),
    "__iter__": (lambda x, p: tuple(x), lambda x, p: tuple(x), st.just(()), 1),
    "__len__": (lambda x, p: Tensor(np.array(len(x), F32)), lambda x, p: _t().tensor(float(len(x)), dtype=_t().float64),
                st.just(()), 1),
    # factories
    "zeros": (lambda p: pe.zeros(*p), lambda p: _t().zeros(*p), st.lists(st.sampled_from(ODD_INTS), max_size=4), 0),
    "ones": (lambda p: pe.ones(*p), lambda p: _t().ones(*p), st.lists(st.sampled_from(ODD_INTS), max_size=4), 0),
    "full": (lambda p: pe.full(p[0], p[1]), lambda p: _t().full(p[0], p[1]),
             st.tuples(st.sampled_from(((2, 3), (0, 2**40), (2**63,), (-1,), (1.5,))),
                       st.sampled_from(FLOATS[:-1])), 0),
    "arange": (lambda p: pe.arange(*p), lambda p: _t().arange(*p),
               st.lists(st.sampled_from((0, 1, 5, -3, 2.5, 0.5, float("inf"), float("nan"), 2**63)), min_size=1,
                        max_size=3), 0),
    "zeros_like": (lambda x, p: pe.zeros_like(x), lambda x, p: _t().zeros_like(x), st.just(()), 1),
    "ones_like": (lambda x, p: pe.ones_like(x), lambda x, p: _t().ones_like(x), st.just(()), 1),
}
# the factories whose values are random: only the shape is compared
RANDOM = {"rand": pe.rand, "randn": pe.randn}
for _name, _fn in RANDOM.items():
    OPS[_name] = (lambda p, fn=_fn: fn(*p), lambda p, name=_name: getattr(_t(), name)(*p),
                  st.lists(st.sampled_from(ODD_INTS), max_size=4), 0)


def recipes(name: str):
    """(seed, shapes, layout, special, params): random shapes and params (mostly errors), mixed
    with valid ones (fuzz_tensor_valid.VALID) two to one where the random ones rarely fit."""
    *_, params, arity = OPS[name]
    shape = st.lists(st.sampled_from(SIZES), min_size=0, max_size=5)
    cases = st.tuples(st.lists(shape, min_size=arity, max_size=arity), params)
    if name in VALID:
        cases = st.one_of(VALID[name], VALID[name], cases)
    return st.tuples(st.integers(0, 2**32 - 1), cases, st.sampled_from(LAYOUTS), st.booleans()).map(
        lambda r: (r[0], [tuple(s) for s in r[1][0]], r[2], r[3], r[1][1]))


def _leaf(shape, rng, layout, special) -> np.ndarray:
    values = rng.standard_normal(shape).astype(F32)
    if special and values.size:
        where = rng.random(shape) < 0.2
        values[where] = rng.choice(np.array([np.inf, -np.inf, np.nan], F32), size=int(where.sum()))
    if layout == "contiguous" or values.ndim == 0:
        return values
    # the same values seen through a view that is not C-contiguous: made explicit by ascontiguousarray
    if layout == "transposed":
        view = np.ascontiguousarray(values.T).T
    elif layout == "negative":
        view = np.ascontiguousarray(values[::-1])[::-1]
    else:
        view = np.repeat(values, 2, axis=-1)[..., ::2]
    assert np.array_equal(view, values, equal_nan=True)
    return np.ascontiguousarray(view)


def _leaves(recipe):
    seed, shapes, layout, special, _ = recipe
    rng = np.random.default_rng(seed)
    return [_leaf(tuple(s), rng, layout, special) for s in shapes]


def outcome(name: str, recipe: tuple) -> str:
    """"ok" (the same answer as torch), "error" (both refuse, with agreeing error types), "memory",
    or "known" (a disagreement KNOWN_MISMATCHES allows); anything else fails the case."""
    torch = _torch()
    pe_call, torch_call, _, _ = OPS[name]
    extra = (recipe[-1],)
    arrays = _leaves(recipe)
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    try:
        out = pe_call(*leaves, *extra)
    except IndexError as error:  # torch's error for a dim out of range, raised by normalize_dim
        message = str(error)
        assert (name in message and "out of range" in message) or (name == "getitem" and "__getitem__" in message), \
            f"IndexError from internals: {error}"
        return _both_refuse(name, error, arrays, extra)
    except (ValueError, TypeError) as error:
        assert name.strip("_") in str(error) or _names_op(name, str(error)), \
            f"{type(error).__name__} does not name the op: {error}"
        return _both_refuse(name, error, arrays, extra)
    except MemoryError:
        return "memory"
    tleaves = [torch.tensor(a.astype(F64), requires_grad=True) for a in arrays]
    try:
        ref = torch_call(*tleaves, *extra)
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as error:
        if name == "getitem":  # negative steps, which torch refuses: numpy's view is the reference
            want = arrays[0][extra[0]]
            np.testing.assert_allclose(out.numpy(), want, equal_nan=True, err_msg="getitem against numpy")
            return "ok"
        return _known("torch refuses", name, arrays, extra[0], out,
                      f"pyengine answered where torch refuses ({type(error).__name__}: {error})")
    try:
        _compare(name, out, ref, leaves, tleaves)
    except AssertionError as error:
        return _known("answer", name, arrays, extra[0], out, str(error))
    return "ok"


# Where both refuse, the error types that agree: torch's RuntimeError is pyengine's ValueError (or its
# TypeError for a dtype); torch checks Python types while unpacking arguments (TypeError, OverflowError).
AGREEING = {ValueError: (RuntimeError, ValueError, IndexError, OverflowError),
            TypeError: (TypeError, RuntimeError, OverflowError),
            IndexError: (IndexError, RuntimeError)}


def _both_refuse(name: str, error: Exception, arrays: list, extra: tuple) -> str:
    """pyengine refused: torch must refuse the same case too, with an agreeing error type."""
    if _huge(extra[0]):
        return "error"  # torch would try to allocate it
    tleaves = [_torch().tensor(a.astype(F64), requires_grad=True) for a in arrays]
    try:
        OPS[name][1](*tleaves, *extra)
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as torch_error:
        kind = type(error) if type(error) in AGREEING else ValueError
        if isinstance(torch_error, AGREEING[kind]):
            return "error"
        return _known("error type", name, arrays, extra[0], None,
                      f"pyengine raised {type(error).__name__} ({error}), torch {type(torch_error).__name__} "
                      f"({torch_error})")
    return _known("pyengine refuses", name, arrays, extra[0], None,
                  f"pyengine refused ({type(error).__name__}: {error}) where torch answers")


def _huge(value) -> bool:
    """A parameter asking for more than 2^20 of anything (a size, a padding, a count)."""
    if isinstance(value, (tuple, list)):
        return any(_huge(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**20


def _known(kind: str, name: str, arrays: list, params, out, failure: str) -> str:
    for known_kind, op, test, _reason in KNOWN_MISMATCHES:
        if known_kind == kind and op == name and test(arrays, params, out):
            return "known"
    raise AssertionError(failure)


def _has(values, *predicates) -> bool:
    return any(bool(p(a).any()) for a in values for p in predicates)


# Disagreements with torch, each allowed narrowly: (kind, op, when, why). Kinds: "answer" (both
# answer, differently), "torch refuses" (pyengine answers), "pyengine refuses" (torch answers),
# "error type" (both refuse, with error types that do not agree).
KNOWN_MISMATCHES = (
    ("pyengine refuses", "mT", lambda a, p, out: a[0].ndim == 0,
     "mT of a 0-d tensor: torch's deprecated identity, pyengine's error (mT is for matrices)"),
    ("pyengine refuses", "adaptive_avg_pool2d", lambda a, p, out: a[0].size == 0 or a[0].ndim not in (3, 4),
     "an empty input, or any rank but 3 and 4: torch answers, pyengine takes (N, C, H, W) or (C, H, W) images"),
    ("pyengine refuses", "linear", lambda a, p, out: a[1].ndim == 1,
     "a 1-D weight: torch's undocumented vector form, pyengine wants (out_features, in_features)"),
    ("pyengine refuses", "batch_norm", lambda a, p, out: a[1].ndim == 0,
     "a 0-d weight and bias: torch broadcasts them, pyengine wants (C,)"),
    ("pyengine refuses", "batch_norm", lambda a, p, out: a[0].size == 0,
     "an empty input ((0,), (0, 0)): torch answers an empty tensor, pyengine wants (N, C, ...) with values"),
    *(("pyengine refuses", op, lambda a, p, out: a[0].ndim == 1 and np.shape(p) == (1,),
       "a class vector with a (1,) target: torch's forward takes it, its backward refuses it (size mismatch); "
       "pyengine wants the 0-d target") for op in ("cross_entropy", "nll_loss")),
    *(("pyengine refuses", op, lambda a, p, out: a[0].ndim >= 1 and a[0].shape[-1] == 0,
       "an empty normalized dim: torch answers an empty tensor, pyengine's kernel wants a row of values")
      for op in ("layer_norm", "rms_norm")),
    ("pyengine refuses", "scaled_dot_product_attention", lambda a, p, out: a[0].ndim != 4 or a[1].ndim != 4,
     "q, k, v of a rank but 4: torch takes any leading dims, pyengine (B, H, T, D)"),
    ("answer", "scaled_dot_product_attention", lambda a, p, out: p and a[0].shape[-2] != a[1].shape[-2],
     "causal with Tq != Tk: pyengine aligns the mask to the end (KV-cache decoding), torch to the start"),
    *(("answer", op, lambda a, p, out: _has(a, np.isinf),
       "a row of NaN scores is fully masked in both (torch's safe softmax), then torch multiplies 0 * inf in v")
      for op in ("scaled_dot_product_attention", "qkv_attention")),
    ("error type", "getitem", lambda a, p, out: a[0].ndim == 0,
     "indexing a 0-d tensor: torch counts the indices before it checks their types and steps, pyengine after"),
)


ALIASES = {"truediv": "div", "getitem": "index", "T": "transpose", "mT": "transpose"}


def _names_op(name: str, message: str) -> bool:
    return ALIASES.get(name, "\0") in message


def _outputs(value) -> list:
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _outputs(item)]
    return [value]


def _compare(name, out, ref, leaves, tleaves) -> None:
    torch = _torch()
    outs, refs = _outputs(out), _outputs(ref)
    assert len(outs) == len(refs), f"{len(outs)} outputs, torch {len(refs)}"
    for o, r in zip(outs, refs):
        assert isinstance(o, Tensor), f"not a Tensor: {type(o).__name__}"
        assert o.shape == tuple(r.shape), f"shape {o.shape}, torch {tuple(r.shape)}"
        if name in RANDOM:
            continue
        got, want = o.numpy().astype(F64), r.detach().numpy().astype(F64)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * max(1.0, _finite_max(want)), equal_nan=True,
                                   err_msg="forward")
    differentiable = [(o, r) for o, r in zip(outs, refs) if o.requires_grad and r.requires_grad and r.numel()]
    # the gradient of an undefined value (a NaN or inf forward) is not compared
    if not differentiable or name in RANDOM or not all(np.isfinite(r.detach().numpy()).all() for r in refs):
        return
    rng = np.random.default_rng(1)
    for o, r in differentiable:
        upstream = rng.standard_normal(o.shape).astype(F32)
        o.backward(upstream)
        torch.autograd.backward(r, torch.from_numpy(upstream.astype(F64)), retain_graph=True)
    for i, (leaf, tleaf) in enumerate(zip(leaves, tleaves)):
        want = np.zeros(leaf.shape) if tleaf.grad is None else tleaf.grad.numpy()
        got = np.zeros(leaf.shape) if leaf.grad is None else leaf.grad.numpy().astype(F64)
        if not np.isfinite(want).all():  # inf - inf orders differ; NaN patterns are compared forward
            continue
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * max(1.0, _finite_max(want)),
                                   err_msg=f"grad of leaf {i}")


def _finite_max(a) -> float:
    finite = a[np.isfinite(a)]
    return float(np.abs(finite).max()) if finite.size else 0.0
