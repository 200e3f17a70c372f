"""Tensor factories (pyengine.zeros, randn, arange, ...) against PyTorch's.

Shapes, dtypes and errors are checked directly; deterministic values
(arange, linspace, eye, full) against torch; random values by seeding
reproducibility and by sample statistics with explicit tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine import random as pe_random

torch = pytest.importorskip("torch")

F32, I64, I32 = np.float32, np.int64, np.int32

SIZED = ["zeros", "ones", "empty", "rand", "randn"]
LIKE = ["zeros_like", "ones_like", "empty_like", "rand_like", "randn_like"]
ALL_SHAPE_FORMS = [((2, 3), (2, 3)), (((2, 3),), (2, 3)), (([4],), (4,)), (((),), ()),
                   ((0, 5), (0, 5)), ((np.int64(2), 1), (2, 1))]


@pytest.fixture(autouse=True)
def keep_default_generator(monkeypatch):
    """manual_seed in a test leaves pyengine's default generator as it found it."""
    monkeypatch.setattr(pe_random, "_generator", pe_random.default_generator())


def _assert_close_to_scale(ours, theirs, scale, ulps=2):
    """|ours - theirs| within `ulps` float32 spacings of `scale` (the range's largest
    magnitude): values near zero come out of start + i * step with the absolute
    error of the ends, so a relative ulp bound would be wrong for them."""
    atol = ulps * float(np.spacing(np.float32(max(abs(scale), 1e-30))))
    np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64),
                               rtol=0, atol=atol)


def _check_tensor(t, shape, dtype):
    assert isinstance(t, pe.Tensor)
    assert t.shape == shape and t.dtype == dtype
    assert t.numpy().flags["C_CONTIGUOUS"]


# ---- shapes and dtypes

@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("args, shape", ALL_SHAPE_FORMS)
def test_size_as_varargs_tuple_or_list(name, args, shape):
    _check_tensor(getattr(pe, name)(*args), shape, F32)


def test_constant_values():
    np.testing.assert_array_equal(pe.zeros(2, 3).numpy(), np.zeros((2, 3), F32))
    np.testing.assert_array_equal(pe.ones(2, 3, dtype="int64").numpy(), np.ones((2, 3), I64))
    np.testing.assert_array_equal(pe.full((2, 2), 2.5).numpy(), np.full((2, 2), 2.5, F32))


@pytest.mark.parametrize("dtype, expected", [
    (np.float32, F32), (np.int64, I64), (np.int32, I32), ("float32", F32), ("int64", I64),
    ("int32", I32), (np.dtype("int64"), I64), (pe.float32, F32), (pe.int64, I64), (pe.int32, I32),
])
@pytest.mark.parametrize("name", ["zeros", "ones", "empty"])
def test_dtype_spellings(name, dtype, expected):
    _check_tensor(getattr(pe, name)(2, 3, dtype=dtype), (2, 3), expected)


@pytest.mark.parametrize("dtype", [np.float64, "float64", float, np.float16, np.bool_, "bool",
                                   np.uint8, np.complex64])
@pytest.mark.parametrize("call", [
    lambda d: pe.zeros(2, dtype=d), lambda d: pe.ones(2, dtype=d), lambda d: pe.empty(2, dtype=d),
    lambda d: pe.full((2,), 1, dtype=d), lambda d: pe.eye(2, dtype=d),
    lambda d: pe.arange(3, dtype=d), lambda d: pe.linspace(0, 1, 3, dtype=d),
    lambda d: pe.randint(0, 3, (2,), dtype=d), lambda d: pe.zeros_like(pe.zeros(2), dtype=d),
])
def test_unsupported_dtypes_raise_type_error(call, dtype):
    with pytest.raises(TypeError, match="not supported: pyengine tensors are float32, int64 or"):
        call(dtype)


def test_dtype_that_is_not_a_dtype():
    with pytest.raises(TypeError, match="zeros: dtype must be"):
        pe.zeros(2, dtype="no-such-dtype")
    with pytest.raises(TypeError, match="ones: dtype must be"):
        pe.ones(2, dtype=object())


# ---- requires_grad

