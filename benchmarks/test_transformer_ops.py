"""The transformer building blocks added by the embedding/dropout/clipping work, beside torch.

- ``embedding`` forward+backward at GPT shapes (vocab 50257 with dim 768, vocab 256 with dim
  256; 1024 and 2048 tokens). The backward is timed with the zeroing of dweight, as a training
  step does it (torch's embedding_dense_backward allocates and zeroes its own);
- ``dropout`` (p = 0.1) forward and forward+backward, and the fused ``residual + dropout(x)``
  forward, on (2048, 768) and (8192, 768) activations; torch runs native_dropout (its mask is
  a bool tensor it keeps for the backward, ours is regenerated, so the rows are not compared);
- ``clip+adamw``: one AdamW step with gradient clipping over GPT-2 small's 148 buffers
  (124M parameters): pyengine's clipping fused into the step (``AdamW(max_grad_norm=...)``)
  and, as a separate group, eager clip_grad_norm_ then AdamW, against
  torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW(fused=True).
"""

from __future__ import annotations

import numpy as np

import pyengine as pe
import pyengine.kernels as K
from pyengine.nn.utils import clip_grad_norm_

from base import Case, kernel, parametrize, run

_f32 = np.float32
P = 0.1
EMBEDDING_SHAPES = ((50257, 768, 1024), (50257, 768, 2048), (256, 256, 2048))
DROPOUT_SHAPES = ((2048, 768), (8192, 768))
MAX_NORM, LR, DECAY = 1.0, 6e-4, 0.1

CASES = [Case("embedding", "forward+backward", f"embedding fwd+bwd V={v} D={d} N={n}", (v, d, n), rounds=20)
         for v, d, n in EMBEDDING_SHAPES]
CASES += [Case("dropout", pass_name, f"dropout {pass_name} {shape}", shape, rounds=30)
          for shape in DROPOUT_SHAPES for pass_name in ("forward", "forward+backward")]
CASES += [Case("dropout_add", "forward", f"residual+dropout forward {shape}", shape, rounds=30)
          for shape in DROPOUT_SHAPES]
CASES += [Case(name, "step", f"{name} step GPT-2 124M", (124,), rounds=5)
          for name in ("clip+adamw", "clip then adamw")]


def _tensors(b):
    import torch

    return {name: torch.from_numpy(arr) for name, arr in vars(b).items() if isinstance(arr, np.ndarray)}


# ---------------------------------------------------------------- embedding


def _embedding_inputs(case):
    vocab, dim, rows = case.shape
    rng = np.random.default_rng(0)
    return {"weight": rng.standard_normal((vocab, dim), dtype=_f32),
            "idx": rng.integers(0, vocab, rows).astype(np.int64),
            "grad_out": rng.standard_normal((rows, dim), dtype=_f32)}


embedding = kernel("embedding", inputs=_embedding_inputs, ops=("embedding_forward", "embedding_backward"))


@embedding.impl("pyengine")
def pyengine_embedding(case, b):
    def backward():
        b.grad_weight.fill(0)
        K.embedding_backward(b.grad_out, b.weight, b.idx, grad_weight=b.grad_weight)

    return lambda: K.embedding(b.weight, b.idx, out=b.out), backward


@embedding.impl("torch")
def torch_embedding(case, b):
    import torch

    t = _tensors(b)

    def forward():
        b.out = torch.nn.functional.embedding(t["idx"], t["weight"]).numpy()

    def backward():
        b.grad_weight = torch.ops.aten.embedding_dense_backward(t["grad_out"], t["idx"], case.shape[0], -1,
                                                                False).numpy()

    return forward, backward


# ---------------------------------------------------------------- dropout


def _dropout_inputs(case):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal(case.shape, dtype=_f32), "residual": rng.standard_normal(case.shape, dtype=_f32),
            "grad_y": rng.standard_normal(case.shape, dtype=_f32), "rng": np.array([1234, 5], np.int64)}


dropout = kernel("dropout", inputs=_dropout_inputs)
dropout_add = kernel("dropout_add", inputs=_dropout_inputs)


@dropout.impl("pyengine")
def pyengine_dropout(case, b):
    y, dx = np.empty_like(b.x), np.zeros_like(b.x)
    return (lambda: K.dropout(b.x, b.rng, p=P, out=y),
            lambda: K.dropout_backward(b.grad_y, b.rng, p=P, grad_x=dx))


@dropout.impl("torch")
def torch_dropout(case, b):
    import torch

    t, saved = _tensors(b), {}

    def forward():
        saved["y"], saved["mask"] = torch.native_dropout(t["x"], P, True)

    return forward, lambda: torch.ops.aten.native_dropout_backward(t["grad_y"], saved["mask"], 1 / (1 - P))


@dropout_add.impl("pyengine")
def pyengine_dropout_add(case, b):
    y = np.empty_like(b.x)
    return lambda: K.dropout_add(b.residual, b.x, b.rng, p=P, out=y), None


@dropout_add.impl("torch")
def torch_dropout_add(case, b):
    import torch

    t = _tensors(b)
    return lambda: torch.add(t["residual"], torch.nn.functional.dropout(t["x"], P, True)), None


# ---------------------------------------------------------------- clipping + AdamW


def gpt2_small_shapes(vocab=50257, context=1024, dim=768, layers=12):
    """The parameter shapes of GPT-2 small (124M parameters, wte shared with the head)."""
    block = [(dim,), (dim,), (dim, 3 * dim), (3 * dim,), (dim, dim), (dim,), (dim,), (dim,),
             (dim, 4 * dim), (4 * dim,), (4 * dim, dim), (dim,)]
    return [(vocab, dim), (context, dim)] + block * layers + [(dim,), (dim,)]


def _clip_inputs(case):  # flat: the base keeps arrays; each impl cuts its own copies into buffers
    rng = np.random.default_rng(2)
    n = sum(int(np.prod(s)) for s in gpt2_small_shapes())
    return {"params": rng.standard_normal(n, dtype=_f32) * _f32(0.02),
            "grads": rng.standard_normal(n, dtype=_f32) * _f32(0.01)}


def _buffers(flat):
    """One copy of `flat` cut into GPT-2 small's parameter shapes (separate arrays, as a model has)."""
    out, start = [], 0
    for shape in gpt2_small_shapes():
        size = int(np.prod(shape))
        out.append(flat[start:start + size].reshape(shape).copy())
        start += size
    return out


def _pyengine_optimizer(b, fused):
    params = [pe.Tensor(p, requires_grad=True) for p in _buffers(b.params)]
    for p, g in zip(params, _buffers(b.grads)):
        p._grad = g
    opt = pe.optim.AdamW(params, lr=LR, weight_decay=DECAY, max_grad_norm=MAX_NORM if fused else None)
    return params, opt


def _torch_step(b):
    import torch

    params = [torch.nn.Parameter(torch.from_numpy(p)) for p in _buffers(b.params)]
    for p, g in zip(params, _buffers(b.grads)):
        p.grad = torch.from_numpy(g)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=DECAY, fused=True)

    def step():
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()

    return step, None


for _name, _fused in (("clip+adamw", True), ("clip then adamw", False)):
    _spec = kernel(_name, inputs=_clip_inputs)
    _spec.impl("torch")(lambda case, b: _torch_step(b))

    @_spec.impl("pyengine")
    def _pyengine_step(case, b, fused=_fused):
        params, opt = _pyengine_optimizer(b, fused)
        if fused:
            return opt.step, None

        def step():
            clip_grad_norm_(params, MAX_NORM)
            opt.step()

        return step, None


@parametrize(CASES)
def test_transformer_ops(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
