"""cat, stack, split, chunk, masked_fill, where, tril / triu and integer-array
indexing: against PyTorch (float64 autograd on the same values) and float64
numpy, by central finite differences, their errors, and replayed by pe.capture."""

from __future__ import annotations

import numpy as np
import pytest
from torch_ref import F32, F64, assert_forward_replay_is_bit_exact, assert_training_replay_is_bit_exact, compare

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.tensor import Tensor

torch = pytest.importorskip("torch")

EXACT = dict(atol=0, rtol=0)
SUMMED = dict(atol=1e-6, rtol=1e-6)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _mask(*shape, seed=1):
    return np.random.default_rng(seed).random(shape) < 0.4


def _torch_mask(mask):
    return torch.from_numpy(np.ascontiguousarray(mask))


# ------------------------------------------------------------------ cat and stack

JOINS = {
    "cat dim 0": ([(2, 3), (4, 3), (1, 3)], lambda *xs: pe.cat(xs, 0), lambda *xs: torch.cat(xs, 0)),
    "cat dim 1": ([(2, 3), (2, 1)], lambda *xs: pe.cat(list(xs), dim=1), lambda *xs: torch.cat(xs, dim=1)),
    "cat dim -1 3-D": ([(2, 3, 4), (2, 3, 2)], lambda *xs: pe.cat(xs, -1), lambda *xs: torch.cat(xs, -1)),
    "cat one": ([(2, 3)], lambda x: pe.cat([x], 1), lambda x: torch.cat([x], 1)),
    "cat empty piece": ([(2, 3), (0, 3)], lambda *xs: pe.cat(xs), lambda *xs: torch.cat(xs)),
    "cat legacy 1-D empty": ([(2, 3), (0,)], lambda *xs: pe.cat(xs), lambda *xs: torch.cat(xs)),
    "concat": ([(3,), (2,)], lambda *xs: pe.concat(xs), lambda *xs: torch.concat(xs)),
    "stack dim 0": ([(2, 3)] * 3, lambda *xs: pe.stack(xs), lambda *xs: torch.stack(xs)),
    "stack dim 1": ([(2, 3)] * 2, lambda *xs: pe.stack(xs, 1), lambda *xs: torch.stack(xs, 1)),
    "stack dim -1": ([(2, 3)] * 2, lambda *xs: pe.stack(xs, -1), lambda *xs: torch.stack(xs, -1)),
    "stack 1-D": ([(2,)] * 3, lambda *xs: pe.stack(xs), lambda *xs: torch.stack(xs)),
}


@pytest.mark.parametrize("case", list(JOINS))
def test_joins_match_torch(case):
    shapes, pe_fn, torch_fn = JOINS[case]
    arrays = [_x(*s, seed=i) for i, s in enumerate(shapes)]
    out, _ = compare(arrays, pe_fn, torch_fn, **EXACT)
    ref = (np.concatenate if case.startswith(("cat", "concat")) else np.stack)
    if "legacy" not in case:
        axis = 1 if "dim 1" in case else -1 if "dim -1" in case else 0
        np.testing.assert_array_equal(out.numpy(), ref([a.astype(F64) for a in arrays], axis=axis))


def test_a_tensor_joined_with_itself_gets_both_gradients():
    fn = lambda x: pe.cat([x, x * 2.0], 1) if isinstance(x, Tensor) else torch.cat([x, x * 2.0], 1)  # noqa: E731
    compare([_x(2, 3)], fn, fn, **SUMMED)
    fn = lambda x: pe.stack([x, x]) if isinstance(x, Tensor) else torch.stack([x, x])  # noqa: E731
    compare([_x(2, 3)], fn, fn, **SUMMED)


def test_int_tensors_join_and_keep_their_dtype():
    a, b = Tensor(np.arange(3)), Tensor(np.arange(2))
    assert pe.cat([a, b]).dtype == np.int64
    np.testing.assert_array_equal(pe.stack([a, a], 1).numpy(), np.stack([np.arange(3)] * 2, 1))
    assert pe.stack([Tensor(np.float32(1)), Tensor(np.float32(2))]).numpy().tolist() == [1.0, 2.0]  # 0-d