@pytest.mark.parametrize("make", [
    lambda: pe.zeros(2, 3, requires_grad=True), lambda: pe.ones(2, requires_grad=True),
    lambda: pe.empty(2, requires_grad=True), lambda: pe.full((2,), 1.5, requires_grad=True),
    lambda: pe.rand(3, requires_grad=True), lambda: pe.randn(3, requires_grad=True),
    lambda: pe.arange(0.0, 3.0, requires_grad=True),
    lambda: pe.linspace(0, 1, 4, requires_grad=True),
    lambda: pe.eye(3, requires_grad=True), lambda: pe.randn_like(pe.zeros(2), requires_grad=True),
])
def test_float_factories_can_require_grad(make):
    t = make()
    assert t.requires_grad and t.is_leaf and t.dtype == F32
    (t * 2.0).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.full(t.shape, 2.0, F32))


@pytest.mark.parametrize("name, call", [
    ("zeros", lambda: pe.zeros(2, dtype="int64", requires_grad=True)),
    ("full", lambda: pe.full((2,), 3, requires_grad=True)),
    ("arange", lambda: pe.arange(5, requires_grad=True)),
    ("randint", lambda: pe.randint(0, 5, (2,), requires_grad=True)),
    ("ones_like", lambda: pe.ones_like(pe.tensor([1, 2]), requires_grad=True)),
    ("eye", lambda: pe.eye(2, dtype=np.int32, requires_grad=True)),
])
def test_int_tensors_cannot_require_grad(name, call):
    with pytest.raises(TypeError, match=f"{name}: only float32 tensors can require grad"):
        call()


# ---- size errors

@pytest.mark.parametrize("name", SIZED)
def test_negative_size_is_a_value_error(name):
    with pytest.raises(ValueError, match=f"{name}: size must be non-negative, got \\(2, -1\\)"):
        getattr(pe, name)(2, -1)


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("args", [(2.5,), ("3",), (True,), (None,), (2, 1.0), ((2, 1.0),)], ids=str)
def test_non_int_size_is_a_type_error(name, args):
    with pytest.raises(TypeError, match=f"{name}: size must contain ints"):
        getattr(pe, name)(*args)


@pytest.mark.parametrize("name", SIZED)
def test_size_keyword_alone_not_doubled_or_missing(name):
    _check_tensor(getattr(pe, name)(size=(3, 2)), (3, 2), F32)
    with pytest.raises(TypeError, match=f"{name}: missing the size"):
        getattr(pe, name)()
    with pytest.raises(TypeError, match=f"{name}: give the size as arguments or as size="):
        getattr(pe, name)(2, size=(2,))


# ---- full and eye against torch

@pytest.mark.parametrize("fill, dtype", [
    (3, None), (1.5, None), (np.int64(4), None), (np.float32(0.25), None), (1.5, "int64"),
    (-2.7, "int32"), (3, "float32"), (float("inf"), None), (float("nan"), None),
], ids=str)
def test_full_matches_torch(fill, dtype):
    """The dtype follows the fill (int -> int64, float -> float32) unless dtype= says."""
    ours = pe.full((2, 3), fill, dtype=dtype)
    torch_fill = fill.item() if isinstance(fill, np.generic) else fill
    theirs = torch.full((2, 3), torch_fill, dtype=None if dtype is None else getattr(torch, dtype))
    assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "")
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_full_errors():
    with pytest.raises(TypeError, match="full: size must be a tuple or list"):
        pe.full(3, 1.0)  # like torch: no varargs size before fill_value
    with pytest.raises(ValueError, match="full: size must be non-negative"):
        pe.full((-1,), 1.0)
    with pytest.raises(TypeError, match="full: a bool fill_value"):
        pe.full((2,), True)
    with pytest.raises(TypeError, match="full: fill_value must be a number, got str"):
        pe.full((2,), "1")
    with pytest.raises(ValueError, match="full: cannot fill an integer tensor with nan"):
        pe.full((2,), float("nan"), dtype="int64")


@pytest.mark.parametrize("args", [(3,), (2, 4), (4, 2), (0,), (1, 0)])
def test_eye_matches_torch(args):
    _check_tensor(pe.eye(*args), tuple(torch.eye(*args).shape), F32)
    np.testing.assert_array_equal(pe.eye(*args).numpy(), torch.eye(*args).numpy())
    np.testing.assert_array_equal(pe.eye(*args, dtype="int64").numpy(),
                                  torch.eye(*args, dtype=torch.int64).numpy())


