"""max, min, argmax, argmin, var and std against PyTorch (float64 autograd on
the same values), eagerly and replayed by pe.capture."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from torch_ref import F32, assert_forward_replay_is_bit_exact, assert_training_replay_is_bit_exact, compare, distinct

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.tensor import Tensor

EXACT = dict(atol=0, rtol=0)  # max and min select a value: forward and gradient are exact
VAR = dict(atol=1e-6, rtol=2e-5)  # float32 two-pass variance against float64


def _torch():
    return pytest.importorskip("torch")


# ------------------------------------------------------------------ max / min


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), ()], ids=str)
def test_extremum_over_all_elements(kind, shape):
    fn = lambda x: getattr(x, kind)()  # noqa: E731
    out, _ = compare([distinct(np.random.default_rng(0), *shape)], fn, fn, **EXACT)
    assert out.shape == ()


@pytest.mark.parametrize("kind", ["max", "min"])
def test_extremum_over_all_elements_spreads_gradient_over_ties(kind):
    # torch 2.x: max() / min() without dim share the gradient evenly among ties
    x = np.array([[1.0, 3.0, -2.0], [3.0, -2.0, 3.0]], dtype=F32)
    fn = lambda t: getattr(t, kind)() * 6.0  # noqa: E731
    _, (leaf,) = compare([x], fn, fn, **EXACT)
    expected = np.where(x == getattr(x, kind)(), 6.0 / (3 if kind == "max" else 2), 0.0)
    np.testing.assert_array_equal(leaf.grad.numpy(), expected)


def test_max_of_nan_is_nan_and_its_gradient_goes_to_the_nans():
    x = np.array([1.0, np.nan, 3.0, np.nan], dtype=F32)
    _, (leaf,) = compare([x], lambda t: t.max(), lambda t: t.max(), **EXACT)
    np.testing.assert_array_equal(leaf.grad.numpy(), [0.0, 0.5, 0.0, 0.5])


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("shape, dim", [((3, 4), 0), ((3, 4), 1), ((3, 4), -1), ((2, 3, 4), 1),
                                        ((2, 3, 4), -3), ((5,), 0)], ids=str)
def test_extremum_over_a_dim_returns_values_and_indices(kind, keepdim, shape, dim):
    torch = _torch()
    x = distinct(np.random.default_rng(1), *shape)
    out, _ = compare([x], lambda t: getattr(t, kind)(dim, keepdim=keepdim).values,
                     lambda t: getattr(t, kind)(dim, keepdim=keepdim).values, **EXACT)
    result = getattr(Tensor(x), kind)(dim=dim, keepdim=keepdim)
    expected = getattr(torch.from_numpy(x), kind)(dim=dim, keepdim=keepdim)
    values, indices = result  # a named tuple, as torch.return_types
    assert type(result).__name__ == kind and result.values is values and result.indices is indices
    assert indices.dtype == np.int64 and not indices.requires_grad
    np.testing.assert_array_equal(indices.numpy(), expected.indices.numpy())
    np.testing.assert_array_equal(values.numpy(), expected.values.numpy())


@pytest.mark.parametrize("kind", ["max", "min"])
def test_extremum_over_a_dim_with_ties_picks_the_first_and_sends_it_the_gradient(kind):
    torch = _torch()
    x = np.array([[2.0, 5.0, 5.0, -1.0], [-1.0, -1.0, 0.0, 5.0]], dtype=F32)
    fn = lambda t: getattr(t, kind)(1).values  # noqa: E731
    compare([x], fn, fn, **EXACT)
    ours = getattr(Tensor(x), kind)(1).indices.numpy()
    np.testing.assert_array_equal(ours, getattr(torch.from_numpy(x), kind)(1).indices.numpy())
    np.testing.assert_array_equal(ours, [1, 3] if kind == "max" else [3, 0])


def test_extremum_of_a_0d_tensor_over_dim_0():
    torch = _torch()
    for keepdim in (False, True):
        values, indices = Tensor(np.float32(2.5)).max(0, keepdim)
        expected = torch.tensor(2.5).max(0, keepdim)
        assert values.shape == tuple(expected.values.shape) and indices.shape == tuple(expected.indices.shape)
        assert values.item() == 2.5 and indices.item() == 0
    compare([np.float32(-1.5)], lambda t: t.min(-1).values, lambda t: t.min(-1).values, **EXACT)


# ------------------------------------------------------------------ argmax / argmin


@pytest.mark.parametrize("kind", ["argmax", "argmin"])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (None, True), (0, False), (1, True), (-1, False),
                                          (2, True)], ids=str)
def test_arg_reductions_match_torch(kind, dim, keepdim):
    torch = _torch()
    x = np.array([[[0.5, 2.0], [2.0, -3.0], [-3.0, 0.5]]], dtype=F32).repeat(2, axis=0)  # ties included
    x[1, 2, 1] = 7.0
    leaf = Tensor(x, requires_grad=True)
    out = getattr(leaf, kind)(dim=dim, keepdim=keepdim)
    expected = getattr(torch.from_numpy(x), kind)(dim=dim, keepdim=keepdim).numpy()
    assert out.dtype == np.int64 and out.shape == expected.shape and not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), expected)


def test_argmax_of_int_tensors_and_0d_tensors():
    np.testing.assert_array_equal(Tensor(np.array([[3, 9], [9, 1]])).argmax(1).numpy(), [1, 0])
    assert Tensor(np.float32(4.0)).argmin(0).item() == 0 and Tensor(np.float32(4.0)).argmax().shape == ()


# ------------------------------------------------------------------ var / std

VAR_CASES = [
    ((6,), {}),
    ((3, 5), {}),
    ((3, 5), {"dim": 0}),
    ((3, 5), {"dim": 1, "keepdim": True}),
    ((3, 5), {"dim": -1, "correction": 0}),
    ((2, 3, 4), {"dim": (0, 2)}),
    ((2, 3, 4), {"dim": [2, 1], "keepdim": True, "correction": 2}),
    ((2, 3, 4), {"dim": 1, "unbiased": False}),
    ((2, 3, 4), {"dim": None, "unbiased": True}),
    ((4, 3), {"correction": 0.5}),
]


@pytest.mark.parametrize("kind", ["var", "std"])
@pytest.mark.parametrize("shape, kwargs", VAR_CASES, ids=str)
def test_var_and_std_match_torch(kind, shape, kwargs):
    x = np.random.default_rng(2).standard_normal(shape).astype(F32) * 2.0 + 1.0
    fn = lambda t: getattr(t, kind)(**kwargs)  # noqa: E731
    compare([x], fn, fn, **VAR, grad_atol=1e-5, grad_rtol=1e-4)


def test_var_takes_unbiased_as_second_positional_argument_as_torch():
    torch = _torch()
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(F32)
    for args in ((1, False), (0, True, True)):
        np.testing.assert_allclose(Tensor(x).var(*args).numpy(), torch.from_numpy(x).double().var(*args).numpy(),
                                   **VAR)
        np.testing.assert_allclose(Tensor(x).std(*args).numpy(), torch.from_numpy(x).double().std(*args).numpy(),
                                   **VAR)


def test_var_with_no_degrees_of_freedom_is_nan_or_inf_and_warns():
    torch = _torch()
    for data, correction in (([2.0], 1), ([1.0, 2.0, 4.0], 3), ([1.0, 1.0], 5)):
        with pytest.warns(RuntimeWarning, match="degrees of freedom"):
            ours = Tensor(np.array(data, F32)).var(correction=correction).item()
        with pytest.warns(UserWarning):
            expected = torch.tensor(data).var(correction=correction).item()
        np.testing.assert_equal(ours, expected)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("call, error, name", [
    (lambda x: x.max(2), IndexError, "max"),
    (lambda x: x.min(-3), IndexError, "min"),
    (lambda x: x.max(dim=1.0), TypeError, "max"),
    (lambda x: x.max(keepdim=True), TypeError, "max"),
    (lambda x: x.max(x), TypeError, "max"),
    (lambda x: x.argmax(2), IndexError, "argmax"),
    (lambda x: x.argmin(dim=-3), IndexError, "argmin"),
    (lambda x: x.var(2), IndexError, "var"),
    (lambda x: x.std(dim=(0, 0)), ValueError, "std"),
    (lambda x: x.var(unbiased=True, correction=1), TypeError, "var"),
    (lambda x: x.var(0, 1), TypeError, "var"),
    (lambda x: x.std(correction="1"), TypeError, "std"),
    (lambda x: x[:0].max(), ValueError, "max"),
    (lambda x: x[:, :0].max(1), ValueError, "max"),
    (lambda x: x[:0].argmin(), ValueError, "argmin"),
])
def test_bad_arguments_raise_naming_the_function(call, error, name):
    with pytest.raises(error, match=name):
        call(Tensor(np.ones((3, 4), F32), requires_grad=True))


# ------------------------------------------------------------------ capture


class _PoolModel(nn.Module):
    """max-pooling over a dim, standardising by std, and max/min/var terms."""

    def __init__(self, seed=0):
        super().__init__()
        pe.manual_seed(seed)
        self.up = nn.Linear(6, 12)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.up(x).tanh()                                      # (B, 12)
        pooled = h.view(-1, 4, 3).max(dim=2).values                # (B, 4)
        centered = pooled - pooled.mean(axis=1, keepdims=True)
        scaled = centered / (pooled.std(dim=1, keepdim=True) + 1.0)
        logits = self.head(scaled)
        return logits, h


def _loss(model, x, y):
    logits, h = model(x)
    extra = h.max() * 0.1 - h.min(0).values.mean() * 0.2 + h.var(correction=0) * 0.3
    return F.cross_entropy(logits, y) + extra + h.min(1, keepdim=True).values.sum() * 0.01


def _batches(seed, n=3, batch=5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 6)).astype(F32), rng.integers(0, 3, batch).astype(np.int64))
            for _ in range(n)]


def test_training_replay_with_reductions_is_bit_exact():
    graph = assert_training_replay_is_bit_exact(lambda: _PoolModel(seed=1), _loss, _batches(2))
    names = [step.op.name for step in graph.steps]
    assert {"max", "min", "argmax", "argmin"} <= set(names)


def test_forward_replay_of_reductions_and_indices_is_bit_exact():
    model = _PoolModel(seed=3)
    inputs = [(x,) for x, _ in _batches(4)]
    assert_forward_replay_is_bit_exact(lambda x: model(x)[0].argmax(dim=1), inputs)
    assert_forward_replay_is_bit_exact(lambda x: model(x)[1].max(0).indices, inputs)
    assert_forward_replay_is_bit_exact(lambda x: x.std(0) + x.max() - x.var(1, keepdim=True).min(), inputs)


def test_replay_with_reductions_allocates_no_arrays():
    batch = 2048
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((batch, 6)).astype(F32), rng.integers(0, 3, batch).astype(np.int64)
    model = _PoolModel(seed=6)
    graph = pe.capture(lambda x, y: _loss(model, x, y), x, y, optimizer=pe.optim.SGD(model.parameters(), lr=0.1))
    graph.run(x, y)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        graph.run(x, y)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 80_000 < batch * 12 * 4  # no activation-sized temporary (numpy's iterator buffers only)