# ------------------------------------------------------------------ split and chunk

PIECES = {
    "split 2 dim 0": ((5, 3), lambda x: x.split(2), lambda x: x.split(2)),
    "split sections dim 0": ((6, 2), lambda x: x.split([1, 0, 5]), lambda x: x.split([1, 0, 5])),
    "split 2 dim 1": ((3, 5), lambda x: x.split(2, dim=1), lambda x: x.split(2, dim=1)),
    "split sections dim -1": ((2, 3, 4), lambda x: x.split([3, 1], -1), lambda x: x.split([3, 1], -1)),
    "split size above dim": ((3, 2), lambda x: x.split(5), lambda x: x.split(5)),
    "split of dim 1 after size-1 dim": ((1, 6, 2), lambda x: x.split(4, 1), lambda x: x.split(4, 1)),
    "chunk 3 dim 0": ((7, 2), lambda x: x.chunk(3), lambda x: x.chunk(3)),
    "chunk 4 of 5": ((5,), lambda x: x.chunk(4), lambda x: x.chunk(4)),
    "chunk 2 dim 1": ((2, 4), lambda x: x.chunk(2, 1), lambda x: x.chunk(2, 1)),
    "function split": ((4, 2), lambda x: pe.split(x, 3), lambda x: torch.split(x, 3)),
    "function chunk": ((4, 2), lambda x: pe.chunk(x, 2, 1), lambda x: torch.chunk(x, 2, 1)),
}


def _weighted(pieces):
    """A scalar that weighs every piece differently, so that each piece's gradient shows."""
    total = None
    for k, piece in enumerate(pieces):
        term = (piece * float(k + 1)).sum()
        total = term if total is None else total + term
    return total


@pytest.mark.parametrize("case", list(PIECES))
def test_pieces_match_torch(case):
    shape, pe_fn, torch_fn = PIECES[case]
    x = _x(*shape)
    pieces, expected = pe_fn(Tensor(x)), torch_fn(torch.from_numpy(x))
    assert isinstance(pieces, tuple) and len(pieces) == len(expected)
    for piece, ref in zip(pieces, expected):
        np.testing.assert_array_equal(piece.numpy(), ref.numpy())
    compare([x], lambda t: _weighted(pe_fn(t)), lambda t: _weighted(torch_fn(t)), **SUMMED)


def test_split_pieces_are_views_where_contiguous_and_copies_elsewhere():
    x = Tensor(_x(6, 4))
    for piece in x.split([2, 4]):
        assert piece._node is None or piece._node.op.is_view
        assert np.shares_memory(piece.numpy(), x.numpy())
    for piece in x.split(2, dim=1):
        assert piece.numpy().flags.c_contiguous and not np.shares_memory(piece.numpy(), x.numpy())
    y = Tensor(_x(1, 6, 2))
    assert all(np.shares_memory(p.numpy(), y.numpy()) for p in y.split(3, dim=1))


def test_chunk_of_an_empty_dim_gives_empty_pieces_as_torch():
    pieces = Tensor(np.zeros(0, F32)).chunk(3)
    assert [p.shape for p in pieces] == [tuple(t.shape) for t in torch.zeros(0).chunk(3)]


# ------------------------------------------------------------------ masked_fill, where, tril, triu

