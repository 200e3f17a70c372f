"""The executor's add + layer norm fusion: in a graph without a backward, a residual add of two
same-shape operands whose output a layer norm alone reads runs as one add_layer_norm kernel.

Checked on post-LN blocks (BERT's): the plan loses exactly the fused adds, the results are the same
bits as the graph captured with fuse=False and match torch float64; an add read by something else
too, a broadcast add, an add that is the graph's output and training graphs stay as recorded.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F32, assert_close, torch

import pyengine as pe
from pyengine import functional as F
from pyengine import nn

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


class _PostLN(nn.Module):
    """Two post-LN sublayers: x = LN(x + W1 x); x = LN(x + W2 gelu(x)), then optionally x + r."""

    def __init__(self, seed, width=24):
        super().__init__()
        pe.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.ln1, self.ln2 = nn.LayerNorm(width, eps=1e-12), nn.LayerNorm(width, eps=1e-5)

    def forward(self, x):
        x = self.ln1(x + self.fc1(x))
        return self.ln2(x + self.fc2(F.gelu(x, approximate="none")))


def _labels(graph):
    return [s.op.label() for s in graph.steps]


def _x(rows=10, width=24, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(F32)


@needs_torch
def test_residual_adds_fuse_into_their_layer_norms():
    model = _PostLN(1).eval()
    x = _x()
    plain = pe.capture(lambda a: model(a), x, fuse=False)
    fused = pe.capture(lambda a: model(a), x)
    assert _labels(plain).count("add") == 2 and _labels(plain).count("layer_norm") == 2
    assert _labels(fused).count("add+layer_norm") == 2
    assert "add" not in _labels(fused) and "layer_norm" not in _labels(fused)
    got = fused.run(x).numpy().copy()
    np.testing.assert_array_equal(got, plain.run(x).numpy())
    params = {k: torch.tensor(np.float64(v)) for k, v in model.state_dict().items()}  # float64 torch
    with torch.no_grad():
        t = torch.tensor(np.float64(x))
        lin = lambda name, v: v @ params[f"{name}.weight"].T + params[f"{name}.bias"]  # noqa: E731
        norm = lambda name, v, eps: torch.nn.functional.layer_norm(  # noqa: E731
            v, (v.shape[-1],), params[f"{name}.weight"], params[f"{name}.bias"], eps)
        t = norm("ln1", t + lin("fc1", t), 1e-12)
        t = norm("ln2", t + lin("fc2", torch.nn.functional.gelu(t)), 1e-5)
    assert_close(got, t.numpy(), atol=1e-5, rtol=1e-4, what="fused graph vs torch float64")


def test_adds_that_cannot_fuse_stay():
    model = _PostLN(2).eval()
    x = _x(seed=3)
    bias = pe.Tensor(np.linspace(-1, 1, 24, dtype=F32))

    def shared(a):  # the sum is read by the layer norm and by the final add
        s = a + model.fc1(a)
        return model.ln1(s) + s

    def broadcast(a):  # (rows, width) + (width,): not one shape
        return model.ln1(a + bias)

    for fn in (shared, broadcast, lambda a: a + model.fc1(a)):
        graph = pe.capture(fn, x)
        assert "add+layer_norm" not in _labels(graph)
        with pe.no_grad():
            np.testing.assert_array_equal(graph.run(x).numpy(), fn(pe.Tensor(x)).numpy())


def test_training_graphs_keep_the_add_and_the_layer_norm():
    model = _PostLN(4)
    graph = pe.capture(lambda a: model(a).sum(), _x(), optimizer=pe.optim.SGD(model.parameters(), lr=0.1))
    labels = [s.op.label() for s in graph.steps if s.kind == "forward"]
    assert labels.count("add") == 2 and "add+layer_norm" not in labels