def test_eye_errors():
    with pytest.raises(ValueError, match="eye: n must be non-negative, got -1"):
        pe.eye(-1)
    with pytest.raises(TypeError, match="eye: m must be an int, got float"):
        pe.eye(2, 2.0)


# ---- arange and linspace against torch

ARANGE_CASES = [(10,), (2, 10), (0, 10, 3), (10, -10, -3), (5, 5), (5.5,), (0, 1, 0.1),
                (1, 2.5, 0.5), (-3, 3, 0.7), (10, 0, -1), (0, 1, 1 / 3), (1e6, 1e6 + 5, 0.5),
                (-1.0, -2.0, -0.1), (0.1, 0.9, 0.2), (0, 100.0, 1.1), (np.int32(3),),
                (0, np.float32(1.5), 0.5)]


@pytest.mark.parametrize("args", ARANGE_CASES, ids=str)
def test_arange_matches_torch(args):
    """Same length and dtype exactly; float values within 2 ulp of the range's scale
    (torch's vectorized kernel rounds each SIMD block's base to float32 before
    adding i * step; pyengine rounds start + i * step once, from float64)."""
    torch_args = [v.item() if isinstance(v, np.generic) else v for v in args]
    ours, theirs = pe.arange(*args).numpy(), torch.arange(*torch_args).numpy()
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if ours.dtype == I64:
        np.testing.assert_array_equal(ours, theirs)
    else:
        _assert_close_to_scale(ours, theirs, max(abs(float(v)) for v in args[:2]))


@pytest.mark.parametrize("args, dtype", [((5,), "float32"), ((0.0, 6.0, 2), "int32"),
                                         ((1, 4), "float32"), ((-2.5, 4.9), "int64"),
                                         ((0, 10, 2), "int32")], ids=str)
def test_arange_with_dtype_matches_torch(args, dtype):
    """dtype= overrides the inferred dtype; for an int dtype the bounds truncate first."""
    ours = pe.arange(*args, dtype=dtype)
    theirs = torch.arange(*args, dtype=getattr(torch, dtype))
    _check_tensor(ours, tuple(theirs.shape), np.dtype(dtype))
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_arange_errors():
    with pytest.raises(ValueError, match="arange: step must be nonzero"):
        pe.arange(0, 5, 0)
    with pytest.raises(ValueError, match="arange: step must be nonzero"):
        pe.arange(0, 2.5, 0.5, dtype="int64")  # like torch, the step truncates to 0
    with pytest.raises(ValueError, match="arange: the range 5 -> 0 goes against the sign of step"):
        pe.arange(5, 0)
    with pytest.raises(ValueError, match="arange: end must be finite"):
        pe.arange(0, float("inf"))
    with pytest.raises(ValueError, match="arange: step must be finite"):
        pe.arange(0, 1, float("nan"))
    with pytest.raises(TypeError, match="arange: end must be a number, got str"):
        pe.arange(0, "5")
    with pytest.raises(TypeError, match="arange: end must be a number, got bool"):
        pe.arange(True)  # arange(end)
    with pytest.raises(TypeError, match="arange: start must be a number, got NoneType"):
        pe.arange(None, 3)


LINSPACE_CASES = [(0, 1, 5), (0, 1, 7), (-3, 7, 100), (1, 1, 1), (2, 3, 0), (0, 10, 4),
                  (1.5, -2.25, 33), (0, 1, 1000), (-1e3, 1e3, 17), (5, 5, 4)]


@pytest.mark.parametrize("args", LINSPACE_CASES, ids=str)
def test_linspace_matches_torch(args):
    """float32: exact ends, interior within 2 ulp of the range's scale of torch's
    (torch's SIMD blocks step from a block base, so its last bits depend on the
    CPU's vector width; pyengine uses the kernel's scalar formula throughout)."""
    ours, theirs = pe.linspace(*args), torch.linspace(*args)
    _check_tensor(ours, tuple(theirs.shape), F32)
    _assert_close_to_scale(ours.numpy(), theirs.numpy(), max(abs(args[0]), abs(args[1])))
    if args[2] >= 1:
        assert ours.numpy()[0] == np.float32(args[0]) and ours.numpy()[-1] == np.float32(
            args[0] if args[2] == 1 else args[1])


