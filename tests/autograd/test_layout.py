"""Views, transposes and indexing against PyTorch (float64 autograd on the
same values), eagerly and replayed by pe.capture."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from torch_ref import F32, assert_forward_replay_is_bit_exact, assert_training_replay_is_bit_exact, compare

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.tensor import Tensor

pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")  # torch, on T of 1-D

# Copies are exact; a gradient that sums overlapping regions rounds once in float32.
EXACT = dict(atol=0, rtol=0)
SUMMED = dict(atol=1e-6, rtol=1e-6)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


# ------------------------------------------------------------------ views

VIEWS = {
    "view(-1)": ((3, 4), lambda x: x.view(-1)),
    "view(2,-1,3)": ((3, 4), lambda x: x.view(2, -1, 3)),
    "view((6,2))": ((3, 4), lambda x: x.view((6, 2))),
    "unsqueeze(0)": ((3, 4), lambda x: x.unsqueeze(0)),
    "unsqueeze(-1)": ((3, 4), lambda x: x.unsqueeze(-1)),
    "unsqueeze(1)": ((3, 4), lambda x: x.unsqueeze(1)),
    "unsqueeze 0-d": ((), lambda x: x.unsqueeze(0)),
    "squeeze()": ((1, 3, 1, 4), lambda x: x.squeeze()),
    "squeeze(2)": ((1, 3, 1, 4), lambda x: x.squeeze(2)),
    "squeeze(-4)": ((1, 3, 1, 4), lambda x: x.squeeze(-4)),
    "squeeze(1) keeps size 3": ((1, 3, 1, 4), lambda x: x.squeeze(1)),
    "squeeze((0,2))": ((1, 3, 1, 4), lambda x: x.squeeze((0, 2))),
    "flatten()": ((2, 3, 4), lambda x: x.flatten()),
    "flatten(1)": ((2, 3, 4), lambda x: x.flatten(1)),
    "flatten(0,1)": ((2, 3, 4), lambda x: x.flatten(0, 1)),
    "flatten(-2,-1)": ((2, 3, 4), lambda x: x.flatten(-2, -1)),
    "flatten 0-d": ((), lambda x: x.flatten()),
}


@pytest.mark.parametrize("case", list(VIEWS))
def test_view_ops_match_torch_and_share_memory(case):
    shape, fn = VIEWS[case]
    out, (x,) = compare([_x(*shape)], fn, fn, **EXACT)
    assert out._node.op.is_view
    assert np.shares_memory(out.numpy(), x.numpy())  # zero-copy


def test_views_chain_and_accumulate_into_one_gradient():
    fn = lambda x: x.view(-1) * 2.0 + x.flatten() + x.unsqueeze(0).squeeze(0).view(12)  # noqa: E731
    compare([_x(3, 4)], fn, fn, **SUMMED)


# ------------------------------------------------------------------ copies

COPIES = {
    "T 2-D": ((3, 4), lambda x: x.T),
    "T 1-D": ((5,), lambda x: x.T),
    "mT 2-D": ((3, 4), lambda x: x.mT),
    "mT 3-D": ((2, 3, 4), lambda x: x.mT),
    "transpose(0,1)": ((3, 4), lambda x: x.transpose(0, 1)),
    "transpose(0,2)": ((2, 3, 4), lambda x: x.transpose(0, 2)),
    "transpose(-1,-2)": ((2, 3, 4), lambda x: x.transpose(-1, -2)),
    "transpose(1,1)": ((2, 3, 4), lambda x: x.transpose(1, 1)),
    "permute(2,0,1)": ((2, 3, 4), lambda x: x.permute(2, 0, 1)),
    "permute((1,0))": ((3, 4), lambda x: x.permute((1, 0))),
    "permute(-1,0,1)": ((2, 3, 4), lambda x: x.permute(-1, 0, 1)),
}


@pytest.mark.parametrize("case", list(COPIES))
def test_transposes_match_torch_and_are_contiguous_copies(case):
    shape, fn = COPIES[case]
    out, (x,) = compare([_x(*shape)], fn, fn, **EXACT)
    assert out.numpy().flags.c_contiguous and not np.shares_memory(out.numpy(), x.numpy())


def test_T_reverses_every_dim_and_contiguous_is_identity():
    x = Tensor(_x(2, 3, 4))
    assert x.T.shape == (4, 3, 2)
    np.testing.assert_array_equal(x.T.numpy(), x.numpy().transpose(2, 1, 0))
    assert x.contiguous() is x


INDICES = {
    "[0]": ((3, 4), lambda x: x[0]),
    "[:, 1:]": ((3, 4), lambda x: x[:, 1:]),
    "[..., :2]": ((2, 3, 4), lambda x: x[..., :2]),
    "[:, -1]": ((3, 4), lambda x: x[:, -1]),
    "[::2]": ((5, 4), lambda x: x[::2]),
    "[1:4:2, ::3]": ((5, 7), lambda x: x[1:4:2, ::3]),
    "[-1]": ((3, 4), lambda x: x[-1]),
    "[None, 1]": ((3, 4), lambda x: x[None, 1]),
    "[1, ..., None]": ((2, 3, 4), lambda x: x[1, ..., None]),
    "[0, 2] 0-d": ((3, 4), lambda x: x[0, 2]),
    "[..., 1, :]": ((2, 3, 4), lambda x: x[..., 1, :]),
    "[:, 10:] empty": ((3, 4), lambda x: x[:, 10:]),
    "[np.int64(1)]": ((3, 4), lambda x: x[np.int64(1)]),
}


@pytest.mark.parametrize("case", list(INDICES))
def test_basic_indexing_matches_torch(case):
    shape, fn = INDICES[case]
    out, (x,) = compare([_x(*shape)], fn, fn, **EXACT)
    assert out.numpy().flags.c_contiguous and not np.shares_memory(out.numpy(), x.numpy())


def test_overlapping_indices_add_their_gradients():
    def fn(x):
        return x[0] * 3.0 + x[:, 0] + x[1:, ::2].sum() + x[2][1:].sum()
    compare([_x(4, 4)], fn, fn, **SUMMED)


def test_indexing_int_tensors_keeps_dtype():
    y = Tensor(np.arange(12).reshape(3, 4))
    assert y[1, 1:].dtype == np.int64
    np.testing.assert_array_equal(y[:, -1].numpy(), [3, 7, 11])


def test_len_and_iteration_yield_rows_with_gradients():
    torch = pytest.importorskip("torch")
    data = _x(3, 2)
    x = Tensor(data.copy(), requires_grad=True)
    assert len(x) == 3
    rows = list(x)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    for row, expected in zip(x, data):
        np.testing.assert_array_equal(row.numpy(), expected)
    (rows[0] * 2.0 + rows[2]).sum().backward()
    t = torch.tensor(data, requires_grad=True)
    (list(t)[0] * 2.0 + list(t)[2]).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
    with pytest.raises(TypeError, match="0-d"):
        iter(Tensor(np.float32(1.0)))
    with pytest.raises(TypeError):
        len(Tensor(np.float32(1.0)))


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("index", [True, 1.5, np.array([True, False, True]), (0, [1], [0]), slice(0.5, 2)],
                         ids=repr)
def test_unsupported_indices_raise_type_error(index):
    """Integer index arrays work (tests/autograd/test_join_select.py); bool masks,
    floats and two arrays do not. An index of the wrong type is an IndexError, as torch says."""
    error = IndexError if isinstance(index, (bool, float)) else TypeError
    with pytest.raises(error, match="__getitem__"):
        Tensor(_x(3, 4))[index]


@pytest.mark.parametrize("index", [3, -4, (0, 4), (0, 0, 0), (..., ...)], ids=repr)
def test_out_of_range_index_raises_index_error(index):
    with pytest.raises(IndexError, match="__getitem__"):
        Tensor(_x(3, 4))[index]


def test_zero_slice_step_raises_value_error_as_torch():
    with pytest.raises(ValueError, match="__getitem__: slice step"):
        Tensor(_x(3, 4))[::0]


@pytest.mark.parametrize("call, error, name", [
    (lambda x: x.unsqueeze(3), IndexError, "unsqueeze"),
    (lambda x: x.unsqueeze(-4), IndexError, "unsqueeze"),
    (lambda x: x.squeeze(2), IndexError, "squeeze"),
    (lambda x: x.squeeze((0, 0)), ValueError, "squeeze"),
    (lambda x: x.flatten(1, 0), ValueError, "flatten"),
    (lambda x: x.flatten(0, 2), IndexError, "flatten"),
    (lambda x: x.view(5, -1), ValueError, "view"),
    (lambda x: x.view(-1, -1), ValueError, "view"),
    (lambda x: x.permute(0, 0), ValueError, "permute"),
    (lambda x: x.permute(0), ValueError, "permute"),
    (lambda x: x.permute(0, 2), IndexError, "permute"),
    (lambda x: x.transpose(0, 2), IndexError, "transpose"),
    (lambda x: x.transpose(0, 1.0), TypeError, "transpose"),
    (lambda x: x.unsqueeze("0"), TypeError, "unsqueeze"),
    (lambda x: x[0].mT, ValueError, "mT"),
])
def test_bad_dims_raise_naming_the_function(call, error, name):
    with pytest.raises(error, match=name):
        call(Tensor(_x(3, 4)))


# ------------------------------------------------------------------ capture


def _chain(h):
    """Every layout op, on a (B, 2, 8) tensor: the same code runs on pyengine and torch tensors."""
    h = h.tanh().transpose(1, 2).unsqueeze(1)     # (B, 1, 8, 2)
    h = h.flatten(2).squeeze(1)                   # (B, 16)
    h = h[:, ::2] + h[:, 1::2] * 0.5              # (B, 8)
    h = h.view(-1, 2, 4).permute(0, 2, 1).mT      # (B, 2, 4)
    h = h[:, 0] * h[:, -1] + h[..., :4][:, 1]     # (B, 4)
    return h.T.T.contiguous()


class _LayoutModel(nn.Module):
    """The layout chain between two linear layers, on (batch, 2, 6) inputs."""

    def __init__(self, seed=0):
        super().__init__()
        pe.manual_seed(seed)
        self.up = nn.Linear(6, 8)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(_chain(self.up(x)))


def _batches(seed, n=3, batch=5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 2, 6)).astype(F32), rng.integers(0, 3, batch).astype(np.int64))
            for _ in range(n)]


def test_layout_chain_matches_torch():
    compare([_x(5, 2, 8)], _chain, _chain, atol=1e-6, rtol=1e-5)


def test_training_replay_with_layout_ops_is_bit_exact():
    graph = assert_training_replay_is_bit_exact(
        lambda: _LayoutModel(seed=3), lambda m, x, y: F.cross_entropy(m(x), y), _batches(4))
    names = {step.op.name for step in graph.steps}
    assert {"transpose", "getitem", "permute", "mT", "T", "view", "flatten", "squeeze", "unsqueeze"} <= names


def test_forward_replay_with_layout_ops_is_bit_exact():
    model = _LayoutModel(seed=5)
    assert_forward_replay_is_bit_exact(lambda x: model(x), [(x,) for x, _ in _batches(6)])
    index_fn = lambda y: y[1:][::2, None]  # noqa: E731 - int64 through the executor
    assert_forward_replay_is_bit_exact(index_fn, [(np.arange(7) * k,) for k in (1, 3)])


def test_replay_with_layout_ops_allocates_no_arrays():
    """Replay allocates no numpy arrays; the only transients are numpy's own
    ufunc iterator buffers (at most 8192 elements per operand, whatever the
    size) in the strided backward adds, far below one activation here."""
    batch = 2048
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((batch, 2, 6)).astype(F32), rng.integers(0, 3, batch).astype(np.int64)
    model = _LayoutModel(seed=8)
    graph = pe.capture(lambda x, y: F.cross_entropy(model(x), y), x, y,
                       optimizer=pe.optim.SGD(model.parameters(), lr=0.1))
    graph.run(x, y)
    domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(domain)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        graph.run(x, y)
        peak = tracemalloc.get_traced_memory()[1] - base
        after = tracemalloc.take_snapshot().filter_traces(domain)
    finally:
        tracemalloc.stop()
    assert sum(max(st.size_diff, 0) for st in after.compare_to(before, "lineno")) == 0
    activation = batch * 16 * 4  # bytes of the (batch, 16) flattened activation
    assert peak < 80_000 < activation
