"""Fused attention (csrc/attention): the kernels at every ISA level against a float64 numpy
reference, the functional API against torch.nn.functional.scaled_dot_product_attention, the
dropout mask against a numpy Philox, the QKV layout against the (B, H, T, D) one, fully masked
rows, central differences, errors, thread counts and capture/replay."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from helpers import assert_close, check_finite_differences, unbroadcast

import pyengine
from pyengine import Tensor, nn
from pyengine import functional as F
from pyengine import kernels as K

torch = pytest.importorskip("torch")
TF = torch.nn.functional
F32, F64 = np.float32, np.float64


# ---------------------------------------------------------------- references


def philox_uniform(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """core/philox.h's uniform(seed, stream, index), vectorized: Philox-4x32-10 of counter
    (index >> 2, stream), lane index & 3, its top 24 bits / 2^24."""
    low = np.uint64(0xFFFFFFFF)
    ctr = index.astype(np.uint64) >> np.uint64(2)
    c0, c1 = ctr & low, ctr >> np.uint64(32)
    c2 = np.full_like(c0, np.uint64(stream) & low)
    c3 = np.full_like(c0, np.uint64(stream) >> np.uint64(32))
    k0, k1 = np.uint64(seed) & low, np.uint64(seed) >> np.uint64(32)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & low, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & low
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & low, (k1 + np.uint64(0xBB67AE85)) & low
    lanes = np.stack([c0, c1, c2, c3])
    bits = np.take_along_axis(lanes, (index.astype(np.uint64) & np.uint64(3)).astype(np.int64)[None], 0)[0]
    return (bits >> np.uint64(8)).astype(F64) / 2.0**24


def dropout_factors(shape, p, seed, stream):
    """The kernel's dropout factor of every (b, h, i, j): 0, or 1 / (1 - p) where kept."""
    if p == 0:
        return np.ones(shape)
    index = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    return np.where(philox_uniform(seed, stream, index) >= np.float32(p), 1.0 / (1.0 - p), 0.0)


def causal_keep(tq, tk):
    """Query i attends key j iff j <= i + (tk - tq): aligned to the end."""
    return np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)


def reference(q, k, v, mask, causal, scale, g, z=None):
    """float64 (out, dq, dk, dv, dmask) of sum(out * g), materializing the scores."""
    q, k, v, g = (np.asarray(x, F64) for x in (q, k, v, g))
    s = scale * q @ k.swapaxes(-1, -2)
    if mask is not None:
        s = s + mask
    if causal:
        s = np.where(causal_keep(q.shape[2], k.shape[2]), s, -np.inf)
    top = s.max(-1, keepdims=True)
    dead = top == -np.inf
    e = np.exp(s - np.where(dead, 0.0, top))
    total = e.sum(-1, keepdims=True)
    p = np.where(dead, 0.0, e / np.where(dead, 1.0, total))
    z = np.ones_like(p) if z is None else z
    out = (p * z) @ v
    dp = (g @ v.swapaxes(-1, -2)) * z
    ds = p * (dp - (p * dp).sum(-1, keepdims=True))
    dq = scale * ds @ k
    dk = scale * ds.swapaxes(-1, -2) @ q
    dv = (p * z).swapaxes(-1, -2) @ g
    dmask = None if mask is None else unbroadcast(ds, np.shape(mask))
    return out, dq, dk, dv, dmask