@pytest.mark.parametrize("args", [(0, 10, 4), (-5, 17, 9), (3, -3, 5), (0, 100, 1)], ids=str)
def test_linspace_int64_matches_torch(args):
    np.testing.assert_array_equal(pe.linspace(*args, dtype="int64").numpy(),
                                  torch.linspace(*args, dtype=torch.int64).numpy())


def test_linspace_errors():
    with pytest.raises(ValueError, match="linspace: steps must be non-negative, got -1"):
        pe.linspace(0, 1, -1)
    with pytest.raises(TypeError, match="linspace: steps must be an int, got float"):
        pe.linspace(0, 1, 5.0)
    with pytest.raises(TypeError, match="linspace: start must be a number"):
        pe.linspace(None, 1, 5)
    with pytest.raises(ValueError, match="linspace: an integer range needs finite ends"):
        pe.linspace(0, float("inf"), 3, dtype="int64")


# ---- random: seeding

RANDOM_CALLS = {
    "rand": lambda **kw: pe.rand(4, 5, **kw),
    "randn": lambda **kw: pe.randn((4, 5), **kw),
    "randint": lambda **kw: pe.randint(-3, 9, (4, 5), **kw),
    "rand_like": lambda **kw: pe.rand_like(pe.zeros(4, 5), **kw),
    "randn_like": lambda **kw: pe.randn_like(np.zeros((4, 5), F32), **kw),
}


@pytest.mark.parametrize("name", RANDOM_CALLS)
def test_manual_seed_reproduces_draws(name):
    call = RANDOM_CALLS[name]
    pe.manual_seed(123)
    first, second = call().numpy(), call().numpy()
    pe.manual_seed(123)
    np.testing.assert_array_equal(call().numpy(), first)
    np.testing.assert_array_equal(call().numpy(), second)
    assert not np.array_equal(first, second)
    pe.manual_seed(124)
    assert not np.array_equal(call().numpy(), first)


@pytest.mark.parametrize("name", RANDOM_CALLS)
def test_explicit_generator_leaves_the_default_alone(name):
    call = RANDOM_CALLS[name]
    pe.manual_seed(7)
    expected_default = call().numpy()
    pe.manual_seed(7)
    drawn = call(generator=np.random.default_rng(99)).numpy()
    np.testing.assert_array_equal(drawn, call(generator=np.random.default_rng(99)).numpy())
    np.testing.assert_array_equal(call().numpy(), expected_default)


@pytest.mark.parametrize("name", RANDOM_CALLS)
def test_generator_must_be_a_numpy_generator(name):
    with pytest.raises(TypeError, match=f"{name}: generator must be a numpy.random.Generator"):
        RANDOM_CALLS[name](generator=0)


# ---- random: values and statistics (n = 200,000: the tolerances are > 10 standard errors)

N = 200_000


def test_rand_is_uniform_on_zero_one():
    x = pe.rand(N, generator=np.random.default_rng(0)).numpy().astype(np.float64)
    assert x.min() >= 0.0 and x.max() < 1.0
    assert abs(x.mean() - 0.5) < 0.01 and abs(x.var() - 1 / 12) < 0.005
    counts, _ = np.histogram(x, bins=10, range=(0, 1))
    assert np.all(np.abs(counts / N - 0.1) < 0.01)


def test_randn_is_standard_normal():
    x = pe.randn(N, generator=np.random.default_rng(1)).numpy().astype(np.float64)
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1.0) < 0.02
    assert abs(np.mean(np.abs(x) < 1.0) - 0.6827) < 0.01  # one-sigma mass
    assert abs(np.mean(x ** 3)) < 0.05  # symmetric


@pytest.mark.parametrize("low, high", [(0, 10), (-5, 5), (100, 103), (0, 1)])
def test_randint_covers_low_to_high_exclusive(low, high):
    x = pe.randint(low, high, (N,), generator=np.random.default_rng(2))
    _check_tensor(x, (N,), I64)
    values = x.numpy()
    assert values.min() == low and values.max() == high - 1
    assert abs(values.mean() - (low + high - 1) / 2) < 0.02 * (high - low)
    counts = np.bincount(values - low, minlength=high - low)
    assert np.all(np.abs(counts / N - 1 / (high - low)) < 0.01)


