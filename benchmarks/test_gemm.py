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
its first result is checked against pyengine's before timing (all through the benchmark
base, base.py; the rounds come from ``base.rounds_by_flops``). ``extra_info`` holds the thread
count, the shape, the flops (2 M N K) and the GFLOP/s at the median time, which
``compare.py`` prints as a second table. The whole file takes about 2.5 minutes at
``--threads 1`` and 1.5 minutes at ``--threads 2`` on a 2-core AVX-512 machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pyengine import kernels as K

from base import IMPLS, Case, kernel, parametrize, rounds_by_flops, run, run_fma_probe

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
def _case(gemm):
    rounds, iterations = rounds_by_flops(gemm.flops)
    info = {"m": gemm.m, "n": gemm.n, "k": gemm.k, "batch": gemm.batch,
            "trans_a": gemm.trans_a, "trans_b": gemm.trans_b}
    return Case("gemm", "forward", gemm.group, gemm.c_shape, spec=gemm, rounds=rounds,
                iterations=iterations, flops=gemm.flops, info=tuple(info.items()))


CASES = [_case(gemm) for gemm in SQUARES + GPT2 + GENERATION + SMALL + BATCHED_SMALL + IM2COL]


# ---------------------------------------------------------------- inputs and implementations
# Each builder writes op(a) @ op(b) into the case's c.


def _operands(case):
    rng = np.random.default_rng(0)
    gemm = case.spec
    return {"a": rng.standard_normal(gemm.a_shape, dtype=np.float32),
            "b": rng.standard_normal(gemm.b_shape, dtype=np.float32)}


gemm_kernel = kernel("gemm", inputs=_operands, ops=("matmul_forward",),
                     options=lambda case: {"trans_a": case.spec.trans_a,
                                           "trans_b": case.spec.trans_b})


def _op(x, flag):
    return x.swapaxes(-1, -2) if flag else x


@gemm_kernel.impl("pyengine")
def pyengine_gemm(case, b):
    ta, tb = case.spec.trans_a, case.spec.trans_b
    return lambda: K.matmul(b.a, b.b, trans_a=ta, trans_b=tb, out=b.c), None


@gemm_kernel.impl("numpy")
def numpy_gemm(case, b):
    a_op, b_op = _op(b.a, case.spec.trans_a), _op(b.b, case.spec.trans_b)
    return lambda: np.matmul(a_op, b_op, out=b.c), None


@gemm_kernel.impl("torch")
def torch_gemm(case, b):
    import torch

    a_op = _op(torch.from_numpy(b.a), case.spec.trans_a)
    b_op = _op(torch.from_numpy(b.b), case.spec.trans_b)
    c = torch.from_numpy(b.c)
    return lambda: torch.matmul(a_op, b_op, out=c), None


def _numba_skip(case):
    gemm = case.spec
    if gemm.flops > NUMBA_MAX_FLOPS:
        return (f"numba's i-k-j kernel (10-30 GFLOP/s here) would take ~1 s or more a "
                f"call on {gemm.flops / 1e9:.0f} GFLOP: too slow")
    if gemm.trans_a or gemm.trans_b or gemm.batch:
        return "the numba kernel takes one pair of untransposed operands only"
    return None


@gemm_kernel.impl("numba", skip=_numba_skip)
def numba_gemm(case, b):
    import numba_kernels as nk

    return lambda: nk.matmul(b.a, b.b, b.c), None


# ---------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cores", ["1 thread", "all threads"])
def test_peak_fma_probe(benchmark, threads, cores, impl):
    if impl != "pyengine":
        pytest.skip("the FMA probe is pyengine's own (kernels.fma_probe)")
    if cores == "all threads" and threads == 1:
        pytest.skip("--threads 1: the same as the 1-thread probe")
    run_fma_probe(benchmark, threads, 1 if cores == "1 thread" else threads)


@parametrize(CASES)
def test_gemm(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
