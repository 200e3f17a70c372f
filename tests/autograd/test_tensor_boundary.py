"""The Tensor boundary: a numpy array is wrapped as it is (shared, never copied or cast) or refused
at once with the explicit fix named; the same rule at every entry point (Tensor, from_numpy,
tensor, Parameter, .grad, the optimizers, load_state_dict, pyengine.load)."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine import nn, optim
from pyengine.tensor import Tensor

F32 = np.float32


def _base():
    return np.arange(24, dtype=F32).reshape(4, 6)


# every class of array that a Tensor cannot share as it is: (array, error type, words of the message)
REFUSED = {
    "negative strides": (lambda: _base()[::-1], ValueError, ["not C-contiguous", "np.ascontiguousarray(a)"]),
    "transposed": (lambda: _base().T, ValueError, ["not C-contiguous", "(6, 4)"]),
    "sliced with a step": (lambda: _base()[:, ::2], ValueError, ["not C-contiguous", "strides"]),
    "Fortran order": (lambda: np.asfortranarray(_base()), ValueError, ["not C-contiguous"]),
    "big-endian": (lambda: _base().astype(">f4"), TypeError, ["byte order", "a.astype('<f4')"]),
    "big-endian int": (lambda: np.arange(3, dtype=">i8"), TypeError, ["byte order", "'<i8'"]),
    "object": (lambda: np.array([1.0, "x"], dtype=object), TypeError, ["dtype object"]),
    "strings": (lambda: np.array(["a", "b"]), TypeError, ["<U1"]),
    "complex": (lambda: np.ones(3, np.complex64), TypeError, ["complex64"]),
    "structured": (lambda: np.zeros(2, dtype=[("a", F32)]), TypeError, ["dtype"]),
    "masked": (lambda: np.ma.masked_array(np.ones(3, F32), mask=[0, 1, 0]), TypeError, ["mask", "filled"]),
}


def _assign_data(array):
    Tensor(np.zeros(3, F32)).data = array


@pytest.mark.parametrize("entry", ["Tensor", "from_numpy", "Parameter", "Tensor.data"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_an_array_a_tensor_cannot_share_is_refused_naming_the_fix(case, entry):
    make, error, words = REFUSED[case]
    array = make()
    call = {"Tensor": Tensor, "from_numpy": pe.from_numpy, "Parameter": nn.Parameter,
            "Tensor.data": _assign_data}[entry]
    with pytest.raises((TypeError, ValueError)) as info:
        call(array)
    message = str(info.value)
    assert message.startswith(entry) and isinstance(info.value, error), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("case", [c for c in REFUSED if c not in ("object", "strings", "structured", "masked")])
def test_the_named_fix_works_and_tensor_copies_any_layout(case):
    array = REFUSED[case][0]()
    fixed = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("="))
    np.testing.assert_array_equal(Tensor(fixed).numpy(), array) if array.dtype.kind != "c" else None
    if array.dtype.kind == "c":
        with pytest.raises(TypeError, match="tensor"):
            pe.tensor(array)
        return
    copy = pe.tensor(array)  # the explicit copy: C-contiguous, native, the same dtype and values
    assert copy.numpy().flags.c_contiguous and copy.dtype.isnative and not np.shares_memory(copy.numpy(), array)
    assert copy.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(copy.numpy(), array)


# every class of array a Tensor holds as it is: shared, the dtype kept
HELD = {
    "float32": lambda: _base(),
    "0-d": lambda: np.array(2.5, F32),
    "empty": lambda: np.zeros((0, 3), F32),
    "float64": lambda: _base().astype(np.float64),
    "int64": lambda: np.arange(4),
    "int32": lambda: np.arange(4, dtype=np.int32),
    "uint8": lambda: np.arange(4, dtype=np.uint8),
    "bool": lambda: np.array([True, False]),
    "read-only": lambda: np.frombuffer(_base().tobytes(), F32),
    "a contiguous slice": lambda: _base()[1:3],
    "matrix subclass": lambda: _base().view(np.matrix),
}


@pytest.mark.parametrize("case", list(HELD))
def test_an_array_a_tensor_can_hold_is_shared_not_copied(case):
    array = HELD[case]()
    for t in (Tensor(array), pe.from_numpy(array)):
        assert type(t.numpy()) is np.ndarray and t.dtype == array.dtype and t.shape == array.shape
        assert np.shares_memory(t.numpy(), array) or array.size == 0
        assert t.numpy().__array_interface__["data"][0] == array.__array_interface__["data"][0]


def test_a_tensor_given_is_shared_and_lists_are_converted():
    x = Tensor(_base())
    assert Tensor(x).numpy() is x.numpy()
    assert Tensor([1.0, 2.0]).dtype == F32 and Tensor([1, 2]).dtype == np.int64 and Tensor(3.0).shape == ()
    assert Tensor([True]).dtype == np.bool_
    with pytest.raises(TypeError, match="Tensor: cannot hold list data of numpy dtype <U1"):
        Tensor(["a"])
    with pytest.raises(TypeError, match="Tensor: cannot hold"):
        Tensor(object())


def test_a_float64_tensor_is_held_but_math_and_grad_need_float32():
    x = Tensor(np.ones(3))
    with pytest.raises(TypeError, match="^add: .*float32"):
        x + x
    with pytest.raises(TypeError, match="float32"):
        Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="from_numpy: expected a numpy array"):
        pe.from_numpy([1.0])


def test_tensor_copies_with_an_explicit_dtype_only():
    x = np.arange(6, dtype=np.float64).reshape(2, 3).T
    assert pe.tensor(x).dtype == np.float64
    cast = pe.tensor(x, dtype=F32, requires_grad=True)
    assert cast.dtype == F32 and cast.requires_grad
    np.testing.assert_array_equal(cast.numpy(), x)
    np.testing.assert_array_equal(pe.tensor(x[::-1].astype(">f4")).numpy(), x[::-1])


def test_parameter_takes_float32_arrays_as_they_are():
    array = np.ones(3, F32)
    p = nn.Parameter(array)
    assert p.numpy() is array and p.requires_grad
    assert nn.Parameter([1, 2]).dtype == F32
    with pytest.raises(TypeError, match=r"Parameter: must be float32, got dtype float64; pass a.astype\(np.float32\)"):
        nn.Parameter(np.ones(3))
    with pytest.raises(ValueError, match=r"Parameter: the array is read-only .* a.copy\(\)"):
        nn.Parameter(np.frombuffer(np.ones(3, F32).tobytes(), F32))


def test_grad_follows_the_same_rule():
    x = Tensor(np.ones((2, 2), F32), requires_grad=True)
    with pytest.raises(ValueError, match="Tensor.grad: .*not C-contiguous"):
        x.grad = np.ones((2, 2), F32).T
    with pytest.raises(TypeError, match="Tensor.grad: must be float32"):
        x.grad = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"Tensor.grad: must have the tensor's shape \(2, 2\)"):
        x.grad = np.ones(4, F32)
    x.grad = np.full((2, 2), 3.0, F32)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 2), 3.0))


@pytest.mark.parametrize("opt", [optim.SGD, optim.Adam, optim.AdamW])
def test_optimizers_refuse_parameters_they_could_not_update_at_construction(opt):
    read_only = Tensor(np.frombuffer(np.ones(3, F32).tobytes(), F32), requires_grad=True)
    with pytest.raises(ValueError, match=f"{opt.__name__}: a parameter of shape \\(3,\\) is read-only"):
        opt([read_only], lr=0.1)
    with pytest.raises(TypeError, match=f"{opt.__name__}: can only optimize float32 Tensors, got float64"):
        opt([Tensor(np.ones(3))], lr=0.1)


def test_load_state_dict_copies_any_layout_and_byte_order():
    model = nn.Linear(3, 2)
    weight = np.arange(6, dtype=F32).reshape(3, 2).T  # transposed, not C-contiguous
    bias = np.array([1.0, -1.0], dtype=">f4")
    model.load_state_dict({"weight": weight, "bias": bias})
    np.testing.assert_array_equal(model.weight.numpy(), weight)
    np.testing.assert_array_equal(model.bias.numpy(), [1.0, -1.0])
    assert model.weight.numpy().flags.c_contiguous and model.bias.dtype == F32


def test_load_gives_tensors_a_tensor_can_hold(tmp_path):
    path = tmp_path / "mixed.safetensors"
    pe.save({"be": np.arange(4, dtype=">f4"), "t": np.ones((2, 3), F32).T, "i": np.arange(3, dtype=np.int32)}, path)
    loaded = pe.load(path)
    for name, t in loaded.items():
        assert t.numpy().flags.c_contiguous and t.numpy().flags.writeable and t.dtype.isnative, name
    np.testing.assert_array_equal(loaded["be"].numpy(), np.arange(4))
    assert loaded["t"].shape == (3, 2) and loaded["i"].dtype == np.int32


# ---- Tensor.data assignment (torch's t.data = value): checked as Tensor() checks


def test_data_assignment_shares_the_array_and_may_change_the_shape():
    t = Tensor(np.zeros((2, 3), F32), requires_grad=True)
    (t * 2.0).sum().backward()
    same = np.ones((2, 3), F32)
    t.data = same
    assert t.data is same and t.grad is not None  # shared, as Tensor() shares; the gradient kept
    bigger = np.ones((4, 5), F32)
    t.data = bigger  # a new shape, as torch allows: the gradient of the old one dropped
    assert t.shape == (4, 5) and t.data is bigger and t.grad is None
    t.data = Tensor(np.full(2, 3.0, F32))  # a Tensor's array is shared
    np.testing.assert_array_equal(t.numpy(), [3.0, 3.0])
    t.data = [1.0, 2.0]  # a list is converted as Tensor() converts it (floats to float32)
    assert t.dtype == F32


@pytest.mark.parametrize("value", [np.zeros(3), np.zeros(3, np.int64), [1, 2, 3], True])
def test_data_assignment_keeps_the_dtype(value):
    t = Tensor(np.zeros(3, F32), requires_grad=True)
    with pytest.raises(TypeError, match=r"Tensor\.data: got dtype \w+ for a tensor of dtype float32"):
        t.data = value
    assert t.dtype == F32


@pytest.mark.parametrize("value", [None, object(), "abc", {"a": 1}])
def test_data_assignment_of_a_non_array_is_a_type_error(value):
    t = Tensor(np.zeros(3, F32))
    with pytest.raises(TypeError, match=r"Tensor\.data"):
        t.data = value


def _captured():
    w = nn.Parameter(np.ones((2, 2), F32))
    scale = Tensor(np.full((3, 2), 2.0, F32))  # a constant the graph reads in place
    graph = pe.capture(lambda x: ((x * scale) @ w).sum(), np.ones((3, 2), F32))
    return graph, w, scale


@pytest.mark.parametrize("which", ["parameter", "constant"])
def test_data_of_a_tensor_a_captured_graph_holds_keeps_its_shape(which):
    graph, w, scale = _captured()
    t = w if which == "parameter" else scale
    before = t.data
    with pytest.raises(ValueError, match=r"Tensor\.data: got shape \(5, 5\) for a tensor of shape \(\d, 2\)"):
        t.data = np.ones((5, 5), F32)
    assert t.data is before
    # the same shape is copied into the array the graph reads: the replay sees it
    t.data = np.full(t.shape, 3.0, F32)
    assert t.data is before and (before == 3.0).all()
    expected = {"parameter": 3 * 2 * 2 * 3.0 * 2, "constant": 3 * 2 * 2 * 3.0}[which]
    assert graph.run(np.ones((3, 2), F32)).item() == expected


def test_data_shape_is_free_again_once_the_graph_is_gone():
    import gc
    graph, w, _ = _captured()
    del graph
    gc.collect()
    w.data = np.ones((5, 5), F32)
    assert w.shape == (5, 5)
