"""Tensor.__repr__ against PyTorch: the same values print the same text.

Every case builds a numpy array, prints it as a pyengine tensor and as a torch
tensor, and compares the two strings character for character, with
``torch.`` replaced by ``pyengine.`` in the dtype suffix.

Known differences, each pinned by its own test below:

* the dtype names are 3 characters longer (``pyengine.int32``), so a suffix
  that fits on torch's last line may wrap in pyengine (the same 80-column
  rule, applied to the longer name);
* a non-leaf tensor prints ``requires_grad=True`` where torch prints
  ``grad_fn=<MulBackward0>`` (pyengine ops have no torch backward-class names).
"""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine.printing import tensor_repr

torch = pytest.importorskip("torch")

F32, I64, I32 = np.float32, np.int64, np.int32


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(shape, scale=1.0, seed=0):
    return (_rng(seed).standard_normal(shape) * scale).astype(F32)


CASES = {
    # small and plain
    "matrix_int_valued": np.array([[1.0, 2.0], [3.0, 4.0]], F32),
    "vector_fractions": np.array([0.5, -1.25, 3.125], F32),
    "normal_2d": _normal((4, 5)),
    "negative": -np.abs(_normal((3, 3), seed=1)),
    "vector_1d_long_wraps": _normal(50, seed=2),
    "wide_rows_wrap": _normal((3, 30), seed=3),
    "three_d": _normal((2, 3, 4), seed=4),
    "four_d": _normal((2, 2, 2, 3), seed=5),
    "negative_zero": np.array([-0.0, 0.0, 1.0], F32),
    "all_zeros": np.zeros((2, 3), F32),
    # scientific notation and its triggers
    "sci_small_min": np.array([1e-5, 1.0, 3.0], F32),
    "sci_large_max": np.array([1e9, 2.0], F32),
    "sci_ratio": np.array([1.0, 2000.5], F32),
    "sci_ratio_just_under": np.array([1.0, 999.5], F32),
    "sci_min_at_1e-4": np.array([1e-4, 0.5], F32),
    "sci_int_valued": np.array([1e10, 1.0, -3.0], F32),
    "mixed_magnitudes_2d": _normal(16, seed=6) * np.logspace(-6, 6, 16, dtype=F32),
    "large_values": _normal(20, scale=1e5, seed=7),
    # non-finite
    "inf_nan_fractions": np.array([np.inf, np.nan, -np.inf, 1.5], F32),
    "inf_nan_int_valued": np.array([np.inf, np.nan, 2.0], F32),
    "only_nonfinite": np.array([np.nan, np.inf, -np.inf, 0.0], F32),
    "nan_sci": np.array([np.nan, 1e-6, 1.0], F32),
    # 0-d
    "scalar_fraction": np.array(3.5, F32),
    "scalar_int_valued": np.array(2.0, F32),
    "scalar_nan": np.array(np.nan, F32),
    "scalar_huge": np.array(1e10, F32),
    "scalar_tiny": np.array(1e-7, F32),
    "scalar_negative_zero": np.array(-0.0, F32),
    "scalar_int64": np.array(7, I64),
    "scalar_int32": np.array(-7, I32),
    # empty
    "empty_1d": np.zeros(0, F32),
    "empty_2d": np.zeros((0, 3), F32),
    "empty_3d_int32": np.zeros((2, 0, 3), I32),
    "empty_1d_int64": np.zeros(0, I64),
    # integers
    "int64_vector": np.array([1, 2, 3], I64),
    "int64_negative_widths": np.array([[-1, 200], [30, -4000]], I64),
    "int32_vector": np.array([1, 2, 3], I32),
    "int32_matrix": np.arange(12, dtype=I32).reshape(3, 4) - 5,
    "int64_long_row": np.arange(40, dtype=I64) * 37,
    # summarized (more than 1000 elements)
    "exactly_threshold": _normal(1000, seed=8),
    "over_threshold_1d": _normal(1001, seed=9),
    "summarized_2d": _normal((40, 50), seed=10),
    "summarized_2d_few_rows": _normal((2, 600), seed=11),
    "summarized_3d": _normal((10, 20, 30), seed=12),
    "summarized_large": _normal((2000, 3000), seed=13),
    "summarized_int64": np.arange(2000, dtype=I64).reshape(40, 50),
    "summarized_int32": np.arange(5000, dtype=I32),
    "summarized_sci": _normal((50, 50), seed=14) * 1e6,
    # the formatter only sees the values shown: a hidden large value does not switch to sci mode
    "summarized_hidden_outlier": np.concatenate([np.ones(10, F32), np.full(2000, 1e9, F32),
                                                 np.ones(10, F32)]),
    # float64 wraps without conversion: it prints with its dtype like torch's double
    "float64_array": np.array([1.5, 2.0], np.float64),
}


