"""The SIMD exp's edges at every ISA level (AVX-512 scales by vscalefps, the
others build 2^n in the exponent bits): softmax of masked (-inf) scores is
exactly 0, values below exp's range give 0, the top of the range stays
finite, and the log-softmax / cross-entropy backward (which exponentiate
log-probabilities) match float64."""

from __future__ import annotations

import numpy as np

import pyengine
import pyengine.kernels as K

F32, F64 = np.float32, np.float64


def test_masked_scores_give_exact_zeros(isa):
    row = np.full((3, 37), -np.inf, F32)
    row[:, ::3] = np.linspace(-2, 2, 13, dtype=F32)
    row[1, 1] = -104.5
    row[2, 2] = -103.9  # exp(-103.9 - max) is far below the smallest denormal
    y = K.softmax(row)
    assert np.all(y[:, 1::3] == 0) and np.all(y[:, 2::3] == 0)
    ref = np.exp(row.astype(F64) - row.max(1, keepdims=True))
    np.testing.assert_allclose(y, ref / ref.sum(1, keepdims=True), rtol=1e-6, atol=1e-45)


def test_exp_range_edges(isa):
    x = np.array([88.72, 88.7, 88.8, 89.0, -87.3, -100.0, -103.9, -104.0, -110.0, 0.0,
                  -np.inf, np.inf, np.nan, 1e-8, -1e-8, 20.5], F32)
    y = K.exp(x)
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x.astype(F64)).astype(F32)
    if pyengine.flushes_denormals():  # kernels write subnormal results as 0 (README, csrc/core/denormals.h)
        ref[np.abs(ref) < np.finfo(F32).tiny] = 0
    assert np.isfinite(y[0]) and np.isfinite(y[1]) and np.isinf(y[2]) and np.isinf(y[3])
    np.testing.assert_allclose(y[~np.isnan(x)], ref[~np.isnan(x)], rtol=3e-7, atol=2e-44)
    assert np.isnan(y[12])


def test_log_softmax_backward_matches_float64(isa):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 301)) * 8).astype(F32)
    y = K.log_softmax(x)
    g = rng.standard_normal(x.shape).astype(F32)
    dx = K.log_softmax_backward(g, y)
    ref = g - np.exp(y.astype(F64)) * g.astype(F64).sum(1, keepdims=True)
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-5)
