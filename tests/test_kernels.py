"""Every kernel at every ISA level: forward and backward against float64 numpy references and
PyTorch autograd (when installed), gradient accumulation, and finite differences.

The ``*_case`` factories (tests/reference_cases.py) return the keyword arguments of
``helpers.helper_test_op`` for one op and problem; the tests run them with explicit tolerances, and
``test_finite_differences`` runs ``FD_CASES``, small problems through the same factories, the
convolution's included.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F32, F64, assert_close, check_finite_differences, helper_test_op, randn, torch
from op_cases import UNARY
from reference_cases import (
    BINARY,
    FD_CASES,
    SCALAR_CASES,
    TRANS,
    _np_log_softmax,
    _np_softmax,
    add_layer_norm_case,
    add_relu_case,
    binary_case,
    clamp_case,
    cross_entropy_case,
    layer_norm_case,
    make_targets,
    matmul_case,
    matmul_tol,
    nll_case,
    reduce_case,
    rng_for,
    scalar_case,
    softmax_case,
    unary_case,
)

import pyengine
from pyengine import _C, registry
from pyengine import kernels as K

pytestmark = pytest.mark.usefixtures("isa")  # every test runs once per available ISA level

if torch is not None:
    pass






# ---------------------------------------------------------------- matmul








_MM_RNG = np.random.default_rng(2024)
MATMUL_SIZES = [(1, 1, 1), (1, 1, 37), (1, 45, 1), (63, 1, 1)] + [
    tuple(int(v) for v in 2 * _MM_RNG.integers(0, 150, size=3) + 1) for _ in range(4)
] + [(299, 131, 257), (7, 1031, 401)]


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=["nn", "tn", "nt", "tt"])
@pytest.mark.parametrize("m,n,k", MATMUL_SIZES)
def test_matmul(m, n, k, trans_a, trans_b, with_bias):
    case = matmul_case(rng_for(m, n, k, trans_a, trans_b), m, n, k, trans_a, trans_b, with_bias)
    tol = matmul_tol(m, n, k)
    helper_test_op(**case, **tol, grad_atol=tol["atol"], grad_rtol=tol["rtol"])


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=["nn", "tn", "nt", "tt"])
@pytest.mark.parametrize("batch_a,batch_b", [((2, 3), (2, 3)), ((4,), ()), ((), (3,))],
                         ids=["batched", "shared_b", "shared_a"])
def test_matmul_batched(batch_a, batch_b, trans_a, trans_b, with_bias):
    m, n, k = 13, 37, 71
    case = matmul_case(rng_for(batch_a, batch_b, trans_a, trans_b), m, n, k, trans_a, trans_b,
                       with_bias, batch_a, batch_b)
    batch = int(np.prod(batch_a or batch_b))
    out, _ = helper_test_op(**case, **matmul_tol(m, n, k, batch),
                            grad_atol=matmul_tol(m, n, k, batch)["atol"], grad_rtol=1e-4)
    assert out[0].shape == (*(batch_a or batch_b), m, n)


# ---------------------------------------------------------------- broadcasting binary ops





SHAPE_PAIRS = [
    ((3, 4), (3, 4)),          # same shape
    ((3, 4), (1,)),            # scalar-like
    ((1,), (5,)),              # scalar-like on the left
    ((2, 3, 4), (4,)),         # leading broadcast
    ((4,), (2, 3, 4)),         # leading broadcast on the left
    ((2, 3, 4), (2, 1, 4)),    # middle broadcast
    ((2, 1, 4), (1, 3, 1)),    # both broadcast
    ((5, 1), (1, 6)),          # both broadcast, outer product
    ((), (2, 3)),              # 0-d operand
    ((256, 300), (300,)),      # large: threaded forward
    ((256, 1), (256, 300)),    # large, broadcast along the inner run
]


@pytest.mark.parametrize("shape_a,shape_b", SHAPE_PAIRS, ids=str)
@pytest.mark.parametrize("op", list(BINARY))
def test_binary(op, shape_a, shape_b):
    case = binary_case(rng_for(op, shape_a, shape_b), op, shape_a, shape_b)
    out_size = int(np.prod(np.broadcast_shapes(shape_a, shape_b)))
    summed = out_size / max(1, min(int(np.prod(shape_a)), int(np.prod(shape_b))))
    out, _ = helper_test_op(**case, atol=1e-6, rtol=1e-6, grad_atol=2e-6 * summed + 1e-6,
                            grad_rtol=1e-5)
    assert out[0].shape == np.broadcast_shapes(shape_a, shape_b)


# ---------------------------------------------------------------- scalar ops





@pytest.mark.parametrize("shape", [(5, 7), (256, 300)], ids=["small", "large"])
@pytest.mark.parametrize("op,s", SCALAR_CASES, ids=[f"{o}-{s}" for o, s in SCALAR_CASES])
def test_scalar(op, s, shape):
    case = scalar_case(rng_for(op, s, shape), op, s, shape)
    helper_test_op(**case, atol=1e-6, rtol=2e-6, grad_atol=1e-6, grad_rtol=4e-6)


# ---------------------------------------------------------------- activations



@pytest.mark.parametrize("shape", [(5, 7), (256, 300)], ids=["small", "large"])
@pytest.mark.parametrize("op", list(UNARY))
def test_unary(op, shape):
    case = unary_case(rng_for(op, shape), op, shape)
    helper_test_op(**case, atol=1e-6, rtol=2e-6, grad_atol=2e-6, grad_rtol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7), (256, 300)], ids=["small", "large"])
def test_add_relu(shape):
    """relu(a + b) in one pass, at every ISA level against float64 numpy and torch; the same bits
    as add then relu, forward and backward (large: threaded chunks)."""
    case = add_relu_case(rng_for("add_relu", shape), shape)
    (y,), grads = helper_test_op(**case, atol=1e-6, rtol=2e-6)
    a, b = case["inputs"]
    np.testing.assert_array_equal(y, K.relu(K.add(a, b)))
    g = rng_for("add_relu-g", shape).standard_normal(shape).astype(np.float32)
    ga, gb = K.add_relu_backward(g, y)
    np.testing.assert_array_equal(ga, K.relu_backward(g, y))
    np.testing.assert_array_equal(gb, ga)
    twice = K.add_relu_backward(g, y, grad_a=np.ones(shape, np.float32), needs_b=False)[0]
    np.testing.assert_array_equal(twice, 1 + ga)  # accumulates


def test_add_relu_nan_and_aliased_gradients():
    """NaN stays NaN and passes the gradient (as relu); x + x gives both gradients into one buffer."""
    a = np.array([np.nan, -1, 1, 0, -np.inf, np.inf, 2], np.float32)
    b = np.array([1, 0.5, -2, 0, 1, -1, -2], np.float32)
    y = K.add_relu(a, b)
    np.testing.assert_array_equal(y, [np.nan, 0, 0, 0, 0, np.inf, 0])
    dy = np.arange(1, 8, dtype=np.float32)
    ga = K.add_relu_backward(dy, y, needs_b=False)[0]
    np.testing.assert_array_equal(ga, [1, 0, 0, 0, 0, 6, 0])
    both = np.zeros(7, np.float32)
    _C.add_relu_backward(both, both, dy, y)
    np.testing.assert_array_equal(both, 2 * ga)


CLAMPS = [(-0.5, 0.75), (0.0, float("inf")), (-float("inf"), -0.25), (0.3, 0.3)]




@pytest.mark.parametrize("lo,hi", CLAMPS)
def test_clamp(lo, hi):
    helper_test_op(**clamp_case(rng_for("clamp", lo, hi), (37, 29), lo, hi), atol=3e-8, rtol=0,
                   grad_atol=1e-7, grad_rtol=0)


def test_clamp_keeps_nan_and_checks_bounds():
    y = K.clamp(np.array([np.nan, -3.0, 3.0], F32), min=-1.0, max=1.0)
    assert np.isnan(y[0]) and y[1] == -1.0 and y[2] == 1.0
    with pytest.raises(ValueError, match="clamp_forward: min = 2.*above max"):
        K.clamp(np.ones(3, F32), min=2.0, max=1.0)


def test_relu_at_zero():
    x = np.array([-1.0, -0.0, 0.0, 1e-30, 2.0], dtype=F32)
    np.testing.assert_array_equal(K.relu(x), np.array([0, 0, 0, 1e-30, 2], F32))
    np.testing.assert_array_equal(K.relu_backward(np.ones(5, F32), x), [0, 0, 0, 1, 1])


def test_gelu_matches_torch_tanh_approximation():
    torch_ = pytest.importorskip("torch")
    x = np.linspace(-8, 8, 1001, dtype=F32)
    ref = torch_.nn.functional.gelu(torch_.from_numpy(x.astype(F64)), approximate="tanh").numpy()
    assert_close(K.gelu(x), ref, atol=1e-6, rtol=1e-6)
    assert abs(K.gelu(np.array([1.0], F32))[0] - 0.841192) < 1e-5  # tanh form, not erf (0.841345)


def test_exp_extremes():
    x = np.array([-np.inf, -1000, -100, -87.0, -20, 0, 1, 20, 80, 88, 100, 1000, np.inf, np.nan],
                 dtype=F32)
    y = K.exp(x)
    assert np.all(y[:3] < 1e-40) and np.all(y[:3] >= 0)  # exp(-100) = 3.7e-44 or flushed to 0
    assert_close(y[3:10], np.exp(x[3:10].astype(F64)), atol=0, rtol=1e-6)
    assert np.isfinite(y[9]) and y[9] > 1.6e38  # exp(88) = 1.65e38 is finite in float32
    assert np.all(np.isposinf(y[10:13]))
    assert np.isnan(y[13])


def test_exp_near_float32_overflow(isa):
    # exp(x) < FLT_MAX = 3.40e38 up to x = 88.7228; numpy and torch return finite values.
    x = np.array([88.4, 88.5, 88.7], dtype=F32)
    assert_close(K.exp(x), np.exp(x.astype(F64)), atol=0, rtol=1e-6)


# ---------------------------------------------------------------- reductions




AXES = [None, 0, 2, -1, -3, (0, 1), (1, 3), (0, 2, 3), (-1, -3), (3, 0), (0, 1, 2, 3)]


@pytest.mark.parametrize("keepdims", [False, True], ids=["drop", "keep"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_reduce(op, axis, keepdims):
    shape = (3, 4, 5, 6)
    case = reduce_case(rng_for(op, axis, keepdims), op, shape, axis, keepdims)
    out, _ = helper_test_op(**case, atol=1e-5, rtol=1e-5, grad_atol=1e-6, grad_rtol=1e-6)
    assert out[0].shape == np.sum(np.zeros(shape), axis=axis, keepdims=keepdims).shape


@pytest.mark.parametrize("shape,axis", [((64, 33, 40), 1), ((64, 33, 40), -1),
                                        ((64, 33, 40), (0, 2)), ((64, 33, 40), None),
                                        ((3, 7, 1100), 1)], ids=str)  # inner run > 1024
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_reduce_large(op, shape, axis):
    case = reduce_case(rng_for(op, shape, axis), op, shape, axis, False)
    helper_test_op(**case, atol=2e-4, rtol=1e-5, grad_atol=1e-6, grad_rtol=1e-6)


# ---------------------------------------------------------------- softmax / log-softmax








SOFTMAX_SHAPES = [(1, 1), (1, 7), (3, 5), (4, 33), (2, 3, 17), (64, 768)]


@pytest.mark.parametrize("magnitude", ["unit", "large"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, shape, magnitude):
    # "large": logits up to ~+-200, where exp overflows / underflows unless the row max is
    # subtracted first (large constant offsets: test_log_softmax_large_offset_precision).
    scale = 1.0 if magnitude == "unit" else 40.0
    x = randn(rng_for(op, shape, magnitude), *shape, scale=scale)
    # log_softmax's float32 outputs carry a few ulps of max|x| (its row shift is a float32).
    atol = 1e-6 if op == "softmax" else 1e-6 + 4 * float(np.spacing(np.abs(x).max()))
    out, _ = helper_test_op(**softmax_case(op, x), atol=atol, rtol=1e-5, grad_atol=1e-5,
                            grad_rtol=1e-4)
    assert np.all(np.isfinite(out[0]))
    if op == "softmax":
        assert_close(out[0].sum(-1), np.ones(shape[:-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_extreme_logits(op):
    rng = rng_for(op)
    x = randn(rng, 4, 37)
    x[0] *= 1e4                      # huge spread: exp(x) over- and underflows everywhere
    x[1, :3] = [-1e30, 1e30, 0.0]    # far beyond exp's range
    x[2] = x[2] * 50 - 200           # all very negative: exp(x) underflows to 0 everywhere
    x[3] = 7.0                       # all equal
    y = getattr(K, op)(x)
    ref = (_np_softmax if op == "softmax" else _np_log_softmax)(x.astype(F64))
    assert np.all(np.isfinite(y))
    assert_close(y, ref, atol=1e-5, rtol=1e-6)
    grad = getattr(K, op + "_backward")(randn(rng, 4, 37), y)
    assert np.all(np.isfinite(grad))


LARGE_OFFSETS = [("log_softmax", 1e4), ("log_softmax", 1e6), ("log_softmax", 3e38),
                 ("cross_entropy", 1e5), ("cross_entropy", 1e6)]


@pytest.mark.parametrize("op,offset", LARGE_OFFSETS, ids=[f"{o}-{v:g}" for o, v in LARGE_OFFSETS])
def test_log_softmax_large_offset_precision(op, offset, isa):
    """log_softmax(x + c) == log_softmax(x): a stable float32 implementation, computing
    (x - max) - log(sum(exp(x - max))), stays within ~1e-5 of the exact result for any
    offset c (PyTorch's float32 log_softmax / cross_entropy do: 1.5e-5 at c = 1e6)."""
    rng = rng_for(op, offset)
    x = randn(rng, 16, 100, scale=5.0)
    x = (x + F32(offset)) if offset < 1e38 else np.full((16, 100), offset, F32) + x * F32(1e31)
    z = x.astype(F64) - x.max(-1, keepdims=True)
    ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
    if op == "log_softmax":
        assert_close(K.log_softmax(x), ref, atol=5e-5, rtol=1e-6)
    else:
        target = rng.integers(0, 100, size=16)
        assert_close(K.cross_entropy(x, target), -ref[np.arange(16), target].mean(), atol=5e-5,
                     rtol=1e-6)


# ---------------------------------------------------------------- layer norm




@pytest.mark.parametrize("cols", [1, 5, 33, 768])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_layer_norm(rows, cols):
    case = layer_norm_case(rng_for(rows, cols), (rows, cols))
    out, _ = helper_test_op(**case, atol=2e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)
    y, mean, rstd = out
    assert y.shape == (rows, cols) and mean.shape == (rows,) and rstd.shape == (rows,)


def test_layer_norm_batched_rows():
    case = layer_norm_case(rng_for("3d"), (2, 3, 33), eps=1e-3)
    out, _ = helper_test_op(**case, atol=2e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)
    assert out[1].shape == (2, 3)


@pytest.mark.parametrize("cols", [1, 5, 33, 384])
@pytest.mark.parametrize("rows", [1, 7, 128])
def test_add_layer_norm(rows, cols):
    """Against float64 numpy and torch at x = a + b, and the same bits as the add and then layer_norm."""
    case = add_layer_norm_case(rng_for("add", rows, cols), (rows, cols))
    out, grads = helper_test_op(**case, atol=2e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)
    a, b, w, bias = case["inputs"]
    for got, unfused in zip(out, K.layer_norm(a + b, w, bias)):
        np.testing.assert_array_equal(got, unfused)
    gy = rng_for("add-gy", rows, cols).standard_normal((rows, cols)).astype(F32)
    dx, dw, dbias = K.layer_norm_backward(gy, a + b, w, out[1], out[2])
    da, db, dw2, dbias2 = K.add_layer_norm_backward(gy, a, b, w, out[1], out[2])
    for got, want in ((da, dx), (db, dx), (dw2, dw), (dbias2, dbias)):
        np.testing.assert_array_equal(got, want)


def test_add_layer_norm_backward_one_gradient():
    """Only da asked for: it gets dx (written straight into it); one buffer for da and db raises."""
    case = add_layer_norm_case(rng_for("add-one"), (9, 40))
    a, b, w, bias = case["inputs"]
    y, mean, rstd = K.add_layer_norm(a, b, w, bias)
    gy = rng_for("add-one-gy").standard_normal(y.shape).astype(F32)
    dx = K.layer_norm_backward(gy, a + b, w, mean, rstd, needs_weight=False, needs_bias=False)[0]
    for needs_a in (True, False):
        grads = K.add_layer_norm_backward(gy, a, b, w, mean, rstd, needs_a=needs_a, needs_b=not needs_a,
                                          needs_weight=False, needs_bias=False)
        assert sum(g is None for g in grads) == 3
        np.testing.assert_array_equal(grads[0 if needs_a else 1], dx)
    shared = np.ones_like(a)
    with pytest.raises(ValueError, match="add_layer_norm_backward.*overlaps"):
        K.add_layer_norm_backward(gy, a, b, w, mean, rstd, grad_a=shared, grad_b=shared)


# ---------------------------------------------------------------- cross-entropy






@pytest.mark.parametrize("ignore", ["none", "some", "all"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("dtype", [np.int64, np.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("rows,classes", [(1, 1), (1, 5), (7, 5), (64, 33), (48, 1000)], ids=str)
def test_cross_entropy(rows, classes, dtype, ignore_index, ignore):
    rng = rng_for(rows, classes, dtype, ignore_index, ignore)
    target = make_targets(rng, rows, classes, dtype, ignore, ignore_index)
    logits = randn(rng, rows, classes, scale=2.0)
    out, grads = helper_test_op(**cross_entropy_case(logits, target, ignore_index), atol=1e-5,
                                rtol=1e-5, grad_atol=1e-6, grad_rtol=1e-5)
    assert out[0].shape == ()
    if not np.any(target != ignore_index):
        assert np.isnan(out[0])  # 0 / 0 like torch; the backward adds nothing
        np.testing.assert_array_equal(grads[0], np.zeros_like(logits))
    else:
        assert np.isfinite(out[0])
        np.testing.assert_array_equal(grads[0][target == ignore_index], 0)


@pytest.mark.parametrize("ignore", ["none", "some", "all"])
@pytest.mark.parametrize("rows,classes", [(1, 1), (7, 5), (48, 1000)], ids=str)
def test_cross_entropy_backward_overwrites_and_runs_in_place(isa, rows, classes, ignore):
    """accumulate=False writes the gradient over whatever dlogits held (0 in ignored rows), and
    dlogits may then be logits itself (the executor writes the LM head's gradient over its
    logits): both give what accumulating into zeros gives, bit for bit."""
    rng = rng_for("overwrite", rows, classes, ignore)
    target = make_targets(rng, rows, classes, np.int64, ignore, -100)
    logits = randn(rng, rows, classes, scale=2.0)
    dloss = np.array(0.7, np.float32)
    expected = K.cross_entropy_backward(dloss, logits, target)
    held = randn(rng, rows, classes, scale=1e3)
    K.cross_entropy_backward(dloss, logits, target, grad_logits=held, accumulate=False)
    np.testing.assert_array_equal(held, expected)
    in_place = logits.copy()
    K.cross_entropy_backward(dloss, in_place, target, grad_logits=in_place, accumulate=False)
    np.testing.assert_array_equal(in_place, expected)
    with pytest.raises(ValueError, match="cross_entropy_backward.*accumulate=False"):
        K.cross_entropy_backward(dloss, in_place, target, grad_logits=in_place)


@pytest.mark.parametrize("dtype", [np.int64, np.int32], ids=["int64", "int32"])
def test_cross_entropy_large_logits(dtype):
    rng = rng_for("large", dtype)
    logits = randn(rng, 32, 77, scale=100.0, shift=500.0)
    target = make_targets(rng, 32, 77, dtype, "some", -100)
    out, _ = helper_test_op(**cross_entropy_case(logits, target, -100), atol=2e-4, rtol=1e-5,
                            grad_atol=1e-6, grad_rtol=1e-5)
    assert np.isfinite(out[0])


# ---------------------------------------------------------------- SGD

SGD_CONFIGS = [
    dict(momentum=0.0),
    dict(momentum=0.0, weight_decay=0.01),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.5),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(momentum=0.5, dampening=0.1, weight_decay=0.1),
]


def _sgd_config_id(cfg):
    return "-".join(f"{k}={v}" for k, v in cfg.items())


def _run_pyengine_sgd(param, grads, lr, cfg):
    param = param.copy()
    # NaN: first_step=True must initialise the buffer without reading it (as PyTorch does).
    buf = np.full(param.shape, np.nan, dtype=F32) if cfg["momentum"] else None
    for step, grad in enumerate(grads):
        result = K.sgd_update(param, grad, buf, lr=lr, first_step=step == 0, **cfg)
        assert result is param
    return param, buf


def _sgd_inputs(cfg, shape):
    rng = rng_for(_sgd_config_id(cfg), shape)
    return randn(rng, *shape), [randn(rng, *shape) for _ in range(3)]


@pytest.mark.parametrize("shape", [(5, 7), (300, 300)], ids=["small", "large"])
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=_sgd_config_id)
def test_sgd_matches_numpy(cfg, shape):
    param0, grads = _sgd_inputs(cfg, shape)
    param, buf = _run_pyengine_sgd(param0, grads, 0.1, cfg)
    mom, damp = cfg["momentum"], cfg.get("dampening", 0.0)
    p, b = param0.astype(F64), None
    for grad in grads:
        g = grad + cfg.get("weight_decay", 0.0) * p
        if mom:
            b = g if b is None else mom * b + (1 - damp) * g
            g = g + mom * b if cfg.get("nesterov") else b
        p = p - 0.1 * g
    assert_close(param, p, atol=1e-6, rtol=1e-5)
    if mom:
        assert_close(buf, b, atol=1e-6, rtol=1e-5)
    assert np.abs(param - param0).max() > 1e-2  # the update did something


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=_sgd_config_id)
def test_sgd_matches_torch(cfg):
    torch_ = pytest.importorskip("torch")
    param0, grads = _sgd_inputs(cfg, (5, 7))
    param, buf = _run_pyengine_sgd(param0, grads, 0.1, cfg)
    p = torch_.nn.Parameter(torch_.from_numpy(param0.copy()))
    opt = torch_.optim.SGD([p], lr=0.1, **cfg)
    for grad in grads:
        p.grad = torch_.from_numpy(grad.copy())
        opt.step()
    assert_close(param, p.detach().numpy(), atol=1e-6, rtol=1e-6)
    if cfg["momentum"]:
        assert_close(buf, opt.state[p]["momentum_buffer"].numpy(), atol=1e-6, rtol=1e-6)


def test_sgd_without_momentum_ignores_buffer():
    param, grad = np.ones(9, F32), np.full(9, 2.0, F32)
    buf = np.full(9, 7.0, F32)
    K.sgd_update(param, grad, buf, lr=0.25, weight_decay=0.5)
    np.testing.assert_allclose(param, 1 - 0.25 * (2 + 0.5), rtol=1e-7)
    np.testing.assert_array_equal(buf, 7.0)


# ---------------------------------------------------------------- API details


def _forward_calls(rng):
    """(name, f(out) -> filled out, out shape) for every op that takes out=."""
    a, b, x = randn(rng, 7, 5), randn(rng, 5, 9), randn(rng, 4, 6, 10)
    w, bias = randn(rng, 10), randn(rng, 10)
    target = np.array([1, 0, 9, 3], dtype=np.int64)
    return [
        ("matmul", lambda out: K.matmul(a, b, out=out), (7, 9)),
        ("add", lambda out: K.add(a, a[:1], out=out), (7, 5)),
        ("pow_scalar", lambda out: K.pow_scalar(a, 2.0, out=out), (7, 5)),
        ("gelu", lambda out: K.gelu(a, out=out), (7, 5)),
        ("exp", lambda out: K.exp(a, out=out), (7, 5)),
        ("sum", lambda out: K.sum(x, 1, out=out), (4, 10)),
        ("sum_last", lambda out: K.sum(x, -1, out=out), (4, 6)),
        ("sum_nonadjacent", lambda out: K.sum(x, (0, 2), out=out), (6,)),
        ("mean", lambda out: K.mean(x, (0, 1), keepdims=True, out=out), (1, 1, 10)),
        ("softmax", lambda out: K.softmax(x, out=out), (4, 6, 10)),
        ("log_softmax", lambda out: K.log_softmax(x, out=out), (4, 6, 10)),
        ("layer_norm", lambda out: K.layer_norm(x, w, bias, out=out)[0], (4, 6, 10)),
        ("cross_entropy", lambda out: K.cross_entropy(x[0, :4], target, out=out), ()),
    ]


@pytest.mark.parametrize("name", [c[0] for c in _forward_calls(np.random.default_rng(0))])
def test_forward_overwrites_out(name):
    """A forward writes every element of out= (no accumulation into stale contents)."""
    _, call, shape = next(c for c in _forward_calls(rng_for("out")) if c[0] == name)
    fresh = call(np.zeros(shape, F32))
    stale = np.full(shape, np.nan, dtype=F32)
    result = call(stale)
    assert result is stale, name
    np.testing.assert_array_equal(stale, fresh, err_msg=name)
    assert np.all(np.isfinite(stale)), name


def test_elementwise_in_place():
    rng = rng_for("inplace")
    a, b = randn(rng, 33, 17), randn(rng, 17)
    expected = a.astype(F64) * b
    K.mul(a, b, out=a)
    assert_close(a, expected, atol=1e-6, rtol=1e-6)
    expected = np.maximum(a, 0)
    K.relu(a, out=a)
    np.testing.assert_array_equal(a, expected)


def test_backward_skips_unrequested_grads():
    rng = rng_for("needs")
    a, b, g = randn(rng, 6, 4), randn(rng, 4, 3), randn(rng, 6, 3)
    ga, gb, gbias = K.matmul_backward(g, a, b, needs_a=False)
    assert ga is None and gbias is None
    assert_close(gb, a.T.astype(F64) @ g, atol=1e-5, rtol=1e-5)
    ga, gb, gbias = K.matmul_backward(g, a, b, needs_b=False, needs_bias=True)
    assert gb is None
    assert_close(ga, g.astype(F64) @ b.T, atol=1e-5, rtol=1e-5)
    assert_close(gbias, g.astype(F64).sum(0), atol=1e-5, rtol=1e-5)
    ga, gb = K.div_backward(g, g, b[0], needs_a=False)
    assert ga is None
    assert_close(gb, (-g.astype(F64) * g / b[0].astype(F64) ** 2).sum(0), atol=1e-4, rtol=1e-5)
    x, w, bias = randn(rng, 5, 8), randn(rng, 8), randn(rng, 8)
    _, mean, rstd = K.layer_norm(x, w, bias)
    gy = randn(rng, 5, 8)
    full = K.layer_norm_backward(gy, x, w, mean, rstd)
    only_x = K.layer_norm_backward(gy, x, w, mean, rstd, needs_weight=False, needs_bias=False)
    only_params = K.layer_norm_backward(gy, x, w, mean, rstd, needs_x=False)
    assert only_x[1] is None and only_x[2] is None and only_params[0] is None
    assert_close(only_x[0], full[0], atol=1e-6, rtol=1e-6)
    assert_close(only_params[1], full[1], atol=1e-6, rtol=1e-6)
    assert_close(only_params[2], full[2], atol=1e-6, rtol=1e-6)


def test_zero_size_inputs():
    rng = rng_for("empty")
    e = lambda *shape: np.zeros(shape, F32)  # noqa: E731
    bias = np.arange(4, dtype=F32)
    np.testing.assert_array_equal(K.matmul(e(3, 0), e(0, 4), bias), np.broadcast_to(bias, (3, 4)))
    np.testing.assert_array_equal(K.matmul(e(3, 0), e(0, 4), out=np.full((3, 4), np.nan, F32)), 0)
    g = randn(rng, 3, 4)
    ga, gb, gbias = K.matmul_backward(g, e(3, 0), e(0, 4), needs_bias=True)
    assert ga.shape == (3, 0) and gb.shape == (0, 4)
    assert_close(gbias, g.sum(0, dtype=F64), atol=1e-6, rtol=1e-6)
    assert K.matmul(e(2, 0, 5), e(5, 4)).shape == (2, 0, 4)
    np.testing.assert_array_equal(K.matmul_backward(e(0, 4), e(0, 5), e(5, 4))[1], e(5, 4))
    assert K.add(e(0, 3), e(3)).shape == (0, 3)
    np.testing.assert_array_equal(K.mul_backward(e(0, 3), e(0, 3), randn(rng, 3))[1], e(3))
    assert K.exp(e(0, 7)).shape == (0, 7) and K.relu(e(0)).shape == (0,)
    np.testing.assert_array_equal(K.sum(e(3, 0, 4), 1), e(3, 4))
    assert K.mean(e(3, 0, 4), 1).shape == (3, 4) and np.all(np.isnan(K.mean(e(3, 0, 4), 1)))
    np.testing.assert_array_equal(K.sum_backward(e(3, 4), (3, 0, 4), 1), e(3, 0, 4))
    assert K.softmax(e(0, 5)).shape == (0, 5) and K.log_softmax_backward(e(0, 5), e(0, 5)).size == 0
    y, mean, rstd = K.layer_norm(e(0, 5), randn(rng, 5), randn(rng, 5))
    assert y.shape == (0, 5) and mean.shape == (0,) and rstd.shape == (0,)
    assert np.isnan(K.cross_entropy(e(0, 5), np.zeros(0, np.int64)))
    np.testing.assert_array_equal(K.cross_entropy_backward(np.ones((), np.float32), e(0, 5), np.zeros(0, np.int32)),
                                  e(0, 5))
    K.sgd_update(e(0), e(0), e(0), lr=0.1, momentum=0.9, first_step=True)


# ---------------------------------------------------------------- nll loss




@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("rows,classes", [(1, 1), (7, 5), (64, 300)])
def test_nll_loss(rows, classes, dtype):
    rng = rng_for("nll", rows, classes, dtype)
    target = rng.integers(0, classes, rows).astype(dtype)
    target[::3] = -100
    logp = randn(rng, rows, classes)
    if (target == -100).all():
        assert np.isnan(K.nll_loss(logp, target))
        return
    helper_test_op(**nll_case(logp, target, -100), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- finite differences



CORE_FAMILIES = ("matmul", "elementwise", "reduce", "softmax", "layernorm", "loss", "conv")


def _fd_op(case_name: str) -> str:
    """The declared op (its forward's base name) an FD_CASES entry exercises."""
    head, _, variant = case_name.partition("-")
    if variant == "broadcast":
        return "binary"
    if variant.startswith("scalar"):
        return "scalar"
    return "sum" if head == "mean" else head  # mean is the sum kernel's scaled form


def test_every_core_kernel_has_a_finite_difference_case():
    """The core families' kernels are all in FD_CASES; the newer families (attention, pooling, batch
    norm, embedding, dropout) run their finite differences in their own test files."""
    declared = {base for base, (forward, _) in registry.pairs().items() if forward.family in CORE_FAMILIES}
    assert declared - {_fd_op(name) for name in FD_CASES} == set()


@pytest.mark.parametrize("name", list(FD_CASES))
def test_finite_differences(name):
    case = FD_CASES[name](rng_for("fd", name))
    analytic = check_finite_differences(case["inputs"], case["pe_fwd"], case["pe_bwd"], eps=1e-2)
    if name != "pow-scalar-0.0":  # d(a**0)/da = 0
        assert all(g is not None and np.abs(g).max() > 1e-3 for g in analytic)


def test_sigmoid_extremes():
    """Saturates to exactly 0 and 1 (exp overflowing to inf gives the right
    limit), keeps NaN, and its gradient vanishes at both ends."""
    x = np.array([-1e4, -104.0, -88.0, 0.0, 20.0, 104.0, 1e4, np.nan], dtype=F32)
    y = K.sigmoid(x)
    with np.errstate(over="ignore"):
        ref = 1 / (1 + np.exp(-x.astype(F64)))
    assert_close(y[:-1], ref[:-1], atol=1e-7, rtol=2e-6, what="sigmoid")
    assert y[0] == 0.0 and y[-2] == 1.0 and np.isnan(y[-1])
    g = K.sigmoid_backward(np.ones_like(x), y)
    assert g[0] == 0.0 and g[-2] == 0.0 and g[3] == np.float32(0.25)


def test_relu_and_abs_gradients_propagate_nan_as_pytorch(isa):
    torch = pytest.importorskip("torch")
    x = np.array([np.nan, -1, 1, 0, np.nan, -np.inf, np.inf, 2, 0], np.float32)
    dy = np.array([1, np.nan, np.nan, np.nan, np.nan, 1, 1, np.inf, 2], np.float32)
    for name, fn in (("relu", torch.relu), ("abs", torch.abs)):
        dx = np.zeros_like(x)
        getattr(_C, f"{name}_backward")(dx, dy, x)
        tx = torch.tensor(x, requires_grad=True)
        fn(tx).backward(torch.tensor(dy))
        np.testing.assert_array_equal(dx, tx.grad.numpy(), err_msg=name)


@pytest.mark.parametrize("n", [0, 1, 17, 4 * 16384 + 5, 1_000_003])  # empty, a tail, several parallel chunks
def test_fill_writes_the_value_everywhere(isa, n, restore_threads):
    """fill (the executor zeroes gradient buffers with it) on 1 and 2 threads, against a numpy fill."""
    for threads in (1, 2):
        pyengine.set_num_threads(threads)
        for value in (0.0, -2.5, np.inf):
            out = randn(np.random.default_rng(n), n) if n else np.empty(0, F32)
            assert K.fill(out, value=value) is out
            np.testing.assert_array_equal(out, np.full(n, value, F32), err_msg=f"{isa} {threads} threads")
    with pytest.raises(ValueError, match="fill"):
        K.fill(np.zeros((2, 3), F32))  # one flat buffer: the executor passes a view
