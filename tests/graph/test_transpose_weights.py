"""capture(..., transpose_weights=True): in an eval graph, a matmul by a transposed 2-D parameter or
constant (linear's x @ w.T) multiplies by an (in, out) copy of the weight instead.

Checked: the rewritten steps (no transposed B left, the GELU still fused), the results against a
float64 numpy reference and against the same graph captured without the option, the copies shared
between graphs over the same weights, made again after pyengine's in-place writes (optimizer step,
load_state_dict, ``p.data = ...``) and by refold() after a direct write, and left out of training
graphs and of weights computed in the graph.
"""

from __future__ import annotations

import numpy as np
from helpers import F32

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.tensor import Tensor


class _Mlp(nn.Module):
    """linear (bias) -> exact GELU -> linear (no bias) -> the first weight again, tied (x @ w1.T)."""

    def __init__(self, seed):
        super().__init__()
        pe.manual_seed(seed)
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 12, bias=False)

    def forward(self, x):
        h = self.fc2(F.gelu(self.fc1(x), approximate="none"))
        return F.linear(h, self.fc1.weight)


def _reference(model, x):
    """The forward in float64 numpy."""
    from math import erf

    w1, b1 = (np.float64(p.data) for p in (model.fc1.weight, model.fc1.bias))
    w2 = np.float64(model.fc2.weight.data)
    pre = np.float64(x) @ w1.T + b1
    h = 0.5 * pre * (1 + np.vectorize(erf)(pre / np.sqrt(2)))
    return (h @ w2.T) @ w1.T


def _close(got, expected, what):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=what)


def _matmul_labels(graph):
    return [s.op.label() for s in graph.steps if s.op.name.startswith("matmul")]


def _x(rows, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 12)).astype(F32)


def test_the_matmuls_read_untransposed_copies_and_match():
    model = _Mlp(1).eval()
    x = _x(7)
    plain = pe.capture(lambda a: model(a), x)
    graph = pe.capture(lambda a: model(a), x, transpose_weights=True)
    assert _matmul_labels(plain) == ["matmul[ᵀb]+gelu_erf", "matmul[ᵀb]", "matmul[ᵀb]"]
    assert _matmul_labels(graph) == ["matmul+gelu_erf", "matmul", "matmul"]
    assert len(graph._transposes) == 3
    got = graph.run(x).numpy().copy()
    _close(got, _reference(model, x), "transposed vs float64")
    _close(got, plain.run(x).numpy(), "transposed vs plain graph")
    np.testing.assert_array_equal(graph.run(x).numpy(), got)  # replay: the same bits again


def test_graphs_over_the_same_weights_share_the_copies():
    model = _Mlp(2).eval()
    small = pe.capture(lambda a: model(a), _x(3), transpose_weights=True)
    large = pe.capture(lambda a: model(a), _x(40), transpose_weights=True)
    for (w_small, copy_small), (w_large, copy_large) in zip(small._transposes, large._transposes):
        assert w_small is w_large and copy_small is copy_large
    other = pe.capture(lambda a: _Mlp(3).eval()(a), _x(3), transpose_weights=True)
    assert all(not np.shares_memory(a, b) for (_, a), (_, b) in zip(small._transposes, other._transposes))
    for rows, graph in ((3, small), (40, large)):
        _close(graph.run(_x(rows, 5)).numpy(), _reference(model, _x(rows, 5)), f"{rows} rows")


def test_the_copies_follow_the_parameters_between_runs():
    model = _Mlp(4)
    x = _x(6)
    graph = pe.capture(lambda a: model(a), x, transpose_weights=True)
    _close(graph.run(x).numpy(), _reference(model, x), "initial")
    # an eager SGD step (pyengine's in-place write): the next run copies again
    opt = pe.optim.SGD(model.parameters(), lr=0.5)
    model(Tensor(x)).sum().backward()
    opt.step()
    _close(graph.run(x).numpy(), _reference(model, x), "after an optimizer step")
    state = {k: np.array(v) * np.float32(-0.5) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    _close(graph.run(x).numpy(), _reference(model, x), "after load_state_dict")
    model.fc2.weight.data = np.full((12, 20), 0.25, F32)  # copied into the array the graph holds
    _close(graph.run(x).numpy(), _reference(model, x), "after p.data = ...")
    # a write pyengine does not see: stale until refold()
    stale = graph.run(x).numpy().copy()
    model.fc1.weight.data[...] *= 2
    np.testing.assert_array_equal(graph.run(x).numpy(), stale)
    graph.refold()
    _close(graph.run(x).numpy(), _reference(model, x), "after refold()")


def test_training_graphs_and_computed_weights_keep_the_transpose():
    model = _Mlp(6)
    x = _x(5)
    train = pe.capture(lambda a: model(a).sum(), x, optimizer=pe.optim.SGD(model.parameters(), lr=0.1),
                       transpose_weights=True)
    assert all("ᵀb" in label for label in _matmul_labels(train)) and not train._transposes
    scale = Tensor(np.full((20, 12), 0.5, F32))
    computed = pe.capture(lambda a: F.linear(a, model.fc1.weight * scale), x, transpose_weights=True)
    assert _matmul_labels(computed) == ["matmul[ᵀb]"] and not computed._transposes
    with pe.no_grad():
        expected = F.linear(Tensor(x), model.fc1.weight * scale).numpy()
    _close(computed.run(x).numpy(), expected, "computed weight")
