"""Helpers of the layout, reduction and loss tests: pyengine on float32 leaves
against PyTorch autograd in float64 on the same values, and captured
training steps against the same steps run eagerly."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine.tensor import Tensor

F32, F64 = np.float32, np.float64


def distinct(rng, *shape, scale=1.0) -> np.ndarray:
    """float32 values, all different and at least 1e-3 apart (no ties for max,
    no kinks for abs), in random order."""
    n = int(np.prod(shape, dtype=np.int64))
    values = (np.arange(n) - n / 2 + 0.5) * (4.0 / max(n, 1)) + rng.uniform(-1e-4, 1e-4, n)
    return np.ascontiguousarray(rng.permutation(values).reshape(shape) * scale, dtype=F32)


def compare(arrays, pe_fn, torch_fn, *, atol, rtol, grad_atol=None, grad_rtol=None, seed=0,
            grad=True):
    """pe_fn(*float32 leaves) against torch_fn(*float64 leaves of the same values):
    the forward, then (grad=True) the gradient of every leaf under one random
    float32 upstream gradient (or the implicit 1 of a 0-d result).
    Returns the pyengine output and leaves."""
    torch = pytest.importorskip("torch")
    arrays = [np.ascontiguousarray(a, dtype=F32) for a in arrays]
    leaves = [Tensor(a.copy(), requires_grad=grad) for a in arrays]
    tleaves = [torch.tensor(a.astype(F64), requires_grad=grad) for a in arrays]
    out, ref = pe_fn(*leaves), torch_fn(*tleaves)
    assert isinstance(out, Tensor)
    assert out.shape == tuple(ref.shape), f"shape {out.shape} != {tuple(ref.shape)}"
    np.testing.assert_allclose(out.numpy().astype(F64), ref.detach().numpy(), atol=atol, rtol=rtol,
                               err_msg="forward")
    if not grad:
        return out, leaves
    assert out.requires_grad
    if out.ndim == 0:
        out.backward()
        ref.backward()
    else:
        upstream = np.random.default_rng(seed).standard_normal(out.shape).astype(F32)
        out.backward(upstream)
        ref.backward(torch.from_numpy(upstream.astype(F64)))
    for index, (leaf, tleaf) in enumerate(zip(leaves, tleaves)):
        expected = np.zeros(leaf.shape) if tleaf.grad is None else tleaf.grad.numpy()
        assert leaf.grad is not None, f"leaf {index} got no gradient"
        assert leaf.grad.shape == leaf.shape, f"grad of leaf {index}: shape {leaf.grad.shape} != {leaf.shape}"
        np.testing.assert_allclose(leaf.grad.numpy().astype(F64), expected,
                                   atol=atol if grad_atol is None else grad_atol,
                                   rtol=rtol if grad_rtol is None else grad_rtol,
                                   err_msg=f"grad of leaf {index}")
    return out, leaves


def assert_training_replay_is_bit_exact(make_model, loss_fn, batches, lr=0.05):
    """Train two copies of a model on `batches` ((x, y) numpy pairs): one
    eagerly, one through pe.capture(..., optimizer=) replayed on each batch,
    then the first batch once more (a second run of the same input). Losses,
    parameters and gradients must be equal bit for bit."""
    batches = list(batches) + [batches[0]]
    eager, replayed = make_model(), make_model()
    eager_opt = pe.optim.SGD(eager.parameters(), lr=lr, momentum=0.9)
    graph_opt = pe.optim.SGD(replayed.parameters(), lr=lr, momentum=0.9)
    expected = []
    for x, y in batches:
        eager_opt.zero_grad()
        loss = loss_fn(eager, Tensor(x), Tensor(y))
        loss.backward()
        eager_opt.step()
        expected.append(loss.item())
    graph = pe.capture(lambda x, y: loss_fn(replayed, x, y), *batches[0], optimizer=graph_opt)
    got = [graph.run(x, y).item() for x, y in batches]
    assert got == expected
    assert len(set(got[:-1])) == len(got) - 1  # the batches differ, and so do the losses
    for (name, a), (_, b) in zip(eager.named_parameters(), replayed.named_parameters()):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=name)
        np.testing.assert_array_equal(b.grad.numpy(), a.grad.numpy(), err_msg=f"grad of {name}")
    return graph


def assert_forward_replay_is_bit_exact(fn, inputs):
    """pe.capture(fn, *inputs[0]) replayed on each input tuple (and the first
    again) equals fn run eagerly, bit for bit, dtype and shape included."""
    graph = pe.capture(fn, *inputs[0])
    for args in list(inputs) + [inputs[0]]:
        with pe.no_grad():
            expected = fn(*(Tensor(a) for a in args)).numpy().copy()
        out = graph.run(*args).numpy()
        assert out.dtype == expected.dtype and out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
    return graph
