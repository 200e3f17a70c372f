"""Bugs the Tensor fuzzing (test_fuzz_tensor.py) found, each pinned against PyTorch's answer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pyengine.tensor import Tensor


@pytest.mark.parametrize("correction", [-3, -1, 0, 1, 2, 0.5])
@pytest.mark.parametrize("fn", ["var", "std"])
def test_variance_of_no_elements_is_nan_whatever_the_correction(fn, correction):
    # was 0 for a negative correction: sum of nothing / max(0, 0 - (-1)) = 0 / 1
    x = Tensor(np.zeros((3, 0), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_dim = getattr(x, fn)(1, correction=correction).numpy()
        overall = getattr(x, fn)(correction=correction).numpy()
    assert by_dim.shape == (3,) and np.isnan(by_dim).all()
    assert np.isnan(overall)


def test_clamp_with_a_nan_bound_is_nan_everywhere():
    # was: the NaN bound ignored (every comparison with NaN is false)
    x = Tensor(np.array([-2.0, 0.0, 3.0], np.float32), requires_grad=True)
    for kwargs in ({"min": float("nan")}, {"max": float("nan")}, {"min": 0.0, "max": float("nan")}):
        assert np.isnan(x.clamp(**kwargs).numpy()).all(), kwargs
    y = x.clamp(min=float("nan"))
    y.backward(np.ones(3, np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(3, np.float32))  # torch: no gradient passes


@pytest.mark.parametrize("call", [lambda x: x.chunk(2**31), lambda x: x.split([0] * (2**21))])
def test_a_huge_piece_count_is_a_clear_error_not_a_hang(call):
    # chunk(2**31) of an empty dim built 2^31 empty Tensors (hours, then out of memory)
    x = Tensor(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match=r"(chunk|split): \d+ pieces"):
        call(x)
    assert len(x.chunk(3)) == 3  # a small count still gives torch's answer: that many empty pieces


def test_kernel_errors_name_the_tensor_op():
    # a failed broadcast in x + y said only "binary_forward: ..."
    x, y = Tensor(np.zeros(0, np.float32)), Tensor(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"^add: "):
        x + y
    with pytest.raises(ValueError, match=r"^mse_loss: "):
        import pyengine.functional as F
        F.mse_loss(x, y)


def test_linear_of_a_0d_or_an_empty_input():
    import pyengine.functional as F
    with pytest.raises(ValueError, match="linear"):  # was a bare IndexError from x.shape[-1]
        F.linear(Tensor(np.zeros((), np.float32)), Tensor(np.zeros((2, 1), np.float32)))
    out = F.linear(Tensor(np.zeros(0, np.float32)), Tensor(np.zeros((3, 0), np.float32)))  # was reshape(-1, 0)
    np.testing.assert_array_equal(out.numpy(), np.zeros(3, np.float32))


def test_a_shape_numpy_cannot_describe_is_a_value_error_naming_the_factory():
    import pyengine as pe
    for call in (lambda: pe.full((2**63,), 1.0), lambda: pe.zeros(0, 2**40, 2**40)):
        with pytest.raises(ValueError, match=r"^(full|zeros): size"):  # was numpy's bare message
            call()


def test_an_index_past_int64_is_an_index_error_naming_getitem():
    with pytest.raises(IndexError, match="__getitem__"):  # was an OverflowError
        Tensor(np.zeros(3, np.float32))[2**63]


def test_backward_of_a_leaf_sets_its_grad():
    x = Tensor(np.ones(2, np.float32), requires_grad=True)
    x.contiguous().backward(np.array([0.5, 2.0], np.float32))  # contiguous() of a contiguous x is x
    np.testing.assert_array_equal(x.grad.numpy(), [0.5, 2.0])


def _torch64(a, grad=True):
    import torch
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def test_a_tensor_given_twice_to_one_op_gets_both_gradients_eager_and_captured():
    # layer_norm(x, w, w) and attention(q, k, k) handed one buffer as two kernel outputs: ValueError "overlaps"
    import torch

    import pyengine as pe
    import pyengine.functional as F
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    tw = _torch64(w)
    torch.nn.functional.layer_norm(_torch64(x, False), (4,), tw, tw).sum().backward()
    weight = Tensor(w.copy(), requires_grad=True)
    F.layer_norm(Tensor(x), weight, weight).sum().backward()
    np.testing.assert_allclose(weight.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    param = pe.nn.Parameter(w.copy())
    step = pe.capture(lambda a: F.layer_norm(a, param, param).sum(), x, optimizer=pe.optim.SGD([param], lr=1.0))
    step.run(x)
    np.testing.assert_allclose(param.numpy(), w - tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    q, k = rng.standard_normal((1, 2, 3, 4)).astype(np.float32), rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    tk = _torch64(k)
    torch.nn.functional.scaled_dot_product_attention(_torch64(q, False), tk, tk).sum().backward()
    key = Tensor(k.copy(), requires_grad=True)
    F.scaled_dot_product_attention(Tensor(q), key, key).sum().backward()
    np.testing.assert_allclose(key.grad.numpy(), tk.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shapes", [((3,), (3,)), ((0,), (0,)), ((3,), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 3), (3,))])
def test_matmul_of_vectors_follows_torch(shapes):
    # was "matmul_forward: 'a' must have at least 2 dims" for any 1-D operand
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    x, y = Tensor(a.copy(), requires_grad=True), Tensor(b.copy(), requires_grad=True)
    tx, ty = _torch64(a), _torch64(b)
    out, ref = x @ y, tx @ ty
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_0d_and_empty_inputs_answer_as_torch():
    x = Tensor(np.array(2.0, np.float32), requires_grad=True)
    assert x.softmax().item() == 1.0 and x.log_softmax().item() == 0.0  # were "at least 1 dims"
    assert x.sum(0).item() == 2.0 and x.mean(-1, keepdims=True).shape == ()  # were "axis 0 is out of range"
    assert Tensor(np.zeros((3, 0), np.float32)).softmax().shape == (3, 0)  # was "'cols' must be non-empty"


def test_clamp_with_min_above_max_is_max_as_torch():
    # was "clamp_forward: min = 0.000000 is above max = -2.000000"
    x = Tensor(np.array([-3.0, 0.0, 5.0, np.nan, np.inf], np.float32), requires_grad=True)
    y = x.clamp(0.0, -2.0)
    np.testing.assert_array_equal(y.numpy(), [-2.0, -2.0, -2.0, np.nan, -2.0])
    y.backward(np.ones(5, np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(5))
    np.testing.assert_array_equal(x.clamp(1.0, -np.inf).numpy()[:3], [-np.inf] * 3)


@pytest.mark.parametrize("call", [lambda x: x.reshape("x"), lambda x: x.reshape(1.0), lambda x: x.view(2, 1.5),
                                  lambda x: x.permute(1.0, 0)])
def test_a_float_or_a_string_where_ints_belong_is_a_type_error(call):
    # reshape(1.0) answered, reshape("x") said only "invalid literal for int()", permute said ValueError
    with pytest.raises(TypeError, match=r"^(reshape|view|permute): .* ints"):
        call(Tensor(np.zeros((1, 3), np.float32)))


def test_factory_sizes_are_type_checked_before_their_signs():
    import pyengine as pe
    for factory in (pe.zeros, pe.ones, pe.rand, pe.randn):
        with pytest.raises(TypeError, match="size must contain ints"):  # was ValueError (-1 seen first)
            factory(-1, 1.0)


def test_tril_of_a_diagonal_past_int64_is_a_value_error():
    x = Tensor(np.zeros((2, 2), np.float32))
    for diagonal in (2**63, -2**70):  # numpy's tri raised OverflowError, or answered
        with pytest.raises(ValueError, match="(tril|triu): diagonal .* int64"):
            x.tril(diagonal) if diagonal > 0 else x.triu(diagonal)


def test_dropout_add_and_getitem_errors_name_themselves():
    import pyengine.functional as F
    with pytest.raises(ValueError, match="^dropout_add: "):  # was "add: binary_forward: ..."
        F.dropout_add(Tensor(np.zeros(2, np.float32)), Tensor(np.zeros(0, np.float32)), 0.5, training=False)
    with pytest.raises(IndexError, match="__getitem__"):  # was TypeError (torch and numpy: IndexError)
        Tensor(np.zeros(3, np.float32))[1.5]


def test_errors_found_at_40_examples_per_op():
    import pyengine as pe
    import pyengine.functional as F
    x = Tensor(np.zeros((), np.float32))
    for call, error, match in [
        (lambda: x.flatten(1, 1.0), TypeError, "^flatten: dim must be an int"),  # was IndexError (range first)
        (lambda: x.transpose(1, 1.0), TypeError, "^transpose: dim must be an int"),
        (lambda: x.reshape(), TypeError, "^reshape: missing the shape"),  # reshape() answered for a 0-d x
        (lambda: x.view(), TypeError, "^view: missing the shape"),
        (lambda: pe.arange(2**63), ValueError, "^arange: end .* int64"),  # answered
        (lambda: F.linear(Tensor(np.zeros(1, np.float32)), Tensor(np.zeros((0, 0), np.float32))), ValueError,
         "^linear: "),  # said only "matmul_forward: inner dims differ"
        (lambda: F.batch_norm(Tensor(np.zeros((0, 0), np.float32)), None, None, training=True), ValueError,
         "^batch_norm: expected more than 1 value"),  # did not name the op
    ]:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("kwargs", [{"stride": 1.5}, {"padding": (1, 2, 3)}, {"dilation": "x"}, {"groups": 1.5},
                                    {"groups": None}, {"stride": True}])
def test_conv2d_arguments_of_the_wrong_type_are_a_type_error_naming_conv2d(kwargs):
    # stride 1.5 raised "'float' object is not iterable" (found at 400 cases); groups 1.5 ran as groups 1
    import pyengine.functional as F
    x, w = Tensor(np.zeros((1, 2, 4, 4), np.float32)), Tensor(np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="conv2d: (stride|padding|dilation|groups) must be"):
        F.conv2d(x, w, **kwargs)


def test_the_gradient_of_std_is_zero_where_std_is_zero_as_in_torch():
    # was NaN: sqrt's backward dy * 0.5 / 0 = inf, then the variance's 0 * inf
    torch = pytest.importorskip("torch")
    values = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0], [-3.0, -3.0, -3.0]], np.float32)
    upstream = np.array([0.5, -2.0, 3.0], np.float32)
    for dim, keepdim in ((1, False), (None, False), (1, True)):
        x = Tensor(values.copy() if dim is not None else values[:1].copy(), requires_grad=True)
        t = torch.tensor(x.numpy().astype(np.float64), requires_grad=True)
        y, ty = x.std(dim, keepdim=keepdim), t.std(dim, keepdim=keepdim)
        g = upstream[:y.size].reshape(y.shape)
        y.backward(g)
        ty.backward(torch.from_numpy(g.astype(np.float64)))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
        assert np.isfinite(x.grad.numpy()).all()


def test_the_gradient_of_std_is_zero_where_std_is_zero_under_capture():
    import pyengine as pe
    w = pe.nn.Parameter(np.array([[2.0, 2.0], [1.0, 3.0]], np.float32))
    opt = pe.optim.SGD([w], lr=0.0)
    graph = pe.capture(lambda x: (w * x).std(1).sum(), np.ones((2, 2), np.float32), optimizer=opt)
    graph.run(np.ones((2, 2), np.float32))
    np.testing.assert_allclose(w.grad.numpy(), [[0.0, 0.0], [-2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


def test_half_powers_are_sqrt_and_rsqrt_as_in_torch():
    # (-inf) ** 0.5 was C's pow, +inf; torch computes sqrt(-inf) = NaN (and rsqrt for -0.5: (-0) ** -0.5 = -inf)
    torch = pytest.importorskip("torch")
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 0.25, 4.0, np.inf, np.nan], np.float32)
    for exponent in (0.5, -0.5):
        got = (Tensor(values) ** exponent).numpy()
        want = (torch.from_numpy(values) ** exponent).numpy()
        np.testing.assert_array_equal(got, want)
        numbers = ~np.isnan(want)  # a NaN's sign means nothing
        np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))
    x = Tensor(np.array([0.25, 4.0], np.float32), requires_grad=True)
    (x ** 0.5).backward(np.ones(2, np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 0.25], rtol=1e-6)


@pytest.mark.parametrize("call", [lambda x, y: x.chunk(1, 1.0), lambda x, y: x.split(1, 1.0),
                                  lambda x, y: __import__("pyengine").stack([x, y], 1.0)])
def test_a_float_dim_is_a_type_error_before_the_shapes_are_looked_at(call):
    # found at 100 cases per op: a 0-d tensor (chunk, split) or unequal shapes (stack) were a
    # ValueError first, where torch parses the arguments first: TypeError
    x, y = Tensor(np.zeros((), np.float32)), Tensor(np.zeros(0, np.float32))
    with pytest.raises(TypeError, match=r"(chunk|split|stack): dim must be an int"):
        call(x, y)


@pytest.mark.parametrize("call", [lambda x: x.split(2**63), lambda x: x.split([2**63, 0]),
                                  lambda x: x.split(-2**63 - 1), lambda x: x.chunk(2**63)])
def test_a_size_or_count_beyond_int64_is_refused(call):
    # split(2**63) of an empty dim answered one piece, chunk(2**63) of a (1,) one; torch refuses the overflow
    with pytest.raises(ValueError, match=r"(split|chunk): -?\d+ is out of the int64 range"):
        call(Tensor(np.zeros(1, np.float32)))