def normal(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def kernel_run(q, k, v, mask, causal, scale, g, p=0.0, rng=(0, 0)):
    """pyengine's forward and backward kernels: (out, dq, dk, dv, dmask), and lse."""
    rng = np.array(rng, np.int64)
    out, lse = K.attention(q, k, v, mask, rng, is_causal=causal, scale=scale, dropout_p=p)
    grads = [np.zeros_like(x) for x in (q, k, v)] + [None if mask is None else np.zeros_like(mask)]
    K.attention_backward(g, q, k, v, mask, rng, out, lse, grad_q=grads[0], grad_k=grads[1], grad_v=grads[2],
                         grad_mask=grads[3], is_causal=causal, scale=scale, dropout_p=p)
    return (out, *grads), lse


# (B, H, Tq, Tk, D, causal, mask shape)
KERNEL_CASES = [
    (1, 1, 1, 1, 1, False, None),
    (2, 3, 7, 7, 33, True, None),
    (1, 2, 33, 129, 64, True, (1, 2, 33, 129)),
    (2, 2, 65, 17, 32, True, (2, 1, 1, 17)),
    (1, 2, 67, 67, 128, False, (67, 1)),
    (1, 1, 70, 70, 256, True, None),
    (2, 1, 13, 131, 7, False, (1, 1, 13, 131)),
    (3, 2, 129, 64, 129, False, (1, 2, 129, 64)),
    # up to 4 query rows, a head dim of whole vectors: the few-query path (decoding)
    (2, 3, 1, 37, 64, True, (2, 1, 1, 37)),
    (1, 2, 3, 130, 32, True, None),
    (1, 1, 4, 4, 16, False, (4, 4)),
    (2, 2, 2, 19, 128, False, (1, 2, 2, 19)),
    (1, 1, 1, 513, 256, False, None),
    (1, 2, 4, 2, 64, True, None),  # Tq > Tk: the first two rows attend nothing
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernels_match_float64_reference(case, isa):
    b, h, tq, tk, d, causal, mask_shape = case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    q, k, v = normal(rng, b, h, tq, d), normal(rng, b, h, tk, d), normal(rng, b, h, tk, d)
    mask = None if mask_shape is None else normal(rng, *mask_shape)
    g = normal(rng, b, h, tq, d)
    scale = 1 / np.sqrt(d)
    got, lse = kernel_run(q, k, v, mask, causal, scale, g)
    want = reference(q, k, v, mask, causal, scale, g)
    for name, a, e in zip(("out", "dq", "dk", "dv", "dmask"), got, want):
        if e is not None:
            assert_close(a, e, atol=3e-5, rtol=1e-4, what=f"{isa} {name}")
    s = scale * q.astype(F64) @ k.astype(F64).swapaxes(-1, -2) + (0 if mask is None else mask)
    s = np.where(causal_keep(tq, tk), s, -np.inf) if causal else s
    top = s.max(-1)
    with np.errstate(invalid="ignore"):
        want_lse = np.where(top == -np.inf, np.inf, top + np.log(np.exp(s - top[..., None]).sum(-1)))
    assert_close(lse, want_lse, atol=1e-5, rtol=1e-5, what=f"{isa} lse")


def test_backward_accumulates_into_given_buffers():
    rng = np.random.default_rng(3)
    q, k, v, g = (normal(rng, 2, 2, 9, 16) for _ in range(4))
    (_, dq, dk, dv, _), lse = kernel_run(q, k, v, None, True, 0.25, g)
    out = K.attention(q, k, v, is_causal=True, scale=0.25)[0]
    init = [normal(rng, 2, 2, 9, 16) for _ in range(3)]
    bufs = [x.copy() for x in init]
    K.attention_backward(g, q, k, v, None, None, out, lse, grad_q=bufs[0], grad_k=bufs[1], grad_v=bufs[2],
                         is_causal=True, scale=0.25)
    for buf, x0, grad in zip(bufs, init, (dq, dk, dv)):
        assert_close(buf, x0 + grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("heads", [1, 6])
def test_results_do_not_depend_on_thread_count(threads, heads, restore_threads):
    """The per-head and the two-pass backward add the same tile products in the same order."""
    rng = np.random.default_rng(4)
    q, k, v, g = (normal(rng, 1, heads, 200, 64) for _ in range(4))
    mask = normal(rng, 1, 1, 200, 200)
    pyengine.set_num_threads(1)
    want, _ = kernel_run(q, k, v, mask, True, 0.125, g, p=0.2, rng=(11, 3))
    pyengine.set_num_threads(threads)
    got, _ = kernel_run(q, k, v, mask, True, 0.125, g, p=0.2, rng=(11, 3))
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_matches_the_philox_mask(p, isa):
    rng = np.random.default_rng(5)
    b, h, tq, tk, d = 2, 3, 37, 70, 16
    q, k, v, g = normal(rng, b, h, tq, d), normal(rng, b, h, tk, d), normal(rng, b, h, tk, d), normal(rng, b, h, tq, d)
    z = dropout_factors((b, h, tq, tk), p, 1234, 9)
    got, _ = kernel_run(q, k, v, None, True, 0.25, g, p=p, rng=(1234, 9))
    want = reference(q, k, v, None, True, 0.25, g, z=z)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(a, e, atol=3e-5, rtol=1e-4, what=f"{isa} dropout {name}")
    kept = (z > 0).mean()
    assert abs(kept - (1 - p)) < 0.03


def test_dropout_streams_differ_and_seed_reproduces():
    rng = np.random.default_rng(6)
    q, k, v = (normal(rng, 1, 2, 20, 8) for _ in range(3))
    a = K.attention(q, k, v, None, np.array([5, 0]), scale=0.3, dropout_p=0.5)[0]
    b = K.attention(q, k, v, None, np.array([5, 0]), scale=0.3, dropout_p=0.5)[0]
    c = K.attention(q, k, v, None, np.array([5, 1]), scale=0.3, dropout_p=0.5)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_functional_dropout_draws_a_fresh_stream_per_call():
    pyengine.manual_seed(21)
    rng = np.random.default_rng(7)
    q, k, v = (Tensor(normal(rng, 1, 2, 9, 8), requires_grad=True) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)  # takes stream 0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)  # stream 1
    g = normal(rng, 1, 2, 9, 8)
    (out * Tensor(g)).sum().backward()
    want = reference(q.data, k.data, v.data, None, False, 1 / np.sqrt(8), g,
                     z=dropout_factors((1, 2, 9, 9), 0.3, 21, 1))
    for a, e in zip((out.data, q.grad.data, k.grad.data, v.grad.data), want):  # only `out` was backpropagated
        assert_close(a, e, atol=3e-5, rtol=1e-4)


def test_functional_dropout_under_capture_replays_the_eager_masks():
    def step(q):
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.4).sum()

    x = normal(np.random.default_rng(3), 2, 2, 7, 8)
    pyengine.manual_seed(5)
    eager = [step(Tensor(x)).item() for _ in range(3)]
    pyengine.manual_seed(5)
    graph = pyengine.capture(step, x)
    assert [graph.run(x).item() for _ in range(3)] == eager
    assert len(set(eager)) == 3  # each call drew another mask


# ---------------------------------------------------------------- the functional API against torch


def torch_attention(q, k, v, mask, causal, g):
    """torch's SDPA in float64 with an explicit end-aligned causal mask; (out, grads of q, k, v, mask)."""
    tensors = [torch.tensor(np.asarray(x, F64), requires_grad=True) for x in (q, k, v)]
    tmask = None
    if mask is not None:
        tmask = torch.tensor(mask if mask.dtype == np.bool_ else mask.astype(F64), requires_grad=mask.dtype != np.bool_)
    full = tmask
    if causal:
        keep = torch.tensor(causal_keep(q.shape[2], k.shape[2]))
        if tmask is None:
            full = keep
        elif tmask.dtype == torch.bool:
            full = tmask & keep
        else:
            full = tmask + torch.where(keep, 0.0, float("-inf")).double()
    out = TF.scaled_dot_product_attention(*tensors, attn_mask=full)
    wanted = tensors + ([tmask] if tmask is not None and tmask.requires_grad else [])
    grads = torch.autograd.grad(out, wanted, torch.tensor(g.astype(F64)))
    return out.detach().numpy(), [x.numpy() for x in grads]


# (B, H, Tq, Tk, D, causal, mask shape, mask kind)
TORCH_CASES = [
    (2, 3, 16, 16, 32, True, None, None),
    (2, 3, 16, 16, 64, False, (2, 1, 1, 16), "bool"),
    (1, 4, 9, 21, 64, True, (1, 4, 9, 21), "float"),
    (2, 2, 33, 33, 128, False, (1, 2, 33, 33), "float"),
    (1, 2, 17, 5, 256, True, (5,), "float"),
    (3, 1, 7, 12, 1, False, (3, 1, 7, 12), "bool"),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(map(str, c)))
def test_functional_matches_torch(case):
    b, h, tq, tk, d, causal, mask_shape, kind = case
    rng = np.random.default_rng(8)
    q, k, v, g = normal(rng, b, h, tq, d), normal(rng, b, h, tk, d), normal(rng, b, h, tk, d), normal(rng, b, h, tq, d)
    mask = None
    if kind == "bool":
        mask = rng.random(mask_shape) < 0.7
        mask[..., 0] = True  # every row attends a key here (fully masked rows: their own test)
    elif kind == "float":
        mask = normal(rng, *mask_shape)
    pq, pk, pv = (Tensor(x, requires_grad=True) for x in (q, k, v))
    pmask = None if mask is None else (mask if kind == "bool" else Tensor(mask, requires_grad=True))
    out = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=pmask, is_causal=causal)
    (out * Tensor(g)).sum().backward()
    want_out, want_grads = torch_attention(q, k, v, mask, causal, g)
    assert_close(out.data, want_out, atol=3e-5, rtol=1e-4, what="out")
    got = [pq.grad.data, pk.grad.data, pv.grad.data] + ([pmask.grad.data] if kind == "float" else [])
    for name, a, e in zip(("dq", "dk", "dv", "dmask"), got, want_grads):
        assert_close(a, e, atol=3e-5, rtol=1e-4, what=name)


def test_causal_equals_torch_is_causal_for_square():
    rng = np.random.default_rng(9)
    q, k, v = (normal(rng, 2, 2, 19, 16) for _ in range(3))
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True, scale=0.3)
    want = TF.scaled_dot_product_attention(*(torch.tensor(x) for x in (q, k, v)), is_causal=True, scale=0.3)
    assert_close(out.data, want.numpy(), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "-inf"])