SELECTS = {
    "masked_fill full mask": ([(3, 4)], lambda x: x.masked_fill(_mask(3, 4), -2.5),
                              lambda x: x.masked_fill(_torch_mask(_mask(3, 4)), -2.5)),
    "masked_fill broadcast mask": ([(2, 3, 4)], lambda x: x.masked_fill(Tensor(_mask(3, 1)), 1e9),
                                   lambda x: x.masked_fill(_torch_mask(_mask(3, 1)), 1e9)),
    "masked_fill -inf causal": ([(4, 4)], lambda x: x.masked_fill(np.triu(np.ones((4, 4), bool), 1), float("-inf"))
                                .softmax(), lambda x: x.masked_fill(_torch_mask(np.triu(np.ones((4, 4), bool), 1)),
                                                                    float("-inf")).softmax(-1)),
    "where same shapes": ([(3, 4), (3, 4)], lambda x, y: pe.where(_mask(3, 4), x, y),
                          lambda x, y: torch.where(_torch_mask(_mask(3, 4)), x, y)),
    "where broadcast": ([(3, 1), (4,)], lambda x, y: pe.where(Tensor(_mask(2, 3, 4)), x, y),
                        lambda x, y: torch.where(_torch_mask(_mask(2, 3, 4)), x, y)),
    "where cond broadcast": ([(3, 4), (3, 4)], lambda x, y: pe.where(_mask(4), x, y),
                             lambda x, y: torch.where(_torch_mask(_mask(4)), x, y)),
    "where scalar y": ([(3, 4)], lambda x: pe.where(_mask(3, 4), x, 0.5),
                       lambda x: torch.where(_torch_mask(_mask(3, 4)), x, 0.5)),
    "where scalar x": ([(2, 4)], lambda y: pe.where(_mask(3, 2, 1), -1.0, y),
                       lambda y: torch.where(_torch_mask(_mask(3, 2, 1)), -1.0, y)),
    "tril": ([(4, 5)], lambda x: x.tril(), lambda x: x.tril()),
    "tril diagonal 1": ([(2, 4, 3)], lambda x: pe.tril(x, diagonal=1), lambda x: torch.tril(x, diagonal=1)),
    "tril diagonal -2": ([(4, 4)], lambda x: x.tril(-2), lambda x: x.tril(-2)),
    "triu": ([(3, 5)], lambda x: x.triu(), lambda x: x.triu()),
    "triu diagonal 2": ([(2, 3, 4)], lambda x: pe.triu(x, 2), lambda x: torch.triu(x, 2)),
    "triu diagonal -1": ([(4, 3)], lambda x: x.triu(diagonal=-1), lambda x: x.triu(diagonal=-1)),
}


@pytest.mark.parametrize("case", list(SELECTS))
def test_selections_match_torch(case):
    shapes, pe_fn, torch_fn = SELECTS[case]
    tol = dict(atol=1e-6, rtol=1e-5) if "softmax" in case or "causal" in case else SUMMED
    compare([_x(*s, seed=i) for i, s in enumerate(shapes)], pe_fn, torch_fn, **tol)


def test_selections_match_float64_numpy():
    x, y, m = _x(3, 4), _x(4, seed=2), _mask(3, 4)
    np.testing.assert_array_equal(Tensor(x).masked_fill(m, 7.0).numpy(), np.where(m, 7.0, x.astype(F64)))
    np.testing.assert_array_equal(pe.where(m, Tensor(x), Tensor(y)).numpy(), np.where(m, x, y))
    np.testing.assert_array_equal(pe.tril(Tensor(x), 1).numpy(), np.tril(x, 1))
    np.testing.assert_array_equal(pe.triu(Tensor(x), -1).numpy(), np.triu(x, -1))
    assert Tensor(np.full((2, 2), np.nan, F32)).tril().numpy()[0, 1] == 0  # zeros, not NaN * 0


def test_int_masked_fill_where_and_tril_keep_dtype():
    a = Tensor(np.arange(6).reshape(2, 3))
    assert a.masked_fill(np.array([True, False, True]), -1).numpy().tolist() == [[-1, 1, -1], [-1, 4, -1]]
    assert pe.where(np.array([True, False, True]), a, 0).dtype == np.int64
    assert a.tril().numpy().tolist() == [[0, 0, 0], [3, 4, 0]]


# ------------------------------------------------------------------ indexing