def test_randint_argument_forms():
    _check_tensor(pe.randint(10, (3,)), (3,), I64)
    _check_tensor(pe.randint(10, size=(2, 2)), (2, 2), I64)
    _check_tensor(pe.randint(low=2, high=5, size=[4]), (4,), I64)
    _check_tensor(pe.randint(0, 5, (3,), dtype="int32"), (3,), I32)
    as_float = pe.randint(0, 5, (50,), dtype=pe.float32, requires_grad=True)
    assert as_float.dtype == F32 and np.all(as_float.numpy() == np.round(as_float.numpy()))


def test_randint_errors():
    with pytest.raises(TypeError, match="randint: size must be a tuple or list"):
        pe.randint(0, 10, 3)  # like torch: randint(low, high, size) needs a sequence
    with pytest.raises(ValueError, match="randint: high must be greater than low, got low=5, high"):
        pe.randint(5, 5, (2,))
    with pytest.raises(TypeError, match="randint: missing the size"):
        pe.randint(5)
    with pytest.raises(TypeError, match="randint: high must be an int, got float"):
        pe.randint(0, 5.0, (2,))
    with pytest.raises(ValueError, match="randint: .* does not fit int32"):
        pe.randint(0, 2**40, (2,), dtype="int32")


@pytest.mark.parametrize("call, name", [(lambda: pe.rand(2, dtype="int64"), "rand"),
                                        (lambda: pe.randn(2, dtype=np.int32), "randn"),
                                        (lambda: pe.rand_like(pe.tensor([1, 2])), "rand_like"),
                                        (lambda: pe.randn_like(pe.tensor([1, 2])), "randn_like")])
def test_random_floats_need_float32(call, name):
    with pytest.raises(TypeError, match=f"{name}: dtype int.. is not supported: {name} draws"):
        call()


# ---- *_like

@pytest.mark.parametrize("name", LIKE)
@pytest.mark.parametrize("source", [pe.zeros(2, 3), np.ones((4,), F32), pe.tensor(1.5)])
def test_like_takes_shape_and_dtype(name, source):
    _check_tensor(getattr(pe, name)(source), source.shape, F32)


@pytest.mark.parametrize("name", ["zeros_like", "ones_like", "empty_like"])
def test_like_keeps_or_overrides_int_dtypes(name):
    _check_tensor(getattr(pe, name)(pe.tensor([[1, 2]])), (1, 2), I64)
    _check_tensor(getattr(pe, name)(np.zeros(3, I32)), (3,), I32)
    _check_tensor(getattr(pe, name)(pe.zeros(3), dtype="int64"), (3,), I64)


def test_full_like():
    _check_tensor(pe.full_like(pe.zeros(2, 2), 7), (2, 2), F32)  # input's dtype wins, as in torch
    np.testing.assert_array_equal(pe.full_like(pe.tensor([1, 2]), 2.9).numpy(), [2, 2])
    with pytest.raises(TypeError, match="full_like: fill_value must be a number, got bool"):
        pe.full_like(pe.zeros(2), True)
    with pytest.raises(ValueError, match="full_like: cannot fill an integer tensor with inf"):
        pe.full_like(pe.tensor([1]), float("inf"))


@pytest.mark.parametrize("name", LIKE)
def test_like_input_errors(name):
    with pytest.raises(TypeError, match=f"{name}: input must be a Tensor or numpy array, got list"):
        getattr(pe, name)([1.0, 2.0])
    with pytest.raises(TypeError, match=f"{name}: dtype float64 is not supported"):
        getattr(pe, name)(np.zeros(2))


def test_factories_return_fresh_arrays():
    a, b = pe.zeros(3), pe.zeros(3)
    assert not np.shares_memory(a.numpy(), b.numpy())
    source = np.ones(3, F32)
    assert not np.shares_memory(pe.zeros_like(source).numpy(), source)


def test_exported_from_the_package():
    others = ["full", "randint", "arange", "linspace", "eye", "float32", "int64", "int32"]
    for name in SIZED + LIKE + others:
        assert name in pe.__all__ and hasattr(pe, name)
    assert pe.zeros(1).dtype is pe.float32 and pe.arange(3).dtype is pe.int64  # numpy dtypes