def test_fully_masked_rows_give_zeros_and_zero_grads_as_torch(kind):
    """torch 2.13 returns 0 for a query row whose mask excludes every key (boolean False or -inf
    additive), with zero gradients; so does pyengine (its lse is +inf there)."""
    rng = np.random.default_rng(10)
    q, k, v, g = normal(rng, 1, 2, 5, 8), normal(rng, 1, 2, 6, 8), normal(rng, 1, 2, 6, 8), normal(rng, 1, 2, 5, 8)
    keep = np.ones((5, 6), bool)
    keep[1] = False
    keep[3, 2:] = False
    mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf).astype(F32)
    pq, pk, pv = (Tensor(x, requires_grad=True) for x in (q, k, v))
    out = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=mask)
    (out * Tensor(g)).sum().backward()
    np.testing.assert_array_equal(out.data[:, :, 1], 0.0)
    np.testing.assert_array_equal(pq.grad.data[:, :, 1], 0.0)
    want_out, want_grads = torch_attention(q, k, v, mask if kind == "bool" else mask.astype(F64), False, g)
    assert_close(out.data, want_out, atol=3e-5, rtol=1e-4)
    for a, e in zip((pq.grad.data, pk.grad.data, pv.grad.data), want_grads):
        assert_close(a, e, atol=3e-5, rtol=1e-4)
    lse = K.attention(q, k, v, np.ascontiguousarray(np.where(keep, 0, -np.inf).astype(F32)), scale=0.3)[1]
    assert np.all(lse[:, :, 1] == np.inf)


