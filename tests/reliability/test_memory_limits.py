"""Buffers that cannot be allocated raise MemoryError with the size asked for, before anything runs."""

from __future__ import annotations

import re

import numpy as np
import pytest

import pyengine
from pyengine import _C, nn
from pyengine import functional as F
from pyengine.graph import executor

F32 = np.float32


def test_an_empty_output_with_large_dimensions_is_fine():
    assert _C.matmul_forward(None, None, np.zeros((2**30, 0), F32), np.zeros((0, 0), F32)).shape == (2**30, 0)


@pytest.mark.parametrize("padding,fragment", [(2**17, "bytes (256.0 GiB)"), (2**19, "bytes (4096.0 GiB)")],
                         ids=["256GiB", "4TiB"])
def test_an_output_that_cannot_be_allocated_raises_memory_error_with_its_size(padding, fragment):
    x = np.zeros((1, 1, 1, 1), F32)  # a 1x1 image padded to (2 padding + 1)^2 pixels
    message = rf"conv2d_forward: cannot allocate output 'y' of shape .*{re.escape(fragment)}"
    with pytest.raises(MemoryError, match=message):
        _C.conv2d_forward(None, x, x, None, padding=(padding, padding))


def test_an_empty_array_with_a_dimension_above_2_31_is_refused():
    # (0, 2^58) holds nothing, but a kernel's loops over its other dims would spin (the fuzzing found a hang)
    with pytest.raises(ValueError, match=r"matmul_forward: argument 'a' with shape \(288230376151711744, 0\) is empty"):
        _C.matmul_forward(None, None, np.zeros((2**58, 0), F32), np.zeros((0, 3), F32))


def test_an_output_beyond_the_address_space_says_so():
    x = np.zeros((1, 1, 1, 1), F32)
    w = np.zeros((1, 1, 1, 1), F32)
    with pytest.raises(MemoryError, match=r"conv2d_forward: .*'y'.*\(1, 1, 4294967295, 4294967295\).*"
                                          r"bytes, more than the address space"):
        _C.conv2d_forward(None, x, w, None, padding=(2**31 - 1, 2**31 - 1))


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
