"""Tensor autodiff against PyTorch (float64, through torch_ref.compare), in the spirit of
tinygrad's ``helper_test_op`` (whose kernel-level counterpart is tests/helpers.py's).

Every case builds the same expression in pyengine and in PyTorch on the same
float32 data, compares the forward value, then backpropagates the same
upstream gradient and compares the ``.grad`` of every leaf.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from op_cases import POSITIVE_DOMAIN, UNARY
from torch_ref import compare

import pyengine as pe
from pyengine import functional as F
from pyengine.tensor import Tensor, is_grad_enabled, no_grad, topological_order

F32 = np.float32


def _data(rng, shape, kind):
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "away":  # |x| >= 0.5: safe divisor, away from relu's kink
        x = rng.standard_normal(shape)
        x = np.sign(x + (x == 0)) * (0.5 + np.abs(x))
    elif kind == "positive":  # in [0.5, 2]
        x = rng.uniform(0.5, 2.0, shape)
    else:
        raise AssertionError(kind)
    return np.ascontiguousarray(x, dtype=F32)


def check_tensor_op(shapes, pe_fn, torch_fn, *, kinds="normal", atol=1e-5, rtol=1e-5,
                    grad_atol=None, grad_rtol=None, seed=0):
    """torch_ref.compare on float32 leaves of the given shapes and kinds (see _data)."""
    rng = np.random.default_rng(seed)
    kinds = [kinds] * len(shapes) if isinstance(kinds, str) else list(kinds)
    arrays = [_data(rng, s, k) for s, k in zip(shapes, kinds)]
    out, _ = compare(arrays, pe_fn, torch_fn, atol=atol, rtol=rtol, grad_atol=grad_atol,
                     grad_rtol=grad_rtol, seed=seed)
    assert out.dtype == np.float32
    return out


def _tf():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


# ------------------------------------------------------------------ elementwise


BINARY_SHAPES = [
    ((4, 3), (4, 3)),
    ((4, 3), (3,)),
    ((4, 1), (1, 3)),
    ((2, 3, 4), (3, 1)),
    ((1, 5), (2, 3, 1)),
    ((), (2, 3)),
]


@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcast(op, shapes):
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[op]
    kinds = ["normal", "away"] if op == "div" else "normal"
    check_tensor_op(shapes, fn, fn, kinds=kinds, atol=1e-5, rtol=1e-5)


SCALAR_CASES = {
    "x+2.5": (lambda x: x + 2.5, "normal"),
    "2.5+x": (lambda x: 2.5 + x, "normal"),
    "x-1.5": (lambda x: x - 1.5, "normal"),
    "2-x": (lambda x: 2 - x, "normal"),
    "x*3": (lambda x: x * 3, "normal"),
    "-0.5*x": (lambda x: -0.5 * x, "normal"),
    "x/4": (lambda x: x / 4, "normal"),
    "1/x": (lambda x: 1 / x, "away"),
    "3/x": (lambda x: 3.0 / x, "away"),
    "-x": (lambda x: -x, "normal"),
    "x**2": (lambda x: x ** 2, "normal"),
    "x**3": (lambda x: x ** 3, "normal"),
    "x**0.5": (lambda x: x ** 0.5, "positive"),
    "x**-1": (lambda x: x ** -1, "positive"),
    "x**1.7": (lambda x: x ** 1.7, "positive"),
}


@pytest.mark.parametrize("case", list(SCALAR_CASES))
def test_scalar_ops(case):
    fn, kind = SCALAR_CASES[case]
    check_tensor_op([(3, 5)], fn, fn, kinds=kind, atol=1e-5, rtol=1e-5)


def test_numpy_scalar_and_array_operands():
    # numpy scalars behave like Python numbers; float32 arrays like constant tensors
    c = np.arange(5, dtype=F32)
    check_tensor_op([(3, 5)], lambda x: x * np.float32(2.0) - np.int64(1) + c,
                    lambda x: x * 2.0 - 1 + __import__("torch").from_numpy(c), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name):
    """Every activation of the op-case registry, as a Tensor method and a
    functional, against torch autograd."""
    _tf()
    t_fn = UNARY[name][2]
    kind = "positive" if name in POSITIVE_DOMAIN else "away" if name in ("relu", "abs") else "normal"
    method, functional = name, name
    if name.startswith("gelu"):  # the kernels gelu (tanh form) and gelu_erf are x.gelu's `approximate`
        approximate = "none" if name == "gelu_erf" else "tanh"
        method = functional = "gelu"
    else:
        approximate = None
    args = () if approximate is None else (approximate,)
    check_tensor_op([(4, 33)], lambda x: getattr(x, method)(*args), t_fn, kinds=kind, atol=1e-5, rtol=1e-5)
    if hasattr(F, functional):
        check_tensor_op([(4, 33)], lambda x: getattr(F, functional)(x, *args), t_fn, kinds=kind, atol=1e-5,
                        rtol=1e-5)


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (0.0, None), (None, 0.25)])
def test_clamp(lo, hi):
    check_tensor_op([(4, 33)], lambda x: x.clamp(lo, hi), lambda x: x.clamp(lo, hi),
                    atol=1e-6, rtol=1e-6)
    check_tensor_op([(4, 33)], lambda x: pe.clamp(x, min=lo, max=hi),
                    lambda x: __import__("torch").clamp(x, min=lo, max=hi), atol=1e-6, rtol=1e-6)


def test_relu_functional_matches_method():
    x = Tensor(np.array([-2.0, -0.5, 0.5, 3.0], dtype=F32))
    np.testing.assert_array_equal(F.relu(x).numpy(), np.array([0, 0, 0.5, 3.0], dtype=F32))


# ------------------------------------------------------------------ matmul


@pytest.mark.parametrize("shapes", [
    ((5, 4), (4, 3)),
    ((1, 7), (7, 1)),
    ((2, 5, 4), (2, 4, 3)),
    ((3, 2, 5, 4), (3, 2, 4, 6)),
    ((2, 5, 4), (4, 3)),   # shared right operand
    ((5, 4), (2, 4, 3)),   # shared left operand
], ids=str)
def test_matmul(shapes):
    check_tensor_op(shapes, lambda a, b: a @ b, lambda a, b: a @ b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("trans_a,trans_b", [(False, True), (True, False), (True, True)])
def test_matmul_transposed(trans_a, trans_b):
    sa = (4, 5) if trans_a else (5, 4)
    sb = (3, 4) if trans_b else (4, 3)

    def t_fn(a, b):
        return (a.T if trans_a else a) @ (b.T if trans_b else b)

    check_tensor_op([sa, sb], lambda a, b: a.matmul(b, trans_a=trans_a, trans_b=trans_b), t_fn,
                    atol=1e-5, rtol=1e-4)


def test_matmul_rejects_mismatched_shapes():
    a = Tensor(np.ones((2, 3), F32))
    b = Tensor(np.ones((4, 2), F32))
    with pytest.raises(ValueError):
        a @ b


# ------------------------------------------------------------------ reductions, softmax, reshape


@pytest.mark.parametrize("axis,keepdims", [
    (None, False), (0, False), (1, True), (-1, False), ((0, 1), False), ((0, 2), False),
    ((0, 2), True), ((1, 2), True),
], ids=str)
@pytest.mark.parametrize("mean", [False, True], ids=["sum", "mean"])
def test_sum_mean(axis, keepdims, mean):
    def pe_fn(x):
        return x.mean(axis=axis, keepdims=keepdims) if mean else x.sum(axis=axis, keepdims=keepdims)

    def t_fn(x):
        dim = tuple(range(x.ndim)) if axis is None else axis
        return x.mean(dim=dim, keepdim=keepdims) if mean else x.sum(dim=dim, keepdim=keepdims)

    check_tensor_op([(3, 4, 5)], pe_fn, t_fn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 17), (1, 1)], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax(name, shape):
    torch, tf = _tf()
    pe_fn = F.softmax if name == "softmax" else F.log_softmax
    t_fn = (lambda x: tf.softmax(x, dim=-1)) if name == "softmax" else (lambda x: tf.log_softmax(x, dim=-1))
    check_tensor_op([shape], pe_fn, t_fn, atol=1e-5, rtol=1e-5)


def test_softmax_large_logits_are_stable():
    torch, tf = _tf()
    check_tensor_op([(3, 6)], lambda x: (x * 1000.0).log_softmax(),
                    lambda x: tf.log_softmax(x * 1000.0, dim=-1), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("src,dst", [((2, 3, 4), (6, 4)), ((2, 3, 4), (-1,)), ((6, 4), (2, -1, 2)),
                                     ((6, 4), ((4, 6),))], ids=str)
def test_reshape(src, dst):
    check_tensor_op([src], lambda x: x.reshape(*dst) * 2.0,
                    lambda x: x.reshape(*(dst[0] if isinstance(dst[0], tuple) else dst)) * 2.0)


def test_reshape_is_a_view_and_rejects_bad_shapes():
    x = Tensor(np.arange(12, dtype=F32))
    y = x.reshape(3, 4)
    assert y.shape == (3, 4)
    assert np.shares_memory(x.numpy(), y.numpy())
    with pytest.raises(ValueError):
        x.reshape(5, -1)
    with pytest.raises(ValueError):
        x.reshape(-1, -1)
    with pytest.raises(ValueError):
        x.reshape(5, 3)


# ------------------------------------------------------------------ functional layers


@pytest.mark.parametrize("bias", [True, False])
def test_linear_3d_input(bias):
    torch, tf = _tf()
    shapes = [(2, 5, 6), (4, 6)] + ([(4,)] if bias else [])
    check_tensor_op(shapes, lambda x, w, *b: F.linear(x, w, *b), lambda x, w, *b: tf.linear(x, w, *b),
                    atol=1e-5, rtol=1e-4)


def test_linear_2d_input():
    torch, tf = _tf()
    check_tensor_op([(7, 6), (3, 6), (3,)], F.linear, tf.linear, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 8)], ids=str)
def test_layer_norm(shape):
    torch, tf = _tf()
    d = shape[-1]
    check_tensor_op([shape, (d,), (d,)], lambda x, w, b: F.layer_norm(x, w, b),
                    lambda x, w, b: tf.layer_norm(x, (d,), w, b, eps=1e-5),
                    atol=1e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)


def test_layer_norm_eps():
    torch, tf = _tf()
    # near-constant rows: eps dominates the variance
    check_tensor_op([(3, 8), (8,), (8,)],
                    lambda x, w, b: F.layer_norm(x * 0.01, w, b, eps=1e-2),
                    lambda x, w, b: tf.layer_norm(x * 0.01, (8,), w, b, eps=1e-2),
                    atol=1e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)


@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy(ignore):
    torch, tf = _tf()
    target = np.array([3, 0, 9, 2, 5, 5, 1], dtype=np.int64)
    if ignore:
        target[[1, 4]] = -100
    check_tensor_op([(7, 10)], lambda x: F.cross_entropy(x, target),
                    lambda x: tf.cross_entropy(x, torch.from_numpy(target)), atol=1e-5, rtol=1e-5)


def test_cross_entropy_custom_ignore_index():
    torch, tf = _tf()
    target = np.array([3, 7, 1, 7], dtype=np.int64)
    check_tensor_op([(4, 8)], lambda x: F.cross_entropy(x, Tensor(target), ignore_index=7),
                    lambda x: tf.cross_entropy(x, torch.from_numpy(target), ignore_index=7),
                    atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ composite expressions


def test_composite_mlp_expression():
    torch, tf = _tf()
    target = np.array([1, 0, 2, 2, 1], dtype=np.int64)

    def pe_fn(x, w1, b1, g, beta, w2):
        h = F.gelu(F.linear(x, w1, b1), approximate="tanh")
        h = F.layer_norm(h, g, beta)
        logits = (h @ w2).tanh() * 3.0
        return F.cross_entropy(logits, target) + (w1 ** 2).sum() * 0.01

    def t_fn(x, w1, b1, g, beta, w2):
        h = tf.gelu(tf.linear(x, w1, b1), approximate="tanh")
        h = tf.layer_norm(h, (8,), g, beta, eps=1e-5)
        logits = torch.tanh(h @ w2) * 3.0
        return tf.cross_entropy(logits, torch.from_numpy(target)) + (w1 ** 2).sum() * 0.01

    check_tensor_op([(5, 6), (8, 6), (8,), (8,), (8,), (8, 3)], pe_fn, t_fn,
                    atol=1e-5, rtol=1e-4, grad_atol=1e-5, grad_rtol=1e-4)


def test_composite_softmax_attention_like():
    torch, tf = _tf()

    def pe_fn(q, k, v):
        scores = q.matmul(k.reshape(2, 6, 4) @ Tensor(np.eye(4, dtype=F32)), trans_b=True) / 2.0
        return (F.softmax(scores) @ v).mean(axis=(0, 2))

    def t_fn(q, k, v):
        scores = (q @ (k.reshape(2, 6, 4) @ torch.eye(4, dtype=torch.float64)).transpose(-1, -2)) / 2.0
        return (tf.softmax(scores, dim=-1) @ v).mean(dim=(0, 2))

    check_tensor_op([(2, 5, 4), (12, 4), (2, 6, 3)], pe_fn, t_fn, atol=1e-5, rtol=1e-4)


def test_diamond_graph_sums_gradients():
    # x feeds several paths, including both operands of one op
    torch, _ = _tf()

    def fn(x, y):
        a = x * y
        b = a + x
        c = x * x + b / (y * y + 1.0)
        return (a * c - b).sum() + x.sum()

    check_tensor_op([(3, 4), (3, 4)], fn, fn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["x@x", "x*x", "x-x+x/x", "(x+x)*x", "batched x@x"])
def test_same_tensor_as_both_operands(case):
    fn = {"x@x": lambda x: x @ x, "x*x": lambda x: x * x, "x-x+x/x": lambda x: (x - x) * 3.0 + x / x,
          "(x+x)*x": lambda x: (x + x) * x,
          "batched x@x": lambda x: (x.reshape(2, 3, 3) @ x.reshape(2, 3, 3)).reshape(6, 3)}[case]
    shape = (6, 3) if case == "batched x@x" else (4, 4)
    check_tensor_op([shape], fn, fn, kinds="away", atol=1e-5, rtol=1e-4)


def test_helper_detects_a_wrong_gradient():
    # the comparison itself must be able to fail: same forward, different backward
    with pytest.raises(AssertionError, match="grad of leaf 0"):
        check_tensor_op([(3, 3)], lambda x: x * x, lambda x: x * x.detach())
    with pytest.raises(AssertionError, match="forward"):
        check_tensor_op([(3, 3)], lambda x: x * 2.0, lambda x: x * 2.001)


def test_diamond_exact_values():
    x = Tensor(np.array([2.0, -3.0], dtype=F32), requires_grad=True)
    a = x * 3.0          # da/dx = 3
    y = (a * a + a + x).sum()  # dy/dx = (2a + 1) * 3 + 1 = 18x + 4
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [40.0, -50.0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(y.item(), 36 + 81 + 6 - 9 + 2 - 3, rtol=1e-6)


# ------------------------------------------------------------------ autodiff mechanics


def test_gradients_accumulate_across_backward_calls():
    data = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=F32)
    x = Tensor(data.copy(), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * data, rtol=0, atol=1e-6)
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * data + 3.0, rtol=0, atol=1e-6)
    # the same graph twice adds again
    loss = (x ** 2).mean()
    loss.backward()
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * data + 3.0 + 2 * (2 * data / 4), rtol=0, atol=1e-6)


def test_zero_grad():
    x = Tensor(np.ones((3,), F32), requires_grad=True)
    assert x.grad is None
    (x * 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0, 2.0])
    x.zero_grad()
    assert x.grad is None
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 5.0, 5.0])  # not 7: started from zero


def test_grad_setter():
    x = Tensor(np.zeros((2,), F32), requires_grad=True)
    x.grad = Tensor(np.array([1.0, 2.0], F32))
    (x * 1.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 3.0])
    x.grad = None
    assert x.grad is None


def test_no_grad_records_nothing():
    x = Tensor(np.ones((2, 2), F32), requires_grad=True)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0 + x).sum()
        z = F.linear(x, x)
    assert is_grad_enabled()
    assert y.requires_grad is False and z.requires_grad is False
    assert y.is_leaf and z.is_leaf
    np.testing.assert_allclose(y.item(), 12.0)
    with pytest.raises(RuntimeError):
        y.backward()
    assert x.grad is None


def test_no_grad_restores_state_after_exception_and_nesting():
    with pytest.raises(KeyError):
        with no_grad():
            with no_grad():
                pass
            assert not is_grad_enabled()
            raise KeyError("boom")
    assert is_grad_enabled()


def test_requires_grad_propagation():
    w = Tensor(np.ones((2, 2), F32), requires_grad=True)
    c = Tensor(np.full((2, 2), 3.0, F32))
    assert not (c * 2.0).requires_grad
    assert (c * w).requires_grad
    (c * w).sum().backward()
    assert c.grad is None  # constants get no gradient
    np.testing.assert_allclose(w.grad.numpy(), np.full((2, 2), 3.0))


def test_intermediate_tensors_get_no_grad():
    x = Tensor(np.ones(3, F32), requires_grad=True)
    h = x * 2.0
    (h * h).sum().backward()
    assert not h.is_leaf and x.is_leaf
    assert h.grad is None
    np.testing.assert_allclose(x.grad.numpy(), [8.0, 8.0, 8.0])


def test_deep_chain_backward_has_no_recursion_limit():
    assert sys.getrecursionlimit() < 20000  # the chain below is deeper than the limit
    x = Tensor(np.array([1.0, -2.0], dtype=F32), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    expected = np.float32(1.0001) ** 5000  # ~ e^0.5
    np.testing.assert_allclose(x.grad.numpy(), [expected, expected], rtol=1e-4)
    np.testing.assert_allclose(y.numpy(), np.array([1.0, -2.0]) * expected, rtol=1e-4)
    del y  # dropping the chain must not crash either


def test_topological_order_is_iterative_and_ordered():
    parents = {i: [i - 1] if i else [] for i in range(10000)}
    order = topological_order([9999], lambda i: parents[i])
    assert order == list(range(10000))
    diamond = {"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}
    order = topological_order(["d"], lambda n: diamond[n])
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d") and len(order) == 4


def test_backward_of_non_scalar_needs_grad():
    x = Tensor(np.ones((2, 3), F32), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError):
        y.backward()
    y.backward(np.full((2, 3), 0.5, F32))
    np.testing.assert_allclose(x.grad.numpy(), np.ones((2, 3)))
    # a one-element, non-0-d tensor is a scalar too
    x.zero_grad()
    (x.sum(axis=(0, 1), keepdims=True) * 3.0).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 3.0))


def test_backward_without_requires_grad_raises():
    with pytest.raises(RuntimeError):
        Tensor(np.ones(1, F32)).backward()


def test_float64_is_rejected_not_cast():
    d64 = np.ones((2, 2), dtype=np.float64)
    with pytest.raises(TypeError):
        Tensor(d64, requires_grad=True)
    t = Tensor(d64)  # wrapping is allowed, but nothing is silently cast...
    assert t.dtype == np.float64 and t.numpy() is d64
    with pytest.raises(TypeError):  # ...and every op refuses it
        t * 2.0
    with pytest.raises(TypeError):
        t.relu()
    x = Tensor(np.ones((2, 2), F32), requires_grad=True)
    with pytest.raises(TypeError):
        x + d64
    with pytest.raises(TypeError):
        x @ d64
    with pytest.raises(TypeError):
        x * t
    with pytest.raises(TypeError):
        F.linear(x, t)


def test_int_tensor_cannot_require_grad():
    with pytest.raises(TypeError):
        Tensor(np.arange(3), requires_grad=True)


def test_tensor_basics():
    data = np.arange(6, dtype=F32).reshape(2, 3)
    t = Tensor(data, requires_grad=True)
    assert t.shape == (2, 3) and isinstance(t.shape, tuple)
    assert t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.numpy() is data  # wraps without copying
    s = t.sum()
    assert s.shape == ()
    item = s.item()
    assert isinstance(item, float) and item == 15.0
    s.backward()
    assert isinstance(t.grad, Tensor)
    assert t.grad.dtype == np.float32 and t.grad.shape == (2, 3)
    np.testing.assert_array_equal(t.grad.numpy(), np.ones((2, 3), F32))
    assert t.detach().requires_grad is False and t.detach().numpy() is data


def test_conversion_of_lists_and_copying_constructor():
    f = Tensor([1.0, 2.0])
    i = Tensor([1, 2])
    assert f.dtype == np.float32 and i.dtype == np.int64
    assert Tensor(2.5).item() == 2.5 and Tensor(2.5).dtype == np.float32
    src = np.ones(3, F32)
    copy = pe.tensor(src)
    src[0] = 5.0
    assert copy.numpy()[0] == 1.0


def test_python_scalar_becomes_0d_tensor():
    assert Tensor(2.5).shape == ()
    assert Tensor(3).shape == ()
    assert pe.tensor(np.float32(1.5)).shape == ()


def test_binary_rejects_non_broadcastable_shapes():
    a = Tensor(np.ones((2, 3), F32))
    b = Tensor(np.ones((4,), F32))
    with pytest.raises(ValueError):
        a + b


@pytest.mark.parametrize("level", pe.available_isas())
def test_gradients_agree_across_isa_levels(level):
    # the same composite expression at each ISA level against PyTorch
    with pe.use_isa(level):
        test_composite_mlp_expression()
        check_tensor_op([(3, 37), (37,)], lambda a, b: ((a - b) * (a / (b * b + 1.0))).gelu("tanh"),
                        lambda a, b: __import__("torch").nn.functional.gelu(
                           (a - b) * (a / (b * b + 1.0)), approximate="tanh"),
                        atol=1e-5, rtol=1e-4)


def test_pow_gradient_at_zero_matches_torch():
    torch = pytest.importorskip("torch")
    data = np.array([0.0, -2.0, 1.5], dtype=F32)
    for exponent in (0, 1, 2, 3):
        x = Tensor(data.copy(), requires_grad=True)
        xt = torch.tensor(data, requires_grad=True)
        (x ** exponent).sum().backward()
        (xt ** exponent).sum().backward()
        np.testing.assert_allclose((x ** exponent).numpy(), (xt ** exponent).detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-6, atol=0,
                                   err_msg=f"x ** {exponent}")


def test_softmax_1d_and_masked_logits():
    torch = pytest.importorskip("torch")
    check_tensor_op([(9,)], F.softmax, lambda x: torch.softmax(x, dim=-1), atol=1e-6, rtol=1e-5)
    masked = np.array([[-np.inf, 0.0, 1.0], [2.0, -np.inf, -1.0]], dtype=F32)
    np.testing.assert_allclose(F.softmax(Tensor(masked)).numpy(),
                               torch.softmax(torch.from_numpy(masked), -1).numpy(), atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(F.log_softmax(Tensor(masked)).numpy(),
                               torch.log_softmax(torch.from_numpy(masked), -1).numpy(), atol=1e-6, rtol=1e-6)


def test_cross_entropy_rejects_bad_targets():
    logits = Tensor(np.zeros((4, 10), F32), requires_grad=True)
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([1, 2, 10, 3]))  # class 10 of 10
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([1, 2, -5, 3]))
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([1, 2, 3]))  # one target short
    with pytest.raises(TypeError):
        F.cross_entropy(logits, np.array([1.0, 2.0, 3.0, 4.0]))  # float targets
    # uniform logits: loss is log(10), each row's gradient (softmax - onehot) / rows
    loss = F.cross_entropy(logits, np.array([1, 2, 3, 4], dtype=np.int32))
    np.testing.assert_allclose(loss.item(), np.log(10.0), rtol=1e-6)
    loss.backward()
    expected = np.full((4, 10), 0.1, F32)
    expected[np.arange(4), [1, 2, 3, 4]] -= 1.0
    np.testing.assert_allclose(logits.grad.numpy(), expected / 4, atol=1e-7)


def test_non_contiguous_data_is_rejected_not_misread():
    strided = np.arange(16, dtype=F32).reshape(4, 4)[:, ::2]
    with pytest.raises(ValueError):
        Tensor(strided) * 2.0
    with pytest.raises(ValueError):
        Tensor(np.ones((4, 3), F32).T) @ Tensor(np.ones((4, 2), F32))


def test_backward_with_wrong_shaped_grad_raises():
    x = Tensor(np.ones((2, 3), F32), requires_grad=True)
    with pytest.raises(ValueError):
        (x * 2.0).backward(np.ones(5, F32))
