"""Kernels flush subnormal floats to zero (inputs and results) on x86-64, on
every thread of a call, and leave the caller's floating-point mode as it was."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine import kernels as K

SUBNORMAL = np.float32(1e-40)  # below FLT_MIN = 1.18e-38

pytestmark = pytest.mark.skipif(not pe.flushes_denormals(), reason="no flush bits on this CPU")


@pytest.mark.parametrize("n", [7, 1 << 20], ids=["one thread", "threads"])
def test_subnormal_inputs_and_results_are_zero(n, isa):
    x = np.full(n, SUBNORMAL, np.float32)
    ones = np.ones(n, np.float32)
    assert not (pe.Tensor(x) * pe.Tensor(ones)).numpy().any()  # DAZ: a subnormal input reads as 0
    tiny = np.full(n, np.float32(1e-20), np.float32)
    assert not (pe.Tensor(tiny) * pe.Tensor(tiny)).numpy().any()  # FTZ: 1e-40 is written as 0
    normal = (pe.Tensor(tiny) * pe.Tensor(np.full(n, 1e-15, np.float32))).numpy()
    np.testing.assert_allclose(normal, 1e-35, rtol=1e-6)  # normal results are untouched


def test_the_callers_floating_point_mode_is_restored():
    a = np.full(4, 1e-20, np.float32)
    K.relu(a)  # a kernel call, then numpy on the same thread
    assert (a * a)[0] == np.float32(1e-40) and (a * a)[0] != 0


def test_softmax_of_far_apart_logits_has_no_subnormal_probabilities():
    logits = np.array([[0.0, -90.0, -100.0, -1.0]], np.float32)  # exp(-90) is subnormal
    p = pe.Tensor(logits).softmax().numpy()
    assert p[0, 1] == 0 and p[0, 2] == 0 and p[0, 3] > 0