INDICES = {
    "[::-1]": ((5, 3), lambda x: x[::-1]),
    "[:, ::-2]": ((3, 5), lambda x: x[:, ::-2]),
    "[3:0:-1, -1]": ((5, 3), lambda x: x[3:0:-1, -1]),
    "[None, ..., ::-1]": ((2, 3), lambda x: x[None, ..., ::-1]),
    "[idx]": ((5, 3), lambda x: x[np.array([4, 0, -1, 4])]),
    "[idx 2-D]": ((5, 3), lambda x: x[np.array([[1, 2], [2, 0]])]),
    "[:, idx]": ((3, 5), lambda x: x[:, np.array([0, 4, 4])]),
    "[..., idx]": ((2, 3, 4), lambda x: x[..., np.array([3, 1])]),
    "[1, idx]": ((3, 4), lambda x: x[1, np.array([0, 0, 2])]),
    "[0, :, idx]": ((2, 3, 4), lambda x: x[0, :, np.array([1, 3])]),
    "[list]": ((4, 2), lambda x: x[[3, 1]]),
    "[idx, None, 1:]": ((4, 3), lambda x: x[np.array([2, 2]), None, 1:]),
    "[int tensor]": ((4, 2), lambda x: x[Tensor(np.array([1, 3, 1]))]),
    "[empty idx]": ((4, 2), lambda x: x[np.zeros(0, np.int64)]),
}


# numpy moves the array's dims first when an int and the array are apart (x[0, :, idx] is (2, 3));
# PyTorch applies the int first, as pyengine does ((3, 2)). An int Tensor index is not numpy's.
NUMPY_DIFFERS = {"[0, :, idx]", "[int tensor]"}


def _torch_index(fn):
    """fn with negative steps as torch.flip (torch has none) and pyengine Tensors as torch tensors."""
    def torch_fn(t):
        class Flipping:
            def __getitem__(self, index):
                items = index if isinstance(index, tuple) else (index,)
                items = tuple(torch.from_numpy(i.numpy()) if isinstance(i, Tensor) else i for i in items)
                return _flipped(t, items)
        return fn(Flipping())
    return torch_fn


def _flipped(t, items):
    """t[items] where slices may have negative steps: t flipped along those dims, sliced with positive steps."""
    if not any(isinstance(i, slice) and (i.step or 1) < 0 for i in items):
        return t[items]
    expanded, dim = [], 0
    ndim_used = sum(i is not None and i is not Ellipsis for i in items)
    for item in items:
        if item is Ellipsis:
            count = t.ndim - ndim_used
            expanded += [slice(None)] * count
            dim += count
            continue
        if isinstance(item, slice) and (item.step or 1) < 0:
            size = t.shape[dim]
            start, stop, step = item.indices(size)
            flipped_start = size - 1 - start
            flipped_stop = size - 1 - stop
            t = t.flip(dim)
            expanded.append(slice(flipped_start, flipped_stop if stop >= 0 else None, -step))
        else:
            expanded.append(item)
        dim += item is not None
    return t[tuple(expanded)]


@pytest.mark.parametrize("case", list(INDICES))
def test_indexing_matches_torch_and_numpy(case):
    shape, fn = INDICES[case]
    x = _x(*shape)
    out, _ = compare([x], fn, _torch_index(fn), **SUMMED)
    if case not in NUMPY_DIFFERS:
        np.testing.assert_array_equal(out.numpy(), fn(x.astype(F64)))
    assert out.numpy().flags.c_contiguous and not np.shares_memory(out.numpy(), x)


def test_repeated_indices_scatter_add_their_gradients():
    weight = _x(6, 3)
    idx = np.array([[1, 5, 1], [1, 0, -1]])
    out, (w,) = compare([weight], lambda t: t[idx], lambda t: t[torch.from_numpy(idx)], **SUMMED)
    counts = np.bincount(idx.reshape(-1) % 6, minlength=6)
    assert counts[1] == 3 and out.shape == (2, 3, 3)


# ------------------------------------------------------------------ finite differences


def _finite_differences(fn, arrays, eps=1e-2, atol=3e-3, rtol=3e-3):
    """Central differences of sum(fn(*leaves) * g) against the analytic gradient."""
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    g = np.random.default_rng(3).standard_normal(out.shape).astype(F32)
    out.backward(g)
    for leaf, array in zip(leaves, arrays):
        numeric = np.zeros(array.shape)
        for idx in np.ndindex(*array.shape):
            losses = []
            for sign in (1, -1):
                moved = [a.copy() for a in arrays]
                moved[[a is array for a in arrays].index(True)][idx] += sign * eps
                losses.append(float(np.sum(fn(*(Tensor(m) for m in moved)).numpy().astype(F64) * g)))
            numeric[idx] = (losses[0] - losses[1]) / (2 * eps)
        np.testing.assert_allclose(leaf.grad.numpy(), numeric, atol=atol, rtol=rtol)