def test_few_query_rows_masked_out_give_zeros_and_infinite_lse(isa):
    """The few-query path (<= 4 rows, whole-vector head dim): a row whose additive mask is -inf
    everywhere gives 0 and lse = +inf, the others the reference."""
    rng = np.random.default_rng(12)
    q, k, v = normal(rng, 1, 2, 3, 64), normal(rng, 1, 2, 9, 64), normal(rng, 1, 2, 9, 64)
    mask = np.zeros((3, 9), F32)
    mask[1] = -np.inf
    out, lse = K.attention(q, k, v, mask, scale=0.125)
    np.testing.assert_array_equal(out[:, :, 1], 0.0)
    assert np.all(lse[:, :, 1] == np.inf) and np.all(np.isfinite(lse[:, :, [0, 2]]))
    keep = [0, 2]
    want = reference(q[:, :, keep], k, v, None, False, 0.125, np.zeros_like(q[:, :, keep]))[0]
    assert_close(out[:, :, keep], want, atol=2e-6, rtol=1e-5, what=isa)


def test_causal_with_more_queries_than_keys_masks_the_first_rows():
    """End-aligned: with Tq = 6 > Tk = 4, queries 0 and 1 attend no key and give 0."""
    rng = np.random.default_rng(11)
    q, k, v = normal(rng, 1, 1, 6, 4), normal(rng, 1, 1, 4, 4), normal(rng, 1, 1, 4, 4)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).data
    np.testing.assert_array_equal(out[0, 0, :2], 0.0)
    assert_close(out, reference(q, k, v, None, True, 0.5, np.zeros_like(q))[0], atol=2e-6, rtol=1e-5)


