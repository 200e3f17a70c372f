"""matmul with batch dims that broadcast on both sides (torch.matmul's rule), ops.BroadcastMatMul:
the forward and both gradients against PyTorch in float64 and against central differences, the
gradients summed over the broadcast dims, no copy of either operand, captured training steps
equal to eager ones bit for bit, and a clear error where the batch dims do not broadcast."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_finite_differences
from torch_ref import assert_training_replay_is_bit_exact, compare

import pyengine as pe
from pyengine import ops as O
from pyengine.tensor import Tensor

F32 = np.float32

SHAPES = [
    ((2, 1, 4, 5), (3, 5, 6)),               # the example: batch (2, 3)
    ((5, 4, 3), (2, 5, 3, 6)),               # a's batch is b's trailing one
    ((2, 1, 3, 1, 4, 5), (1, 3, 1, 2, 5, 2)),  # alternating: a loop over three outer dims
    ((1, 2, 3), (4, 1, 3, 2)),
    ((2, 1, 1, 3), (1, 4, 3, 2)),
    ((3, 1, 2), (1, 3, 2, 5)),
    ((0, 1, 2, 3), (4, 3, 2)),               # an empty batch
    ((2, 1, 2, 0), (3, 0, 4)),               # k = 0: zeros
    ((3, 1, 7, 1), (1, 2, 1, 9)),            # m = n = ... odd GEMM edges
]


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_broadcast_matmul_against_torch(shapes):
    rng = np.random.default_rng(list(map(len, shapes)))
    arrays = [rng.standard_normal(s).astype(F32) for s in shapes]
    out, leaves = compare(arrays, lambda a, b: a @ b, lambda a, b: a @ b, atol=1e-5, rtol=1e-4)
    assert out.shape == np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2]) + (shapes[0][-2], shapes[1][-1])
    assert out._node is not None and isinstance(out._node.op, O.BroadcastMatMul)
    assert all(leaf.grad.shape == leaf.shape for leaf in leaves)  # summed back over the broadcast dims


@pytest.mark.parametrize("shapes", [((2, 1, 3, 2), (3, 2, 2)), ((2, 1, 1, 2), (3, 2, 3))], ids=str)
def test_broadcast_matmul_finite_differences(shapes):
    op = O.BroadcastMatMul()

    def forward(a, b):
        (spec,) = op.infer(O.Spec(a.shape), O.Spec(b.shape))
        c = np.empty(spec.shape, F32)
        op.forward([c], [a, b])
        return c

    def backward(g, inputs, outputs, _):
        grads = [np.zeros_like(x) for x in inputs]
        op.backward(grads, g, inputs, outputs)
        return grads

    check_finite_differences([np.random.default_rng(3).standard_normal(s) for s in shapes], forward, backward)


def test_broadcast_matmul_reads_its_operands_in_place():
    """Every kernel call gets views of a, b and c (contiguous slices of their leading dims)."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 1, 3, 1, 4, 5)).astype(F32), rng.standard_normal((1, 3, 1, 2, 5, 2)).astype(F32)
    c = np.empty((2, 3, 3, 2, 4, 2), F32)
    calls = O.BroadcastMatMul()._calls(c, a, b)
    assert len(calls) == 2 * 3 * 3  # the outer dims (2, 3, 3); the trailing 2 is each call's batch
    for views, base in ((v, x) for call in calls for v, x in zip(call, (c, a, b))):
        assert np.shares_memory(views, base) and views.flags.c_contiguous


def test_broadcast_matmul_gradients_accumulate():
    rng = np.random.default_rng(5)
    a = Tensor(rng.standard_normal((2, 1, 3, 4)).astype(F32), requires_grad=True)
    b = Tensor(rng.standard_normal((3, 4, 2)).astype(F32), requires_grad=True)
    (a @ b).sum().backward()
    first = a.grad.numpy().copy(), b.grad.numpy().copy()
    (a @ b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), 2 * first[0], rtol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), 2 * first[1], rtol=1e-6)


def test_broadcast_matmul_training_replay_is_bit_exact():
    class Model(pe.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = pe.nn.Parameter(np.random.default_rng(6).standard_normal((3, 5, 2)).astype(F32))

        def forward(self, x):
            return x @ self.w  # x (4, 1, 6, 5) @ w (3, 5, 2): (4, 3, 6, 2)

    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((4, 1, 6, 5)).astype(F32), rng.standard_normal((4, 3, 6, 2)).astype(F32))
               for _ in range(3)]
    graph = assert_training_replay_is_bit_exact(Model, lambda m, x, y: ((m(x) - y) ** 2).mean(), batches)
    assert any(isinstance(step.op, O.BroadcastMatMul) for step in graph.steps)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (3, 4, 5)), ((2, 2, 3, 4), (3, 4, 5)), ((2, 1, 3, 4), (3, 5, 6))],
                         ids=str)
def test_batch_dims_that_do_not_broadcast_are_a_clear_error(shapes):
    a, b = (Tensor(np.zeros(s, F32)) for s in shapes)
    with pytest.raises(ValueError, match="matmul") as error:
        a @ b
    assert all(str(s) in str(error.value) for s in shapes)
