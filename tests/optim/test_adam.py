"""Adam and AdamW against torch.optim (same parameters, same gradients) and the
adam_update kernel against a float64 numpy reference at every ISA level."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine
from pyengine import kernels as K
from pyengine import nn, optim

torch = pytest.importorskip("torch")

CONFIGS = [
    dict(),
    dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6),
    dict(weight_decay=0.1),
    dict(amsgrad=True),
    dict(weight_decay=0.05, amsgrad=True),
]


def _run(opt_pe, opt_torch, params_pe, params_torch, grads):
    for step_grads in grads:
        for p, t, g in zip(params_pe, params_torch, step_grads):
            p.grad = g.copy()
            t.grad = torch.from_numpy(g.copy())
        opt_pe.step()
        opt_torch.step()


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_torch(name, cfg):
    rng = np.random.default_rng(len(str(cfg)) + len(name))
    shapes = [(7, 5), (5,), (300, 301)]
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    params_pe = [nn.Parameter(v.copy()) for v in values]
    params_torch = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    opt_pe = getattr(optim, name)(params_pe, **cfg)
    opt_torch = getattr(torch.optim, name)(params_torch, **cfg, foreach=False)
    _run(opt_pe, opt_torch, params_pe, params_torch, grads)
    for p, t in zip(params_pe, params_torch):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=2e-5, atol=2e-6)
    state = opt_pe.state[params_pe[0]]
    ref = opt_torch.state[params_torch[0]]
    assert state["step"] == int(ref["step"]) == 6
    np.testing.assert_allclose(state["exp_avg_sq"], ref["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-7)


def _numpy_adam(p, m, v, vmax, g, lr, step, b1, b2, eps, wd, decoupled):
    p, m, v, g = (x.astype(np.float64) for x in (p, m, v, g))
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = m + (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * g * g
    second = v if vmax is None else np.maximum(vmax, v)
    p = p - lr / (1 - b1**step) * m / (np.sqrt(second) / np.sqrt(1 - b2**step) + eps)
    return p, m, v, (None if vmax is None else second)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_kernel_matches_float64_reference(isa, decoupled, amsgrad):
    rng = np.random.default_rng(7)
    n = 70_001  # several chunks, a partial one at the end
    p, m, g = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(np.float32)
    vmax = (v * 1.5).astype(np.float32) if amsgrad else None
    args = dict(lr=1e-2, step=4, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    want = _numpy_adam(p, m, v, vmax, g, args["lr"], 4, 0.9, 0.99, 1e-8, 0.1, decoupled)
    got = [x.copy() if x is not None else None for x in (p, m, v, vmax)]
    K.adam_update(got[0], got[1], got[2], g, got[3], decoupled=decoupled, amsgrad=amsgrad, **args)
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), got, want):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_replayed_step_matches_eager():
    """A captured training step with Adam replays to the same parameters as
    the same steps in eager mode."""
    from pyengine import functional as F

    def build():
        pyengine.manual_seed(3)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        return model, optim.AdamW(model.parameters(), lr=1e-2)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    model_a, opt_a = build()
    for _ in range(4):
        opt_a.zero_grad()
        F.cross_entropy(model_a(pyengine.Tensor(x)), y).backward()
        opt_a.step()
    model_b, opt_b = build()
    step = pyengine.capture(lambda xb, yb: F.cross_entropy(model_b(xb), yb), x, y, optimizer=opt_b)
    for _ in range(4):
        step.run(x, y)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_errors():
    p = nn.Parameter(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        optim.AdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="adam_update: step must be >= 1"):
        K.adam_update(*(np.ones(3, np.float32) for _ in range(4)), lr=0.1, step=0)
    with pytest.raises(ValueError, match="amsgrad needs max_exp_avg_sq"):
        K.adam_update(*(np.ones(3, np.float32) for _ in range(4)), lr=0.1, step=1, amsgrad=True)
