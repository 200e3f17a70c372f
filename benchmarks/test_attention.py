"""Fused attention (csrc/attention) beside PyTorch's scaled_dot_product_attention.

Groups: forward and forward+backward of B = 4, H = 12, D = 64 causal attention at T = 256, 1024
and 2048 (GPT-2 small's heads), and D = 128 non-causal at T = 512. Rows:

- ``pyengine``: ``kernels.attention`` and ``kernels.attention_backward`` into the base's buffers;
- ``torch``: ``F.scaled_dot_product_attention`` (on CPU, float32, no mask: its flash kernel), the
  backward through autograd (``torch.autograd.grad`` of the output);
- ``torch_math``: the same under ``sdpa_kernel(SDPBackend.MATH)``, the unfused
  softmax(q k^T) v that materializes (B, H, T, T) scores (skipped at T = 2048 for the
  backward: its saved scores and gradients are about 3 GB).

torch writes its results into the base's buffers with one copy each (a few MB, against tens of
ms of attention). The saved log-sum-exp (``lse``) is pyengine's own (torch keeps its own
inside autograd): the peers' rows copy pyengine's once, untimed, so that the base's
correctness check, which compares every declared buffer, passes on it and checks the rest.
FLOPs: 4 B H Tq Tk D for the forward (half of it when causal), 3.5 times that for
forward+backward (the backward's five products), recorded for the GFLOP/s column.

Caution (measured): in a pytest session, conftest's ``numba.set_num_threads(n)`` makes torch's
SDPA rows 10 to 20 times slower (T = 256 forward: 64 ms without it, 700-1400 ms with it, the
same builder); until that is fixed, read torch's rows from a process that does not start
numba's threading layer (``base.make_case`` on these cases, as the report of this file did).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import pyengine.kernels as K

from base import Case, kernel, parametrize, run, run_fma_probe

_f32 = np.float32
B, H = 4, 12
# (T, D, causal)
SHAPES = [(256, 64, True), (1024, 64, True), (2048, 64, True), (512, 128, False)]


def _flops(t, d, causal, pass_name):
    forward = 4 * B * H * t * t * d * (0.5 if causal else 1.0)
    return int(forward * (3.5 if pass_name == "forward+backward" else 1.0))


def _case(t, d, causal, pass_name):
    rounds = 3 if t >= 2048 else 5 if t >= 1024 else 10
    name = f"attention {pass_name} B={B} H={H} T={t} D={d}{' causal' if causal else ''}"
    return Case("attention", pass_name, name, (B, H, t, d), spec=causal, rounds=rounds,
                flops=_flops(t, d, causal, pass_name), info=(("causal", causal),))


CASES = [_case(t, d, c, p) for p in ("forward", "forward+backward") for t, d, c in SHAPES]


def _inputs(case):
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(case.shape, dtype=_f32) for name in ("q", "k", "v", "grad_out")}


attention = kernel("attention", inputs=_inputs, ops=("attention_forward", "attention_backward"),
                   options=lambda case: {"is_causal": case.spec, "scale": _scale(case)})


def _scale(case):
    return float(1.0 / np.sqrt(case.shape[-1]))


@attention.impl("pyengine")
def pyengine_attention(case, b):
    options = dict(is_causal=case.spec, scale=_scale(case))

    def forward():
        K.attention(b.q, b.k, b.v, out=b.out, lse=b.lse, **options)

    def backward():
        K.attention_backward(b.grad_out, b.q, b.k, b.v, None, None, b.out, b.lse, grad_q=b.grad_q,
                             grad_k=b.grad_k, grad_v=b.grad_v, **options)

    return forward, backward


def _torch_builder(math: bool):
    def build(case, b):
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        t = SimpleNamespace(**{n: torch.from_numpy(getattr(b, n)) for n in ("q", "k", "v", "grad_out", "out",
                                                                           "grad_q", "grad_k", "grad_v")})
        leaves = [x.detach().clone().requires_grad_(case.runs_backward) for x in (t.q, t.k, t.v)]
        state = {}
        backend = SDPBackend.MATH if math else SDPBackend.FLASH_ATTENTION

        def forward():
            with sdpa_kernel(backend), torch.set_grad_enabled(case.runs_backward):
                state["out"] = sdpa(*leaves, is_causal=case.spec)
            t.out.copy_(state["out"].detach())

        def backward():
            grads = torch.autograd.grad(state.pop("out"), leaves, t.grad_out)
            for dst, g in zip((t.grad_q, t.grad_k, t.grad_v), grads):
                dst.copy_(g)

        b.lse[...] = K.attention(b.q, b.k, b.v, is_causal=case.spec, scale=_scale(case))[1]  # see the docstring
        return forward, backward

    return build


attention.impl("torch")(_torch_builder(math=False))
attention.impl("torch_math", skip=lambda case: "the math path's (B, H, T, T) backward needs ~3 GB"
               if case.shape[2] >= 2048 and case.runs_backward else None)(_torch_builder(math=True))


@pytest.mark.parametrize("impl", ["pyengine"])
def test_peak_fma_probe(benchmark, threads, impl):
    run_fma_probe(benchmark, threads, threads)


@parametrize(CASES, impls=("pyengine", "torch", "torch_math"))
def test_attention(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