def _torch_text(array: np.ndarray, requires_grad: bool = False) -> str:
    reference = torch.from_numpy(array.copy())
    reference.requires_grad_(requires_grad)
    return str(reference).replace("torch.", "pyengine.")


@pytest.mark.parametrize("name", CASES)
def test_repr_matches_torch(name):
    array = CASES[name]
    assert repr(pe.Tensor(array)) == _torch_text(array)
    assert str(pe.Tensor(array)) == _torch_text(array)


@pytest.mark.parametrize("name", [n for n, a in CASES.items() if a.dtype == F32])
def test_repr_with_requires_grad_matches_torch(name):
    array = CASES[name]
    assert repr(pe.Tensor(array, requires_grad=True)) == _torch_text(array, requires_grad=True)


def test_documented_examples():
    assert repr(pe.tensor([[1.0, 2.0], [3.0, 4.0]])) == "tensor([[1., 2.],\n        [3., 4.]])"
    assert repr(pe.tensor(3.5)) == "tensor(3.5000)"
    assert repr(pe.tensor([1, 2, 3])) == "tensor([1, 2, 3])"
    assert repr(pe.Tensor(np.array([1, 2], I32))) == "tensor([1, 2], dtype=pyengine.int32)"
    assert repr(pe.tensor([1.0], requires_grad=True)) == "tensor([1.], requires_grad=True)"


def test_summarized_shows_three_edge_items():
    text = repr(pe.Tensor(np.arange(2000, dtype=I64)))
    assert text == "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"


def test_random_arrays_match_torch():
    """Many random shapes and scales, each compared with torch."""
    rng = _rng(42)
    for trial in range(60):
        ndim = int(rng.integers(0, 4))
        shape = tuple(int(d) for d in rng.integers(1, 9, ndim))
        scale = float(10.0 ** rng.integers(-6, 9))
        array = np.asarray(rng.standard_normal(shape) * scale, dtype=F32)
        assert repr(pe.Tensor(array)) == _torch_text(array), f"trial {trial}: {shape}, x{scale}"


def test_suffix_wraps_by_the_longer_pyengine_name():
    """torch fits ', dtype=torch.int32' on the line (78 columns); the pyengine name
    would reach 81, so by torch's own 80-column rule it goes to the next line."""
    array = np.ones(17, I32)
    assert str(torch.from_numpy(array)).endswith("1], dtype=torch.int32)")
    expected = ("tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],\n"
                "       dtype=pyengine.int32)")
    assert repr(pe.Tensor(array)) == expected


def test_non_leaf_prints_requires_grad_where_torch_prints_grad_fn():
    """torch: tensor([2., 4.], grad_fn=<MulBackward0>); pyengine has no backward-class names."""
    x = pe.tensor([1.0, 2.0], requires_grad=True)
    assert repr(x * 2.0) == "tensor([2., 4.], requires_grad=True)"


def test_tensor_repr_takes_a_prefix_for_subclasses():
    text = tensor_repr(np.array([[1.0, 2.0], [3.0, 4.0]], F32), prefix="Parameter(")
    assert text == "Parameter([[1., 2.],\n           [3., 4.]])"


def test_repr_of_a_view_matches_its_values():
    base = _normal((6, 8), seed=15)
    view = base[::2, 1::3]
    assert not view.flags["C_CONTIGUOUS"]
    assert repr(pe.tensor(view)) == _torch_text(np.ascontiguousarray(view))  # Tensor(view) refuses: no copy


def test_parameter_repr_matches_torch():
    values = np.arange(6, dtype=F32).reshape(2, 3) / 7
    ours = repr(pe.nn.Parameter(values))
    assert ours == repr(torch.nn.Parameter(torch.tensor(values)))