# ---------------------------------------------------------------- the QKV layout


@pytest.mark.parametrize("shape,causal", [((2, 17, 3, 3, 32), True), ((1, 70, 3, 2, 64), False),
                                          ((2, 5, 3, 1, 7), True)])
def test_qkv_layout_matches_bhtd(shape, causal, isa):
    b, t, _, h, d = shape
    rng = np.random.default_rng(12)
    qkv = normal(rng, *shape)
    g = normal(rng, b, t, h, d)
    x = Tensor(qkv, requires_grad=True)
    out = F.qkv_attention(x, is_causal=causal)
    (out * Tensor(g)).sum().backward()
    q, k, v = (np.ascontiguousarray(qkv[:, :, i].transpose(0, 2, 1, 3)) for i in range(3))
    want = reference(q, k, v, None, causal, 1 / np.sqrt(d), g.transpose(0, 2, 1, 3))
    assert_close(out.data, want[0].transpose(0, 2, 1, 3), atol=3e-5, rtol=1e-4, what="out")
    dqkv = np.stack([w.transpose(0, 2, 1, 3) for w in want[1:4]], axis=2)
    assert_close(x.grad.data, dqkv, atol=3e-5, rtol=1e-4, what="dqkv")
    # the same kernel through the (B, H, T, D) layout, to rounding
    bhtd = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=causal).data
    assert_close(out.data, bhtd.transpose(0, 2, 1, 3), atol=1e-6, rtol=1e-5, what="vs bhtd")


# ---------------------------------------------------------------- finite differences


def test_finite_differences_with_learned_bias():
    rng = np.random.default_rng(13)
    q, k, v = normal(rng, 1, 2, 3, 4), normal(rng, 1, 2, 4, 4), normal(rng, 1, 2, 4, 4)
    bias = normal(rng, 1, 2, 3, 4, scale=0.5)

    def fwd(q, k, v, bias):
        return K.attention(q, k, v, bias, is_causal=True, scale=0.5)

    def bwd(g, xs, outs, grads):
        out_grads = [np.zeros_like(x) for x in xs]
        K.attention_backward(g, *xs, None, outs[0], outs[1], grad_q=out_grads[0], grad_k=out_grads[1],
                             grad_v=out_grads[2], grad_mask=out_grads[3], is_causal=True, scale=0.5)
        return out_grads

    check_finite_differences([q, k, v, bias], fwd, bwd)


# ---------------------------------------------------------------- errors


def _t(*shape, dtype=F32):
    return Tensor(np.ones(shape, dtype))


