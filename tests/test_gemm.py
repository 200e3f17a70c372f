"""The packed GEMM (csrc/matmul/matmul.cpp) at every ISA level, against float64 numpy.

Extends the matmul tests of test_kernels.py towards the GEMM's own structure: odd sizes that
straddle the micro-tiles (MR x NR: the wide 14x32 on AVX-512, 6x16 on AVX2, 6x8 on SSE; the
narrowest one covering N below that: 24x16, 12x32 or 8x48 on AVX-512, 12x8 on AVX2, 12x4 on
SSE), the row task (MC = 168), the packed blocks (K blocks of equal depth up to 768,
NC <= 4096), A packed by in-register transposes (K blocks of kWidth and a tail) or, for a
task of one B panel, read in place beside a packed last partial panel, and the
small-matrix path on one thread (M*N*K <= 64^3 multiply-adds; B packed whole, or read in place
when N is a multiple of NR); all four transpose cases; batches run across threads (small
matrices) or one after another (large ones), with a shared 2-D operand; the fused epilogue
(bias, ReLU, GELU, the pre-activation output); K = 0; thread-count independence; the FMA peak
probe; and the epilogue's argument errors.

Tolerances (u = 2^-24, the float32 unit roundoff). Every element of C = op(A) op(B) + bias is
a float32 sum of K products plus the bias. The probabilistic rounding-error bound (Higham and
Mary, 2019) puts its error below lambda * sqrt(K + 1) * u * |C|_abs with overwhelming
probability, where |C|_abs = |op(A)| |op(B)| + |bias| (computed in float64) and lambda is a
small constant; we use lambda = LAMBDA = 4. (Measured on these inputs: every check passes
with lambda = 1.5; at lambda = 1 only reductions of length <= 11 fail, where the rounding of
the final add counts most.) The gradients are checked the same way with their own reduction
length L in place of K (N for grad_a, M for grad_b, batch * M for grad_bias and for a shared
operand's gradient) and the given buffer's initial contents added to |.|_abs. ReLU is
1-Lipschitz and keeps the tolerance; GELU's slope is at most 1.13 and its vectorized form
(tanh through exp) errs by ~1e-7 |x|, so after a GELU the tolerance is
1.13 * tol + 1e-6 * (1 + |x|). The reference ISA accumulates in double and rounds once, so its
forward must match float64 within 1e-5 relative (plus 1e-12 |C|_abs for the order of the
double sums).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from helpers import F32, F64, randn, unbroadcast

import pyengine
from pyengine import kernels as K

U = 2.0 ** -24
LAMBDA = 4.0
GELU_SLOPE = 1.13
SMALL_WORK = 64 ** 3  # at or below this many multiply-adds the GEMM runs unpacked
TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["nn", "tn", "nt", "tt"]
LANES = {"reference": 1, "baseline": 4, "avx2": 8, "avx512": 16}


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def op(x, flag):
    return x.swapaxes(-1, -2) if flag else x


def gelu64(x):
    x = np.asarray(x, dtype=F64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf64(x):
    x = np.asarray(x, dtype=F64)
    return 0.5 * x * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


ACTIVATIONS = {"none": lambda x: x, "relu": lambda x: np.maximum(x, 0.0), "gelu": gelu64, "gelu_erf": gelu_erf64}


# ---------------------------------------------------------------- checking


def assert_within(actual, expected, tol, what):
    """|actual - expected| <= tol elementwise (NaN fails); reports the worst element."""
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), \
        f"{what}: shape {actual.shape} != {np.shape(expected)}"
    assert actual.dtype == F32, f"{what}: dtype {actual.dtype}"
    err = np.abs(actual.astype(F64) - expected)
    tol = np.broadcast_to(tol, err.shape)
    bad = ~(err <= tol)
    if bad.any():
        ratio = np.where(bad, np.where(np.isnan(err), np.inf, err / np.maximum(tol, 1e-300)), 0)
        i = np.unravel_index(np.argmax(ratio), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements out of tolerance; worst at {i}: "
            f"got {actual[i]!r}, want {expected[i]!r}, |err| {err[i]:.3g} > tol {tol[i]:.3g}")


def linear_tol(isa, ref, magnitude, length):
    if isa == "reference":
        return 1e-5 * np.abs(ref) + 1e-12 * magnitude
    return LAMBDA * math.sqrt(length + 1) * U * magnitude


def activation_tol(activation, tol, pre):
    if activation in ("gelu", "gelu_erf"):
        return GELU_SLOPE * tol + 1e-6 * (1.0 + np.abs(pre))
    return tol


def reference(a, b, bias, trans_a, trans_b):
    """float64 op(a) op(b) + bias and its magnitude |op(a)| |op(b)| + |bias|."""
    a64, b64 = op(a.astype(F64), trans_a), op(b.astype(F64), trans_b)
    c, magnitude = a64 @ b64, np.abs(a64) @ np.abs(b64)
    if bias is not None:
        c, magnitude = c + bias, magnitude + np.abs(bias.astype(F64))
    return c, magnitude


def operands(rng, m, n, k, trans_a, trans_b, batch_a=(), batch_b=(), with_bias=False):
    a = randn(rng, *batch_a, *((k, m) if trans_a else (m, k)))
    b = randn(rng, *batch_b, *((n, k) if trans_b else (k, n)))
    return a, b, (randn(rng, n) if with_bias else None)


def check_forward(isa, a, b, bias, trans_a, trans_b, activation="none", with_preact=False):
    """Runs K.matmul into NaN-filled buffers and checks out (and preact) against float64."""
    shape = K.matmul_shape(a.shape, b.shape, trans_a, trans_b)
    out = np.full(shape, np.nan, F32)
    preact = np.full(shape, np.nan, F32) if with_preact else None
    a0, b0 = a.copy(), b.copy()
    res = K.matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b, activation=activation, out=out,
                   preact=preact)
    assert res is out
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    k = a.shape[-2] if trans_a else a.shape[-1]
    pre, magnitude = reference(a, b, bias, trans_a, trans_b)
    tol = linear_tol(isa, pre, magnitude, k)
    what = f"{isa} a{a.shape} b{b.shape} trans=({trans_a},{trans_b}) bias={bias is not None}"
    if with_preact:
        assert_within(preact, pre, tol, f"{what} preact")
        if activation == "none":
            np.testing.assert_array_equal(out, preact)
        elif activation == "relu":
            np.testing.assert_array_equal(out, np.maximum(preact, F32(0)))
        else:
            assert_within(out, ACTIVATIONS[activation](preact), 1e-6 * (1.0 + np.abs(preact.astype(F64))),
                          f"{what} {activation}(preact)")
    assert_within(out, ACTIVATIONS[activation](pre), activation_tol(activation, tol, pre),
                  f"{what} {activation}")
    return out, preact


def check_backward(isa, rng, a, b, trans_a, trans_b, with_bias, tight=False, overwrite=False):
    """Runs K.matmul_backward into pre-filled buffers (tight: zero-filled, and the
    reference ISA's 1e-5 relative bound; overwrite: NaN-filled, with accumulate=False) and
    checks the three gradients against float64."""
    shape = K.matmul_shape(a.shape, b.shape, trans_a, trans_b)
    m, n = shape[-2:]
    g = randn(rng, *shape)
    fill = ((lambda s: np.full(s, np.nan, F32)) if overwrite else (lambda s: np.zeros(s, F32)) if tight
            else (lambda s: randn(rng, *s)))
    init = [fill(a.shape), fill(b.shape), fill((n,))]
    bufs = [x.copy() for x in init]
    res = K.matmul_backward(g, a, b, trans_a=trans_a, trans_b=trans_b, needs_bias=with_bias,
                            grad_a=bufs[0], grad_b=bufs[1],
                            grad_bias=bufs[2] if with_bias else None, accumulate=not overwrite)
    if overwrite:
        init = [np.zeros_like(x) for x in init[:2]] + [init[2] if not with_bias else np.zeros_like(init[2])]
    assert res[0] is bufs[0] and res[1] is bufs[1]
    assert res[2] is (bufs[2] if with_bias else None)

    g64, a64, b64 = g.astype(F64), op(a.astype(F64), trans_a), op(b.astype(F64), trans_b)
    batch = int(np.prod(shape[:-2]))
    shared_a, shared_b = a.ndim < len(shape), b.ndim < len(shape)  # 2-D, used by every matrix

    def grad_a(g_, b_):
        return unbroadcast(op(g_ @ b_.swapaxes(-1, -2), trans_a), a.shape)

    def grad_b(g_, a_):
        return unbroadcast(op(a_.swapaxes(-1, -2) @ g_, trans_b), b.shape)

    checks = [("grad_a", bufs[0], init[0], grad_a(g64, b64), grad_a(np.abs(g64), np.abs(b64)),
               n * (batch if shared_a else 1)),
              ("grad_b", bufs[1], init[1], grad_b(g64, a64), grad_b(np.abs(g64), np.abs(a64)),
               m * (batch if shared_b else 1))]
    if with_bias:
        checks.append(("grad_bias", bufs[2], init[2], g64.reshape(-1, n).sum(0),
                       np.abs(g64).reshape(-1, n).sum(0), batch * m))
    else:
        np.testing.assert_array_equal(bufs[2], init[2])  # NaN too: not written
    for name, got, start, grad, magnitude, length in checks:
        want = start.astype(F64) + grad
        if tight:
            tol = 1e-5 * np.abs(want) + 1e-12 * magnitude
        else:
            tol = LAMBDA * math.sqrt(length + 1) * U * (magnitude + np.abs(start))
        assert_within(got, want, tol, f"{isa} {name} a{a.shape} b{b.shape} "
                                      f"trans=({trans_a},{trans_b})")


# ---------------------------------------------------------------- random odd shapes


def _odd_shapes():
    around_tile = [  # M just off a multiple of MR (6 .. 24) or MC (168); N of NR (4 .. 64)
        (5, 7, 299), (7, 9, 131), (11, 15, 57), (13, 17, 3), (23, 31, 1), (25, 33, 33),
        (25, 65, 171), (23, 63, 183), (11, 97, 247), (13, 95, 213), (53, 17, 299),
        (7, 129, 291), (143, 15, 123), (145, 9, 201), (289, 7, 131), (73, 31, 117),
        (47, 47, 45), (9, 33, 61), (151, 41, 97), (25, 48, 300), (23, 16, 77), (25, 13, 900),
        (37, 64, 41), (29, 32, 63), (13, 128, 71),  # small, N a multiple of NR: B read in place
        (15, 65, 77), (27, 97, 131), (29, 290, 33), (167, 70, 90), (169, 66, 101),  # 14-row tile
        (173, 255, 150), (181, 129, 700), (97, 200, 1300),  # 6 x 64 tile: panels, K blocks
    ]
    around_small = [  # M*N*K just below (small path) and just above (packed) 64^3
        (63, 63, 65), (63, 63, 67), (129, 33, 61), (129, 33, 63), (3, 297, 293),
        (3, 297, 295), (297, 5, 175), (297, 5, 177), (65, 61, 65), (65, 63, 65),
    ]
    ones = [(1, 1, 1), (1, 1, 299), (1, 297, 1), (299, 1, 1), (1, 257, 255), (255, 1, 257),
            (173, 1, 199)]
    rng = np.random.default_rng(20240611)
    drawn = [tuple(int(v) for v in 2 * rng.integers(0, 150, size=3) + 1) for _ in range(10)]
    return around_tile + around_small + ones + drawn


ODD_SHAPES = _odd_shapes()
assert sum(m * n * k <= SMALL_WORK for m, n, k in ODD_SHAPES) >= 10
assert sum(m * n * k > SMALL_WORK for m, n, k in ODD_SHAPES) >= 10


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("m,n,k", ODD_SHAPES, ids=["x".join(map(str, s)) for s in ODD_SHAPES])
def test_odd_shapes(isa, m, n, k, trans_a, trans_b):
    with_bias = (m + n + k + trans_a + 2 * trans_b) % 4 < 2  # both ways across the list
    rng = rng_for("odd", m, n, k, trans_a, trans_b)
    a, b, bias = operands(rng, m, n, k, trans_a, trans_b, with_bias=with_bias)
    check_forward(isa, a, b, bias, trans_a, trans_b)
    check_backward(isa, rng, a, b, trans_a, trans_b, with_bias)


# ---------------------------------------------------------------- batches

BATCH_SIZES = {  # per matrix: small path; packed, batch across threads; packed, one at a time
    "small": (7, 9, 11), "across": (67, 97, 61), "serial": (131, 129, 127)}
BATCH_LAYOUTS = {"batched": ((2, 3), (2, 3)), "shared_a": ((), (3,)), "shared_b": ((3,), ())}


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("layout", list(BATCH_LAYOUTS))
@pytest.mark.parametrize("size", list(BATCH_SIZES))
def test_batched(isa, size, layout, trans_a, trans_b):
    m, n, k = BATCH_SIZES[size]
    batch_a, batch_b = BATCH_LAYOUTS[layout]
    rng = rng_for("batched", size, layout, trans_a, trans_b)
    a, b, bias = operands(rng, m, n, k, trans_a, trans_b, batch_a, batch_b, with_bias=True)
    out, _ = check_forward(isa, a, b, bias, trans_a, trans_b, "relu", with_preact=True)
    assert out.shape == (*(batch_a or batch_b), m, n)
    check_backward(isa, rng, a, b, trans_a, trans_b, with_bias=True)


# ---------------------------------------------------------------- overwriting gradients

OVERWRITE_CASES = {  # (batch_a, batch_b, m, n, k): each path of the GEMM, and the batch layouts
    "small": ((), (), 9, 17, 33), "packed": ((), (), 37, 45, 203),
    "k_blocks": ((), (), 200, 300, 1300), "few_rows_slabs": ((), (), 3, 129, 1025),
    "streams_b": ((), (), 17, 1031, 1029), "batched": ((2, 3), (2, 3), 13, 37, 71),
    "shared_a": ((), (3,), 13, 37, 71), "shared_b": ((3,), (), 13, 37, 71)}


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("size", list(OVERWRITE_CASES))
def test_backward_overwrites(isa, size, trans_a, trans_b):
    """accumulate=False writes each gradient whole over NaN-filled buffers (a shared operand's
    still summed over the batch), within the same bounds as accumulating."""
    batch_a, batch_b, m, n, k = OVERWRITE_CASES[size]
    rng = rng_for("overwrite", size, trans_a, trans_b)
    a, b, _ = operands(rng, m, n, k, trans_a, trans_b, batch_a, batch_b)
    check_backward(isa, rng, a, b, trans_a, trans_b, with_bias=True, overwrite=True)
    check_backward(isa, rng, a, b, trans_a, trans_b, with_bias=False, overwrite=True)


def test_backward_overwrite_of_x_times_x(isa):
    """x @ x with one gradient buffer for both operands: accumulate=False overwrites it with da,
    then adds db (the product's gradient with respect to x)."""
    rng = rng_for("x @ x")
    x, g = randn(rng, 23, 23), randn(rng, 23, 23)
    both = np.full((23, 23), np.nan, F32)
    K.matmul_backward(g, x, x, grad_a=both, grad_b=both, accumulate=False)
    x64, g64 = x.astype(F64), g.astype(F64)
    want = g64 @ x64.T + x64.T @ g64
    tol = LAMBDA * math.sqrt(24) * U * (np.abs(g64) @ np.abs(x64).T + np.abs(x64).T @ np.abs(g64))
    assert_within(both, want, 2 * tol, f"{isa} x @ x")


# ---------------------------------------------------------------- the fused epilogue

EPILOGUE_SIZES = {  # small path, packed with one K block, packed over several K blocks, batched
    "small": ((), (), 9, 17, 33), "packed": ((), (), 37, 45, 203),
    "k_blocks": ((), (), 25, 35, 1601), "batched": ((2,), (), 19, 70, 300)}


@pytest.mark.parametrize("with_preact", [False, True], ids=["nopreact", "preact"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_erf"])
@pytest.mark.parametrize("size", list(EPILOGUE_SIZES))
def test_epilogue(isa, size, activation, with_bias, with_preact):
    batch_a, batch_b, m, n, k = EPILOGUE_SIZES[size]
    trans_a, trans_b = TRANS[zlib.crc32(f"{size}{activation}".encode()) % 4]
    rng = rng_for("epilogue", size, activation, with_bias)
    a, b, bias = operands(rng, m, n, k, trans_a, trans_b, batch_a, batch_b, with_bias)
    if with_bias:
        bias *= F32(3)  # shift many pre-activations across the kinks
    out, _ = check_forward(isa, a, b, bias, trans_a, trans_b, activation, with_preact)
    # The same call without (or with) preact gives the same output, bit for bit.
    other = K.matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b, activation=activation,
                     preact=None if with_preact else np.empty_like(out))
    np.testing.assert_array_equal(other, out)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_erf"])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_k_zero(isa, with_bias, trans_a, trans_b, activation):
    """K = 0: out = activation(bias or 0), preact = bias or 0; backward adds only grad_bias."""
    rng = rng_for("k0", with_bias, trans_a, trans_b, activation)
    for batch_a, batch_b, m, n in [((), (), 70, 300), ((2,), (), 5, 33), ((), (3,), 13, 9)]:
        a, b, bias = operands(rng, m, n, 0, trans_a, trans_b, batch_a, batch_b, with_bias)
        bias = bias * F32(2) if with_bias else None
        shape = (*(batch_a or batch_b), m, n)
        out, preact = np.full(shape, np.nan, F32), np.full(shape, np.nan, F32)
        K.matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b, activation=activation, out=out,
                 preact=preact)
        pre = np.broadcast_to(bias if with_bias else np.zeros(n, F32), shape)
        np.testing.assert_array_equal(preact, pre)
        want = ACTIVATIONS[activation](pre.astype(F64))
        assert_within(out, want, activation_tol(activation, 0.0, pre), f"{isa} K=0 {shape}")
        check_backward(isa, rng, a, b, trans_a, trans_b, with_bias)


# ---------------------------------------------------------------- large problems


def test_large_crossing_blocks(isa):
    """Crosses K blocks (<= 768 deep), the row tasks (MC) and the column tasks; and NC (<= 4096)."""
    rng = rng_for("large")
    a, b, bias = operands(rng, 200, 1100, 1300, False, True, with_bias=True)
    check_forward(isa, a, b, bias, False, True, "gelu", with_preact=True)
    check_backward(isa, rng, a, b, False, True, with_bias=True)
    a, b, bias = operands(rng, 13, 4111, 521, True, False, with_bias=True)
    check_forward(isa, a, b, bias, True, False, "relu", with_preact=True)


FEW_ROWS_LARGE_B = (9, 16, 17, 32, 33)  # 9..32 (16 with B transposed) stream a large B


@pytest.mark.parametrize("trans_b", [False, True], ids=["n", "t"])
@pytest.mark.parametrize("m", FEW_ROWS_LARGE_B)
def test_few_rows_large_b(isa, m, trans_b):
    """A few rows of C over a B of at least 2^20 floats stream B once (matmul.cpp's streams_b)
    instead of packing it, up to 32 rows (16 with B transposed); one more row packs again."""
    rng = rng_for("few rows", m, trans_b)
    a, b, bias = operands(rng, m, 1031, 1029, m % 2 == 1, trans_b, with_bias=True)
    check_forward(isa, a, b, bias, m % 2 == 1, trans_b, "gelu", with_preact=True)
    check_backward(isa, rng, a, b, m % 2 == 1, trans_b, with_bias=True)


# (m, n, k): up to 4 rows of C over rows of B up to 8192 floats split K into slabs of 64 rows
# or more (at most 16), summed in slab order; one slab, more rows or longer rows of B do not
SLAB_CASES = [(1, 333, 700), (3, 129, 1025), (4, 48, 130), (1, 8193, 200), (5, 300, 300), (2, 50, 64)]


@pytest.mark.parametrize("m,n,k", SLAB_CASES, ids=lambda v: str(v))
def test_few_rows_split_into_slabs_of_k(isa, m, n, k):
    rng = rng_for("slabs", m, n, k)
    a, b, bias = operands(rng, m, n, k, False, False, with_bias=True)
    check_forward(isa, a, b, bias, False, False, "gelu", with_preact=True)
    a, b_t, _ = operands(rng, m, n, k, False, True)
    check_backward(isa, rng, a, b_t, False, True, with_bias=True)  # grad_a += g . b_t: accumulates


# ---------------------------------------------------------------- the reference ISA


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
def test_reference_isa_is_float64_rounded(trans_a, trans_b):
    """The reference kernels sum in double and round once: float64 within 1e-5 relative
    (forward everywhere, including check_forward's calls in the tests above; backward here,
    into zeroed buffers and without shared operands, where each element is rounded once)."""
    with pyengine.use_isa("reference"):
        rng = rng_for("reference", trans_a, trans_b)
        for batch, (m, n, k) in [((), (1, 1, 1)), ((), (37, 29, 301)), ((2, 2), (9, 70, 65))]:
            a, b, bias = operands(rng, m, n, k, trans_a, trans_b, batch, batch, with_bias=True)
            check_forward("reference", a, b, bias, trans_a, trans_b, "relu", with_preact=True)
            check_backward("reference", rng, a, b, trans_a, trans_b, True, tight=True)


# ---------------------------------------------------------------- threads


def test_thread_count_independent(isa, restore_threads):
    """Each element's sum runs in the same order on any number of threads: bitwise equal."""
    rng = rng_for("threads")
    cases = [  # (a, b, bias, trans_a, trans_b, activation)
        (*operands(rng, 150, 300, 600, False, False, with_bias=True), False, False, "gelu"),
        (*operands(rng, 67, 97, 61, True, True, (6,), (), with_bias=True), True, True, "relu"),
        (*operands(rng, 131, 129, 127, False, True, (), (3,), with_bias=True), False, True, "none"),
        (*operands(rng, 40, 50, 60, True, False, (4,), (4,), with_bias=True), True, False, "none"),
        (*operands(rng, 3, 333, 700, False, False, with_bias=True), False, False, "gelu"),  # K slabs
        (*operands(rng, 2, 700, 333, False, True, with_bias=True), False, True, "none"),  # grad_a slabs
    ]
    grads = [randn(rng, *K.matmul_shape(a.shape, b.shape, ta, tb)) for a, b, _, ta, tb, _ in cases]
    inits = [(randn(rng, *a.shape), randn(rng, *b.shape), randn(rng, b.shape[-2 if tb else -1]))
             for a, b, _, _, tb, _ in cases]

    def run_all(threads):
        pyengine.set_num_threads(threads)
        assert pyengine.get_num_threads() == threads
        results = []
        for (a, b, bias, ta, tb, act), g, init in zip(cases, grads, inits):
            preact = np.empty(K.matmul_shape(a.shape, b.shape, ta, tb), F32)
            out = K.matmul(a, b, bias, trans_a=ta, trans_b=tb, activation=act, preact=preact)
            bufs = [x.copy() for x in init]
            K.matmul_backward(g, a, b, trans_a=ta, trans_b=tb, needs_bias=True,
                              grad_a=bufs[0], grad_b=bufs[1], grad_bias=bufs[2])
            results.append([out, preact, *bufs])
        return results

    one, two = run_all(1), run_all(2)
    for i, (r1, r2) in enumerate(zip(one, two)):
        for name, x1, x2 in zip(["out", "preact", "grad_a", "grad_b", "grad_bias"], r1, r2):
            np.testing.assert_array_equal(x1, x2, err_msg=f"{isa} case {i} {name}: 1 vs 2 threads")


# ---------------------------------------------------------------- the FMA peak probe


def test_fma_probe(isa):
    """flops = iterations * c, c > 0 a multiple of 2 * lanes (one FMA is two flops per lane);
    c grows with the threads, except on the reference ISA (one scalar thread, by design)."""
    per_iteration = K.fma_probe(1, 1)
    assert isinstance(per_iteration, int) and per_iteration > 0
    assert per_iteration % (2 * LANES[isa]) == 0, (isa, per_iteration)
    assert K.fma_probe(0, 1) == 0
    for iterations in (7, 1000, 123457):
        assert K.fma_probe(iterations, 1) == iterations * per_iteration
    for threads in (2, 3):
        expected = 1 if isa == "reference" else threads
        assert K.fma_probe(1000, threads) == expected * 1000 * per_iteration, (isa, threads)


@pytest.mark.parametrize("iterations,threads", [(-1, 1), (10, 0), (10, -2)])
def test_fma_probe_bad_arguments(iterations, threads):
    with pytest.raises(ValueError, match="fma_probe"):
        K.fma_probe(iterations, threads)


# ---------------------------------------------------------------- epilogue argument errors


@pytest.mark.parametrize("name", ["tanh", "", "RELU", "gelu_exact"])
def test_bad_activation(name):
    a, b = np.ones((3, 4), F32), np.ones((4, 5), F32)
    with pytest.raises(ValueError, match=r"matmul_forward.*activation") as info:
        K.matmul(a, b, activation=name)
    assert f"'{name}'" in str(info.value)


@pytest.mark.parametrize("a_shape,b_shape,preact_shape", [
    ((3, 4), (4, 5), (5, 3)),
    ((3, 4), (4, 5), (3, 5, 1)),
    ((2, 3, 4), (4, 5), (3, 5)),
    ((3, 4), (2, 4, 5), (1, 3, 5)),
    ((3, 0), (0, 5), (15,)),
])
def test_preact_wrong_shape(a_shape, b_shape, preact_shape):
    a, b = np.ones(a_shape, F32), np.ones(b_shape, F32)
    out = np.zeros(K.matmul_shape(a_shape, b_shape), F32)
    with pytest.raises(ValueError, match=r"matmul_forward.*preact"):
        K.matmul(a, b, activation="relu", out=out, preact=np.zeros(preact_shape, F32))
    assert not out.any()  # nothing written


def test_preact_bad_buffers():
    a, b = np.ones((3, 4), F32), np.ones((4, 5), F32)
    with pytest.raises(TypeError, match="preact"):
        K.matmul(a, b, activation="gelu", preact=np.zeros((3, 5), F64))
    read_only = np.zeros((3, 5), F32)
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="preact"):
        K.matmul(a, b, activation="gelu", preact=read_only)
    with pytest.raises(ValueError, match="overlaps"):
        out = np.zeros((3, 5), F32)
        K.matmul(a, b, activation="gelu", out=out, preact=out)
    buffer = np.ones(40, F32)
    with pytest.raises(ValueError, match="overlaps"):
        K.matmul(buffer[:12].reshape(3, 4), b, activation="gelu", preact=buffer[5:20].reshape(3, 5))
