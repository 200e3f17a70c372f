"""Embedding: the kernels against numpy float64 and torch, repeated indices,
thread-count independence, index errors, autograd, nn.Embedding and capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyengine as pe
from pyengine import _C, nn
from pyengine import functional as F

F32 = np.float32


def _case(seed, vocab, dim, shape, dtype=np.int64):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((vocab, dim)).astype(F32)
    idx = rng.integers(0, vocab, size=shape).astype(dtype)
    dout = rng.standard_normal((*shape, dim)).astype(F32)
    return weight, idx, dout


def _np_backward(dout, idx, vocab):
    dweight = np.zeros((vocab, dout.shape[-1]), np.float64)
    np.add.at(dweight, idx.reshape(-1), dout.reshape(-1, dout.shape[-1]).astype(np.float64))
    return dweight


@pytest.mark.parametrize("vocab,dim,shape", [(7, 5, (11,)), (50, 33, (4, 9)), (3, 64, (2, 3, 40)),
                                             (1000, 256, (1024,))])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_embedding_kernels_match_numpy(isa, vocab, dim, shape, dtype):
    weight, idx, dout = _case(1, vocab, dim, shape, dtype)
    out = _C.embedding_forward(None, weight, idx)
    assert out.shape == (*shape, dim)
    np.testing.assert_array_equal(out, weight[idx])  # a copy: exact
    dweight = np.full((vocab, dim), 0.5, F32)  # accumulates
    _C.embedding_backward(dweight, dout, weight, idx)
    np.testing.assert_allclose(dweight, 0.5 + _np_backward(dout, idx, vocab), rtol=1e-5, atol=1e-5)


def test_embedding_matches_torch():
    weight, idx, dout = _case(2, 40, 12, (6, 7))
    w = pe.Tensor(weight.copy(), requires_grad=True)
    out = F.embedding(idx, w)
    (out * pe.Tensor(dout)).sum().backward()
    tw = torch.tensor(weight, requires_grad=True)
    tout = torch.nn.functional.embedding(torch.tensor(idx), tw)
    (tout * torch.tensor(dout)).sum().backward()
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_repeated_indices_sum_in_row_order(isa):
    # Every row hits index 2: the float32 sum must be the sequential one.
    rows, dim = 3000, 48
    dout = np.random.default_rng(3).standard_normal((rows, dim)).astype(F32)
    idx = np.full(rows, 2, np.int64)
    dweight = np.zeros((4, dim), F32)
    _C.embedding_backward(dweight, dout, np.zeros((4, dim), F32), idx)
    sequential = np.zeros(dim, F32)
    for r in range(rows):
        sequential += dout[r]
    np.testing.assert_array_equal(dweight[2], sequential)
    assert not dweight[[0, 1, 3]].any()


@pytest.mark.parametrize("vocab,dim,rows", [(5, 0, 7), (5, 3, 0), (5, 0, 0)])
def test_empty_rows_and_zero_width_embeddings(isa, vocab, dim, rows):
    # A width of 0 once made the column split of the backward a chunk of 0,
    # and parallel_chunks divided by it (SIGFPE): found by the Tensor fuzzing.
    weight, idx, dout = _case(5, vocab, dim, (rows,))
    assert _C.embedding_forward(None, weight, idx).shape == (rows, dim)
    dweight = np.full((vocab, dim), 0.5, F32)
    _C.embedding_backward(dweight, dout, weight, idx)
    np.testing.assert_array_equal(dweight, np.full((vocab, dim), 0.5, F32))


def test_results_do_not_depend_on_thread_count(restore_threads):
    weight, idx, dout = _case(4, 97, 200, (2048,))
    idx[::3] = 5  # many repeats
    results = []
    for threads in (1, 2, 3, 4):
        pe.set_num_threads(threads)
        dweight = np.zeros_like(weight)
        _C.embedding_backward(dweight, dout, weight, idx)
        results.append((_C.embedding_forward(None, weight, idx), dweight))
    for out, dweight in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(dweight, results[0][1])


@pytest.mark.parametrize("bad,value", [(7, "7"), (-1, "-1"), (2**40, str(2**40))])
def test_out_of_range_index_names_op_value_and_vocab(bad, value):
    weight = np.zeros((7, 3), F32)
    idx = np.array([0, 6, bad, 1], np.int64)
    with pytest.raises(ValueError, match=rf"embedding_forward: idx\[2\] = {value} is out of range for 7 embeddings"):
        _C.embedding_forward(None, weight, idx)
    with pytest.raises(ValueError, match=r"embedding_backward: idx\[2\]"):
        _C.embedding_backward(np.zeros_like(weight), np.zeros((4, 3), F32), weight, idx)
    with pytest.raises(ValueError, match="embedding_forward.*out of range for 7"):
        nn.Embedding(7, 3)(idx)


def test_functional_errors():
    w = pe.Tensor(np.zeros((5, 2), F32), requires_grad=True)
    with pytest.raises(TypeError, match="embedding: indices must be int64 or int32, got float32"):
        F.embedding(np.zeros(3, F32), w)
    with pytest.raises(TypeError, match="embedding: weight must be a Tensor"):
        F.embedding(np.zeros(3, np.int64), np.zeros((5, 2), F32))
    with pytest.raises(ValueError, match="embedding_forward"):
        F.embedding(np.zeros(3, np.int64), pe.Tensor(np.zeros(5, F32)))


def test_module_init_and_shapes():
    pe.manual_seed(0)
    emb = nn.Embedding(300, 64)
    assert emb.weight.shape == (300, 64) and emb.weight.requires_grad
    assert abs(float(emb.weight.numpy().mean())) < 0.02 and abs(float(emb.weight.numpy().std()) - 1) < 0.02
    assert repr(emb) == "Embedding(300, 64)"
    assert [name for name, _ in emb.named_parameters()] == ["weight"]
    out = emb(pe.Tensor(np.array([[1, 2], [3, 299]], np.int64)))
    assert out.shape == (2, 2, 64)
    np.testing.assert_array_equal(out.numpy()[1, 1], emb.weight.numpy()[299])


def test_captured_training_step_matches_eager():
    def make():
        pe.manual_seed(5)
        return nn.Embedding(20, 8), nn.Linear(8, 3)

    rng = np.random.default_rng(6)
    tokens = rng.integers(0, 20, size=(4, 6)).astype(np.int64)
    labels = rng.integers(0, 3, size=24).astype(np.int64)

    def loss_of(emb, head, x, y):
        return F.cross_entropy(head(emb(x)).reshape(-1, 3), y)

    emb, head = make()
    opt = pe.optim.SGD([*emb.parameters(), *head.parameters()], lr=0.5, momentum=0.9)
    eager = []
    for _ in range(4):
        loss = loss_of(emb, head, pe.Tensor(tokens), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        eager.append(loss.item())
    emb2, head2 = make()
    opt2 = pe.optim.SGD([*emb2.parameters(), *head2.parameters()], lr=0.5, momentum=0.9)
    step = pe.capture(lambda x, y: loss_of(emb2, head2, x, y), tokens, labels, optimizer=opt2)
    replayed = [step.run(tokens, labels).item() for _ in range(4)]
    assert replayed == eager
    np.testing.assert_array_equal(emb2.weight.numpy(), emb.weight.numpy())