@pytest.mark.parametrize("fn, shapes", [
    (lambda a, b: pe.cat([a.tanh(), b * b], 1), [(2, 3), (2, 2)]),
    (lambda a, b: pe.stack([a.sigmoid(), a * b], -1), [(2, 3), (2, 3)]),
    (lambda a: _weighted(p.tanh() for p in a.split([1, 2], 1)).reshape(1), [(3, 3)]),
    (lambda a: pe.stack(a.square().chunk(2)), [(4, 2)]),
    (lambda a: a.masked_fill(_mask(2, 3), 0.5).tanh(), [(2, 3)]),
    (lambda a, b: pe.where(_mask(2, 3), a.tanh(), b * b), [(2, 3), (3,)]),
    (lambda a: (a * a).tril(-1) + a.triu(1), [(3, 3)]),
    (lambda a: a[np.array([2, 0, 2])].tanh() + a[::-1], [(3, 2)]),
], ids=["cat", "stack", "split", "chunk", "masked_fill", "where", "tril+triu", "index+reverse"])
def test_gradients_match_finite_differences(fn, shapes):
    _finite_differences(fn, [_x(*s, seed=i) for i, s in enumerate(shapes)])


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("call, error, name", [
    (lambda x: pe.cat([]), ValueError, "cat"),
    (lambda x: pe.cat(x), TypeError, "cat"),
    (lambda x: pe.cat([x, x.numpy()]), TypeError, "cat"),
    (lambda x: pe.cat([x, Tensor(np.zeros((3, 5), F32))]), ValueError, "cat"),
    (lambda x: pe.cat([x, Tensor(np.zeros(4, F32))]), ValueError, "cat"),
    (lambda x: pe.cat([x, x], 2), IndexError, "cat"),
    (lambda x: pe.cat([x, Tensor(np.zeros((3, 4), np.int64))]), TypeError, "cat"),
    (lambda x: pe.cat([x[0, 0], x[0, 1]]), ValueError, "cat"),
    (lambda x: pe.stack([x, x[:2]]), ValueError, "stack"),
    (lambda x: pe.stack([x, x], 3), IndexError, "stack"),
    (lambda x: pe.stack([]), ValueError, "stack"),
    (lambda x: x.split(0), ValueError, "split"),
    (lambda x: x.split(-1), ValueError, "split"),
    (lambda x: x.split([1, 1]), ValueError, "split"),
    (lambda x: x.split(1.5), TypeError, "split"),
    (lambda x: x.split(1, 2), IndexError, "split"),
    (lambda x: x[0, 0].split(1), ValueError, "split"),
    (lambda x: x.chunk(0), ValueError, "chunk"),
    (lambda x: x.chunk(2.0), TypeError, "chunk"),
    (lambda x: x.masked_fill(np.ones((3, 4), np.float32), 1.0), TypeError, "masked_fill"),
    (lambda x: x.masked_fill(np.ones((2, 4), bool), 1.0), ValueError, "masked_fill"),
    (lambda x: x.masked_fill(np.ones((2, 3, 4), bool), 1.0), ValueError, "masked_fill"),
    (lambda x: x.masked_fill(np.ones(4, bool), "a"), TypeError, "masked_fill"),
    (lambda x: x.masked_fill(np.ones(4, bool), Tensor(np.ones(2, F32))), ValueError, "masked_fill"),
    (lambda x: pe.where(np.ones((3, 4)), x, x), TypeError, "where"),
    (lambda x: pe.where(np.ones((2, 4), bool), x, x), ValueError, "where"),
    (lambda x: pe.where(np.ones(4, bool), x, Tensor(np.ones(4, np.int64))), TypeError, "where"),
    (lambda x: pe.where(np.ones(4, bool), x, "y"), TypeError, "where"),
    (lambda x: pe.where(1, x, x), TypeError, "where"),
    (lambda x: x[0].tril(), ValueError, "tril"),
    (lambda x: x.triu(0.5), TypeError, "triu"),
    (lambda x: x[np.array([0, 3])], IndexError, "__getitem__"),
    (lambda x: x[:, np.array([-5])], IndexError, "__getitem__"),
    (lambda x: x[np.array([0]), np.array([0])], TypeError, "__getitem__"),
    (lambda x: x[np.array([True, False, True])], TypeError, "__getitem__"),
    (lambda x: x[np.array([0], np.int32)], TypeError, "__getitem__"),
    (lambda x: x[np.array([0.0])], TypeError, "__getitem__"),
    (lambda x: x[::0], ValueError, "__getitem__"),
    (lambda x: x[np.array([0]), 1.5], IndexError, "__getitem__"),  # an index of the wrong type, as torch
])
def test_bad_arguments_raise_naming_the_function(call, error, name):
    with pytest.raises(error, match=name):
        call(Tensor(_x(3, 4)))


