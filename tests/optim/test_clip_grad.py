"""Gradient clipping: clip_grad_norm_ against torch, non-finite norms, and
clipping fused into AdamW (eager against torch for 10 steps, captured replay
against eager bit for bit, with no allocation)."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch

import pyengine as pe
from pyengine import _C, nn, optim
from pyengine import functional as F
from pyengine.nn.utils import clip_grad_norm_

F32 = np.float32


def _grads(seed, shapes=((7, 5), (5,), (300, 40), (1,)), scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(F32) for s in shapes]


def _params_with(grads):
    params = [pe.Tensor(np.zeros(g.shape, F32), requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    return params


def _torch_params_with(grads):
    params = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(isa, norm_type, max_norm):
    grads = _grads(1)
    ours, theirs = _params_with(grads), _torch_params_with(grads)
    total = clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(total, pe.Tensor) and total.shape == ()
    np.testing.assert_allclose(total.item(), expected.item(), rtol=1e-5)  # torch sums in float32
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-7)
    if max_norm > 1e5:  # not clipped: untouched
        for p, g in zip(ours, grads):
            np.testing.assert_array_equal(p.grad.numpy(), g)


def test_vector_norm_kernel_against_float64(isa, restore_threads):
    x = np.random.default_rng(2).standard_normal(1_000_003).astype(F32)
    norms = []
    for threads in (1, 2, 3):
        pe.set_num_threads(threads)
        norms.append(_C.vector_norm(None, x).item())
    assert norms[0] == norms[1] == norms[2]  # the same parts for any thread count
    np.testing.assert_allclose(norms[0], np.linalg.norm(x.astype(np.float64)), rtol=1e-7)
    np.testing.assert_allclose(_C.vector_norm(None, x, norm_type=1.0).item(), np.abs(x).sum(dtype=np.float64),
                               rtol=1e-7)
    assert _C.vector_norm(None, x, norm_type=math.inf).item() == np.abs(x).max()
    assert _C.vector_norm(None, np.zeros(0, F32)).item() == 0.0


def test_no_gradients_and_bad_arguments():
    p = pe.Tensor(np.zeros(3, F32), requires_grad=True)
    assert clip_grad_norm_([p], 1.0).item() == 0.0
    p.grad = np.ones(3, F32)
    with pytest.raises(ValueError, match="norm_type must be > 0 or inf"):
        clip_grad_norm_(p, 1.0, norm_type=0)
    with pytest.raises(ValueError, match="vector_norm: norm_type must be > 0"):
        _C.vector_norm(None, np.ones(3, F32), norm_type=-2.0)
    with pytest.raises(ValueError, match="AdamW: norm_type"):
        optim.AdamW([p], max_grad_norm=1.0, grad_norm_type=-1)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_norms(bad):
    grads = _grads(3)
    grads[2][4, 4] = bad
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(_params_with(grads), 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(_torch_params_with(grads), 1.0, error_if_nonfinite=True)
    ours, theirs = _params_with(grads), _torch_params_with(grads)
    total = clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isinf(total.item()) == math.isinf(expected.item())
    assert math.isnan(total.item()) == math.isnan(expected.item())
    for p, t in zip(ours, theirs):  # scaled by 0 (inf) or NaN, as torch
        np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())
    # fused: nothing changes before the error
    params = _params_with(grads)
    opt = optim.AdamW(params, max_grad_norm=1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step()
    assert not any(p.numpy().any() for p in params) and not len(opt.state)


# ------------------------------------------------------------------ training against torch


def _data(seed=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((32, 10)).astype(F32), rng.integers(0, 4, 32).astype(np.int64)


def _model(seed=5):
    pe.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.GELU("tanh"), nn.Linear(32, 4))


def _torch_model(model):
    tm = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(32, 4))
    with torch.no_grad():
        for t, p in zip(tm.parameters(), model.parameters()):
            t.copy_(torch.tensor(p.numpy()))
    return tm


ADAM = dict(lr=0.05, weight_decay=0.1)
MAX_NORM = 0.3  # small: every step clips


def _torch_losses(model, x, y, steps=10):
    tm = _torch_model(model)
    opt = torch.optim.AdamW(tm.parameters(), **ADAM)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), MAX_NORM)
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().numpy() for p in tm.parameters()]


def _eager(model, opt, x, y, steps=10, clip=False):
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(pe.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        if clip:
            clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("fused", [False, True])
def test_ten_steps_match_torch_clip_and_adamw(fused):
    x, y = _data()
    model = _model()
    expected_losses, expected_params = _torch_losses(model, x, y)
    opt = optim.AdamW(model.parameters(), **ADAM, max_grad_norm=MAX_NORM if fused else None)
    losses = _eager(model, opt, x, y, clip=not fused)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for p, t in zip(model.parameters(), expected_params):
        np.testing.assert_allclose(p.numpy(), t, rtol=1e-5, atol=1e-6)
    if fused:
        assert opt.grad_norm.shape == () and opt.grad_norm.item() > 0


def _numpy_growth(fn) -> int:
    domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(domain)
        fn()
        after = tracemalloc.take_snapshot().filter_traces(domain)
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "lineno") if stat.size_diff > 0)


def test_captured_clip_and_adamw_replay_equals_eager_bit_for_bit():
    x, y = _data(6)
    eager_model = _model(7)
    eager_opt = optim.AdamW(eager_model.parameters(), **ADAM, max_grad_norm=MAX_NORM)
    eager_losses = _eager(eager_model, eager_opt, x, y, steps=6)

    model = _model(7)
    opt = optim.AdamW(model.parameters(), **ADAM, max_grad_norm=MAX_NORM)
    graph = pe.capture(lambda a, b: F.cross_entropy(model(a), b), x, y, optimizer=opt)
    losses = [graph.run(x, y).item() for _ in range(4)]
    assert _numpy_growth(lambda: losses.append(graph.run(x, y).item())) == 0  # no allocation per step
    losses.append(graph.run(x, y).item())
    assert losses == eager_losses
    assert opt.grad_norm.item() == eager_opt.grad_norm.item()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