@pytest.mark.parametrize("call,exc,fragments", [
    (lambda: F.scaled_dot_product_attention(_t(2, 3, 4), _t(2, 3, 4), _t(2, 3, 4)), ValueError,
     ["scaled_dot_product_attention", "4-D", "(2, 3, 4)"]),
    (lambda: F.scaled_dot_product_attention(_t(1, 2, 3, 4), _t(1, 2, 5, 8), _t(1, 2, 5, 8)), ValueError,
     ["attention", "(1, 2, 5, 8)"]),
    (lambda: F.scaled_dot_product_attention(_t(1, 2, 3, 4), _t(1, 3, 5, 4), _t(1, 3, 5, 4)), ValueError,
     ["attention", "(1, 3, 5, 4)"]),
    (lambda: F.scaled_dot_product_attention(_t(1, 1, 3, 257), _t(1, 1, 3, 257), _t(1, 1, 3, 257)), ValueError,
     ["attention", "257", "256"]),
    (lambda: F.scaled_dot_product_attention(_t(1, 2, 3, 4), _t(1, 2, 5, 4), _t(1, 2, 5, 4),
                                            attn_mask=np.zeros((3, 4), F32)), ValueError,
     ["attention", "'mask'", "(3, 4)", "(1, 2, 3, 5)"]),
    (lambda: F.scaled_dot_product_attention(_t(1, 2, 3, 4), _t(1, 2, 5, 4), _t(1, 2, 5, 4),
                                            attn_mask=np.zeros((3, 5), np.int64)), TypeError,
     ["scaled_dot_product_attention", "attn_mask", "int64"]),
    (lambda: F.scaled_dot_product_attention(_t(1, 2, 3, 4, dtype=np.float64), _t(1, 2, 5, 4), _t(1, 2, 5, 4)),
     TypeError, ["attention", "float32", "float64"]),
    (lambda: F.scaled_dot_product_attention(np.ones((1, 1, 2, 2), F32), _t(1, 1, 2, 2), _t(1, 1, 2, 2)),
     TypeError, ["scaled_dot_product_attention", "Tensor"]),
    (lambda: F.qkv_attention(_t(2, 5, 2, 3, 4)), ValueError, ["qkv_attention", "(2, 5, 2, 3, 4)"]),
    (lambda: K.qkv_attention(np.ones((2, 5, 4, 3, 4), F32), scale=1.0), ValueError,
     ["qkv_attention_forward", "third dim must be 3"]),
    (lambda: K.attention(*(np.ones((1, 1, 2, 4), F32),) * 3, None, np.array([1, 2, 3]), scale=1.0), ValueError,
     ["attention_forward", "'rng'", "(3,)"]),
    (lambda: K.attention(*(np.ones((1, 1, 2, 4), F32),) * 3, scale=1.0, dropout_p=0.5), ValueError,
     ["attention_forward", "rng"]),
    (lambda: K.attention(*(np.ones((1, 1, 2, 4), F32),) * 3, scale=1.0, dropout_p=1.0), ValueError,
     ["attention_forward", "dropout_p"]),
])
def test_errors_name_the_op(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


# ---------------------------------------------------------------- capture and replay


def test_replay_equals_eager_bit_for_bit():
    rng = np.random.default_rng(14)
    b, t, h, d = 2, 40, 2, 16
    wq = nn.Parameter(normal(rng, b, h, t, d))
    k, v = nn.Parameter(normal(rng, b, h, t, d)), nn.Parameter(normal(rng, b, h, t, d))
    bias = nn.Parameter(normal(rng, 1, h, t, t))
    qkv = nn.Parameter(normal(rng, b, t, 3, h, d))
    params = [wq, k, v, bias, qkv]

    def loss_fn(x):
        o = F.scaled_dot_product_attention(x * wq, k, v, attn_mask=bias, is_causal=True)
        o2 = F.qkv_attention(qkv)
        return (o * o).sum() + (o2 * o2).sum()

    x = normal(rng, b, h, t, d)
    step = pyengine.capture(loss_fn, x, optimizer=pyengine.optim.SGD(params, lr=0.0))
    for p in params:
        p.grad = None
    eager = loss_fn(Tensor(x))
    eager.backward()
    want = [p.grad.data.copy() for p in params]
    replayed = step.run(x)
    np.testing.assert_array_equal(replayed.data, eager.data)
    for p, w in zip(params, want):
        np.testing.assert_array_equal(p.grad.data, w)


@pytest.mark.parametrize("mask_shape", [(2, 1, 1, 9), (2, 3, 9, 9), (9,)], ids=["padding", "full", "keys"])
def test_qkv_layout_with_an_additive_mask(mask_shape, isa):
    """qkv_attention's mask (a BERT padding mask is (B, 1, 1, T)) as the (B, H, T, D) layout's, with dmask."""
    b, t, h, d = 2, 9, 3, 8
    rng = np.random.default_rng(13)
    qkv, g = normal(rng, b, t, 3, h, d), normal(rng, b, t, h, d)
    mask = normal(rng, *mask_shape)
    if mask_shape[0] == 2:
        mask[1, ..., 6:] = np.finfo(F32).min  # padded keys of the second sequence
    x, m = Tensor(qkv, requires_grad=True), Tensor(mask, requires_grad=True)
    out = F.qkv_attention(x, is_causal=False, attn_mask=m)
    (out * Tensor(g)).sum().backward()
    q, k, v = (np.ascontiguousarray(qkv[:, :, i].transpose(0, 2, 1, 3)) for i in range(3))
    want = reference(q, k, v, mask, False, 1 / np.sqrt(d), g.transpose(0, 2, 1, 3))
    assert_close(out.data, want[0].transpose(0, 2, 1, 3), atol=3e-5, rtol=1e-4, what="out")
    dqkv = np.stack([w.transpose(0, 2, 1, 3) for w in want[1:4]], axis=2)
    assert_close(x.grad.data, dqkv, atol=3e-5, rtol=1e-4, what="dqkv")
    assert_close(m.grad.data, want[4], atol=3e-5, rtol=1e-4, what="dmask")
