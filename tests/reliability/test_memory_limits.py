"""Buffers that cannot be allocated raise MemoryError with the size asked for, before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine
from pyengine import _C, nn
from pyengine import functional as F
from pyengine.graph import executor

F32 = np.float32


@pytest.mark.parametrize("shape,fragment", [
    ((2**40, 0), None),  # nothing to allocate: fine
    ((0, 2**58), None),
    ((2**36, 2**5), "bytes (256.0 GiB)"),  # asked of the allocator, which refuses
    ((2**20, 2**20), "bytes (4096.0 GiB)"),
], ids=["zero-huge", "zero-huger", "256GiB", "4TiB"])
def test_an_output_that_cannot_be_allocated_raises_memory_error_with_its_size(shape, fragment):
    x = np.zeros((shape[0], 0), F32)
    w = np.zeros((0, shape[1]), F32)
    if fragment is None:
        assert _C.matmul_forward(None, None, x, w).shape == shape
        return
    with pytest.raises(MemoryError, match=rf"matmul_forward: cannot allocate output 'c' of shape .*{fragment[:5]}"):
        _C.matmul_forward(None, None, x, w)


def test_an_output_beyond_the_address_space_says_so():
    x = np.zeros((2**58, 0), F32)
    w = np.zeros((0, 2**58), F32)
    with pytest.raises(MemoryError, match=r"matmul_forward: .*'c'.*\(288230376151711744, 288230376151711744\).*"
                                          r"over 2\^64 bytes, more than the address space"):
        _C.matmul_forward(None, None, x, w)


def test_a_plan_larger_than_the_machine_says_so_before_it_starts(monkeypatch):
    pyengine.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = np.ones((4, 8), F32), np.zeros(4, np.int64)
    monkeypatch.setattr(executor, "machine_memory_bytes", lambda: 16)
    with pytest.raises(MemoryError, match=r"capture: the plan needs an arena of \d+ bytes .* more than this "
                                          r"machine's 16 bytes"):
        pyengine.capture(lambda xb, yb: F.cross_entropy(model(xb), yb), x, y)
    monkeypatch.undo()
    step = pyengine.capture(lambda xb, yb: F.cross_entropy(model(xb), yb), x, y)
    assert np.isfinite(step.run(x, y).item())
