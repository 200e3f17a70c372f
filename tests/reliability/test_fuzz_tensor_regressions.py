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