# ------------------------------------------------------------------ capture


class _Block(nn.Module):
    """A causal self-attention-like block on (batch, 4, 6) inputs, every op of this file inside."""

    def __init__(self, seed=0):
        super().__init__()
        pe.manual_seed(seed)
        self.qkv = nn.Linear(6, 18)
        self.head = nn.Linear(12, 3)
        self.embed = nn.Linear(5, 3)  # its weight rows are looked up by the targets

    def forward(self, x, y):
        q, k, v = self.qkv(x).split(6, dim=-1)                           # copies: (B, 4, 6) each
        rows = []
        for qb, kb, vb in zip(q.chunk(q.shape[0]), k.chunk(k.shape[0]), v.chunk(v.shape[0])):  # views
            s = qb.reshape(4, 6).matmul(kb.reshape(4, 6), trans_b=True)   # (4, 4)
            causal = np.triu(np.ones((4, 4), bool), 1)
            p = s.masked_fill(causal, float("-inf")).softmax().tril()
            rows.append(p.matmul(vb.reshape(4, 6)))
        h = pe.stack(rows)                                               # (B, 4, 6)
        h = pe.cat([h, pe.where(_mask(4, 6), h, h * 0.1)], dim=-1)      # (B, 4, 12)
        logits = self.head(h[:, ::-1][:, 0])                              # (B, 3)
        picked = self.embed.weight.T[y] + self.embed.bias               # (B, 3): y is an int64 graph input
        return logits + picked * 0.5


def _batches(seed, n=3, batch=3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 4, 6)).astype(F32), rng.integers(0, 3, batch).astype(np.int64))
            for _ in range(n)]


def test_training_replay_with_join_and_select_ops_is_bit_exact():
    graph = assert_training_replay_is_bit_exact(
        lambda: _Block(seed=3), lambda m, x, y: F.cross_entropy(m(x, y), y), _batches(4))
    names = {step.op.name for step in graph.steps}
    assert {"cat", "stack", "narrow", "narrow_view", "masked_fill", "where", "tril", "index"} <= names


def test_forward_replay_with_join_and_select_ops_is_bit_exact():
    def fn(x, idx):
        a, b = x.split([1, 2])                  # views of the input
        c, d = x.chunk(2, dim=1)                # copies
        picked = x[idx]
        return pe.cat([a * 2.0, b, pe.stack([c, d], 1).reshape(3, 4)[:, ::-1]]) + picked.sum()
    rng = np.random.default_rng(9)
    assert_forward_replay_is_bit_exact(fn, [(rng.standard_normal((3, 4)).astype(F32), np.array([2, -1, 0]))
                                            for _ in range(2)])
    assert_forward_replay_is_bit_exact(lambda y: y.tril(1)[np.array([1, 1])].masked_fill(
        np.array([True, False, False]), -7), [(np.arange(9).reshape(3, 3) * k,) for k in (1, 2)])


def test_replayed_split_views_share_the_gradient_of_their_input():
    x0 = _x(4, 3)

    def fn(x):
        w = x * 1.0
        top, bottom = w.split([1, 3])
        return (top * 3.0).sum() + (bottom * bottom).sum()
    graph = pe.capture(lambda x: fn(x), x0)
    assert any(v.view_op is not None for v in graph.values if v.alias_of is not None)
    np.testing.assert_array_equal(graph.run(x0).numpy(), fn(Tensor(x0)).numpy())
