"""GEMM benchmarks: pyengine's packed GEMM against numpy (BLAS), torch and numba, by shape.

Groups (one row per implementation, the ``impl`` parameter):

- ``peak fma probe``: pyengine's register-only FMA loop (``kernels.fma_probe``) on one
  thread and on all ``--threads``: the machine's floating-point limit, pyengine only;
- squares 64 .. 4096;
- the GPT-2 (124M) training GEMMs at B*T = 4096 tokens (1024 for the LM head), forward and
  both backward forms, dA = dC B^T and dB = A^T dC: pyengine passes trans_a/trans_b, numpy
  and torch take transposed views (their BLAS handles transposed operands natively);
- generation (M = 1 and M = 8 rows against the same weights);
- small squares below 64, where pyengine packs the whole problem on one thread, one call each
  and as stacks of 64 in one call; stacks of 48 per-head attention products (64 x 64 x 64);
- im2col GEMMs of ResNet-50 convolutions at batch 1.

Every implementation writes into a preallocated output (``np.matmul(.., out=c)``,
``torch.matmul(.., out=c)``, ``kernels.matmul(.., out=c)``, numba's ``matmul(a, b, c)``), and
its first result is checked against pyengine's before timing. ``extra_info`` holds the thread
count, the shape, the flops (2 M N K) and the GFLOP/s at the median time, which
``compare.py`` prints as a second table. The whole file takes about 2.5 minutes at
``--threads 1`` and 1.5 minutes at ``--threads 2`` on a 2-core AVX-512 machine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

import pyengine
from pyengine import kernels as K

from .conftest import OPTIONAL_IMPLS
from .impls import IMPLS

REFERENCE = "pyengine"
RTOL = 1e-3  # loose: the check only guards against timing a wrong kernel
NUMBA_MAX_FLOPS = 10e9  # numba's i-k-j kernel runs at 10-30 GFLOP/s here: ~1 s and more above


@dataclass(frozen=True)
class Gemm:
    """C (m, n) = op(A) op(B): A stored (k, m) when trans_a, B stored (n, k) when trans_b."""
    group: str
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    batch: int = 0  # > 0: a stack of `batch` independent products (leading dim)

    @property
    def flops(self):
        return 2 * self.m * self.n * self.k * max(self.batch, 1)

    @property
    def _lead(self):
        return (self.batch,) if self.batch else ()

    @property
    def a_shape(self):
        return self._lead + ((self.k, self.m) if self.trans_a else (self.m, self.k))

    @property
    def b_shape(self):
        return self._lead + ((self.n, self.k) if self.trans_b else (self.k, self.n))

    @property
    def c_shape(self):
        return self._lead + (self.m, self.n)


def _mat(rows, cols, trans=False):
    return f"({rows}x{cols})" + ("^T" if trans else "")


def _plain(prefix, m, k, n):
    return Gemm(f"{prefix}: {_mat(m, k)}@{_mat(k, n)}", m, n, k)


def _training(name, m, k, n):
    """Forward C = A B (A: m x k activations, B: k x n weights) and its two backward GEMMs."""
    return [
        _plain(f"gpt2 {name} fwd", m, k, n),
        # dA (m, k) = dC (m, n) . B^T, B stored (k, n): trans_b
        Gemm(f"gpt2 {name} dA: {_mat(m, n)}@{_mat(k, n, True)}", m, k, n, trans_b=True),
        # dB (k, n) = A^T . dC, A stored (m, k): trans_a
        Gemm(f"gpt2 {name} dB: {_mat(m, k, True)}@{_mat(m, n)}", k, n, m, trans_a=True),
    ]


SQUARES = [_plain(f"square {s}", s, s, s) for s in (64, 128, 256, 512, 1024, 2048, 4096)]
GPT2 = (_training("attn qkv", 4096, 768, 2304) + _training("mlp fc", 4096, 768, 3072)
        + _training("mlp proj", 4096, 3072, 768) + _training("lm head", 1024, 768, 50304))
GENERATION = [_plain(f"gpt2 generate M={m}", m, 768, n)
              for m in (1, 8) for n in (2304, 3072, 50304)]
SMALL = [_plain(f"small square {s}", s, s, s) for s in (8, 16, 32, 48)]
# Stacks of small products, one call: attention per head (GPT-2: 12 heads, head dim 64) at
# 4 sequences of T = 64 tokens, scores Q K^T and the weighted sum P V, and stacks of the
# small squares, where a single call is dominated by the Python call itself.
BATCHED_SMALL = [
    Gemm("batched 48 heads scores: (64x64)@(64x64)^T", 64, 64, 64, trans_b=True, batch=48),
    Gemm("batched 48 heads weighted sum: (64x64)@(64x64)", 64, 64, 64, batch=48),
    *[Gemm(f"batched 64 small squares {s}", s, s, s, batch=64) for s in (8, 16, 32)],
]
IM2COL = [  # (H_out W_out) x (C_in kh kw) . (C_in kh kw) x C_out
    _plain("resnet50 conv1 7x7/2 3->64 @112", 12544, 147, 64),
    _plain("resnet50 3x3 64->64 @56", 3136, 576, 64),
    _plain("resnet50 1x1 256->64 @56", 3136, 256, 64),
    _plain("resnet50 3x3 128->128 @28", 784, 1152, 128),
    _plain("resnet50 3x3 256->256 @14", 196, 2304, 256),
]
CASES = SQUARES + GPT2 + GENERATION + SMALL + BATCHED_SMALL + IM2COL


def rounds(gemm):
    """(rounds, iterations per round): about 1-3 s of timed calls per case and impl at one
    thread (far less for the largest, which are ~1 s a call: 3 rounds)."""
    flops = gemm.flops
    if flops >= 50e9:
        return 3, 1
    if flops >= 10e9:
        return 5, 1
    if flops >= 1e9:
        return 10, 1
    if flops >= 1e8:
        return 30, 1
    if flops >= 1e7:
        return 100, 1
    if flops >= 1e6:
        return 200, 1
    return 100, 20  # microseconds a call: several calls per round


# ---------------------------------------------------------------- inputs and implementations


@functools.lru_cache(maxsize=4)
def operands(gemm):
    rng = np.random.default_rng(0)
    return (rng.standard_normal(gemm.a_shape, dtype=np.float32),
            rng.standard_normal(gemm.b_shape, dtype=np.float32))


def _op(x, flag):
    return x.swapaxes(-1, -2) if flag else x


def build(impl, gemm, a, b, c):
    """An argument-less callable writing op(a) @ op(b) into c."""
    ta, tb = gemm.trans_a, gemm.trans_b
    if impl == "pyengine":
        return lambda: K.matmul(a, b, trans_a=ta, trans_b=tb, out=c)
    if impl == "numpy":
        a_op, b_op = _op(a, ta), _op(b, tb)
        return lambda: np.matmul(a_op, b_op, out=c)
    if impl == "torch":
        import torch

        ta_, tb_, tc_ = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        a_op, b_op = _op(ta_, ta), _op(tb_, tb)
        return lambda: torch.matmul(a_op, b_op, out=tc_)
    if impl == "numba":
        from . import numba_kernels as nk

        return lambda: nk.matmul(a, b, c)
    raise ValueError(impl)


_REFERENCE_OUTPUTS = {}  # gemm -> pyengine's output, kept while its group runs


def reference_output(gemm):
    if gemm not in _REFERENCE_OUTPUTS:
        _REFERENCE_OUTPUTS.clear()  # one case at a time: the largest outputs are 200 MB
        a, b = operands(gemm)
        c = np.empty(gemm.c_shape, np.float32)
        build(REFERENCE, gemm, a, b, c)()
        _REFERENCE_OUTPUTS[gemm] = c
    return _REFERENCE_OUTPUTS[gemm]


def check(impl, gemm, c):
    want = reference_output(gemm)
    atol = RTOL * float(np.abs(want).max())
    np.testing.assert_allclose(c, want, rtol=RTOL, atol=atol,
                               err_msg=f"{impl} {gemm.group}: differs from {REFERENCE}")


def record_gflops(benchmark, flops):
    stats = getattr(benchmark, "stats", None)  # None with --benchmark-disable
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info["gflops"] = round(flops / stats.stats.median / 1e9, 2)


# ---------------------------------------------------------------- benchmarks


PROBE_ITERATIONS = 4_000_000  # ~30 ms a call at one thread on AVX-512 (~100 GFLOP/s)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cores", ["1 thread", "all threads"])
def test_peak_fma_probe(benchmark, threads, cores, impl):
    if impl != "pyengine":
        pytest.skip("the FMA probe is pyengine's own (kernels.fma_probe)")
    probe_threads = 1 if cores == "1 thread" else threads
    if cores == "all threads" and threads == 1:
        pytest.skip("--threads 1: the same as the 1-thread probe")
    flops = K.fma_probe(PROBE_ITERATIONS, probe_threads)
    benchmark.group = f"peak fma probe, {probe_threads} thread{'s' * (probe_threads > 1)}"
    benchmark.extra_info.update(threads=probe_threads, isa=pyengine.get_isa(), flops=flops,
                                iterations=PROBE_ITERATIONS)
    benchmark.pedantic(K.fma_probe, args=(PROBE_ITERATIONS, probe_threads), rounds=20,
                       iterations=1, warmup_rounds=2)
    record_gflops(benchmark, flops)


def _importorskip(impl):
    if impl in OPTIONAL_IMPLS:
        pytest.importorskip(impl)


# `impl` is parametrized here rather than by conftest's fixture (same values, same skips) so
# that every implementation of one shape runs back to back: one reference output alive at a
# time, and the rows of a group measured under the same machine conditions.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gemm", CASES, ids=lambda g: g.group)
def test_gemm(benchmark, threads, gemm, impl):
    _importorskip(impl)
    if impl == "numba":
        if gemm.flops > NUMBA_MAX_FLOPS:
            pytest.skip(f"numba's i-k-j kernel (10-30 GFLOP/s here) would take ~1 s or more a "
                        f"call on {gemm.flops / 1e9:.0f} GFLOP: too slow")
        if gemm.trans_a or gemm.trans_b or gemm.batch:
            pytest.skip("the numba kernel takes one pair of untransposed operands only")
    a, b = operands(gemm)
    c = np.zeros(gemm.c_shape, np.float32)
    call = build(impl, gemm, a, b, c)
    call()  # untimed: JIT compilation, first-touch of c, and the result to check
    if impl == REFERENCE:
        _REFERENCE_OUTPUTS.clear()
        _REFERENCE_OUTPUTS[gemm] = c.copy()
    else:
        check(impl, gemm, c)
    benchmark.group = gemm.group
    benchmark.extra_info.update(threads=threads, m=gemm.m, n=gemm.n, k=gemm.k, batch=gemm.batch,
                                trans_a=gemm.trans_a, trans_b=gemm.trans_b, flops=gemm.flops)
    n_rounds, iterations = rounds(gemm)
    benchmark.pedantic(call, rounds=n_rounds, iterations=iterations, warmup_rounds=1)
    record_gflops(benchmark, gemm.flops)
