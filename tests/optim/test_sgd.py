"""pyengine.optim.SGD against torch.optim.SGD on the same parameters and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pyengine as pe
from pyengine.nn import Parameter
from pyengine.optim import SGD

F32 = np.float32

SHAPES = [(5, 3), (7,), (2, 3, 4), (1,)]


def _configs():
    for momentum, dampening, weight_decay in itertools.product((0.0, 0.9), (0.0, 0.1), (0.0, 0.01)):
        yield momentum, dampening, weight_decay, False
        if momentum > 0 and dampening == 0:
            yield momentum, dampening, weight_decay, True


@pytest.mark.parametrize("momentum,dampening,weight_decay,nesterov", list(_configs()),
                         ids=lambda v: str(v))
def test_sgd_matches_torch(momentum, dampening, weight_decay, nesterov):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(F32) for s in SHAPES]
    params = [Parameter(a.copy()) for a in init]
    tparams = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    kwargs = dict(lr=0.1, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    opt = SGD(params, **kwargs)
    topt = torch.optim.SGD(tparams, **kwargs)
    for step in range(5):
        grads = [rng.standard_normal(s).astype(F32) for s in SHAPES]
        for p, tp, g in zip(params, tparams, grads):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for i, (p, tp, g) in enumerate(zip(params, tparams, grads)):
            np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), atol=1e-6, rtol=1e-5,
                                       err_msg=f"param {i} after step {step + 1}")
            # like torch, the step does not modify the gradient
            np.testing.assert_array_equal(p.grad.numpy(), g)
        if momentum:
            for i, tp in enumerate(tparams):
                np.testing.assert_allclose(opt.momentum_buffers[i], topt.state[tp]["momentum_buffer"].numpy(),
                                           atol=1e-6, rtol=1e-5)
    assert opt.steps == 5
    # the parameters really moved
    assert not np.allclose(params[0].numpy(), init[0])


def test_sgd_plain_step_exact():
    p = Parameter(np.array([1.0, -2.0], F32))
    p.grad = np.array([0.5, 0.25], F32)
    SGD([p], lr=0.2).step()
    np.testing.assert_allclose(p.numpy(), [0.9, -2.05], rtol=0, atol=1e-7)


def test_sgd_momentum_first_step_has_no_dampening():
    # PyTorch: buf = grad on the first step, buf = m*buf + (1-d)*grad after
    p = Parameter(np.array([0.0], F32))
    opt = SGD([p], lr=1.0, momentum=0.5, dampening=0.5)
    p.grad = np.array([1.0], F32)
    opt.step()
    np.testing.assert_allclose(p.numpy(), [-1.0], atol=1e-7)
    opt.step()  # buf = 0.5 * 1 + 0.5 * 1 = 1
    np.testing.assert_allclose(p.numpy(), [-2.0], atol=1e-7)
    p.grad = np.array([3.0], F32)
    opt.step()  # buf = 0.5 * 1 + 0.5 * 3 = 2
    np.testing.assert_allclose(p.numpy(), [-4.0], atol=1e-6)


def test_sgd_skips_parameters_without_grad():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    init = [rng.standard_normal((3, 2)).astype(F32) for _ in range(2)]
    params = [Parameter(a.copy()) for a in init]
    tparams = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    opt = SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9, weight_decay=0.01)
    for step in range(4):
        which = [0, 1] if step in (0, 3) else [1]
        for i in range(2):
            if i in which:
                g = rng.standard_normal((3, 2)).astype(F32)
                params[i].grad, tparams[i].grad = g.copy(), torch.tensor(g)
            else:
                params[i].grad, tparams[i].grad = None, None
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(params[1].numpy() != init[1], True)


def test_sgd_trains_with_autograd():
    torch = pytest.importorskip("torch")
    pe.manual_seed(3)
    model = pe.nn.Sequential(pe.nn.Linear(4, 8), pe.nn.ReLU(), pe.nn.Linear(8, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    topt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    rng = np.random.default_rng(4)
    for _ in range(5):
        x = rng.standard_normal((6, 4)).astype(F32)
        y = rng.integers(0, 3, 6)
        opt.zero_grad()
        topt.zero_grad()
        loss = pe.functional.cross_entropy(model(pe.Tensor(x)), y)
        tloss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        np.testing.assert_allclose(loss.item(), tloss.item(), atol=1e-5, rtol=1e-5)
        loss.backward()
        tloss.backward()
        opt.step()
        topt.step()
    for (name, p), (tname, tp) in zip(model.named_parameters(), ref.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), atol=1e-5, rtol=1e-4)


def test_zero_grad_clears_all():
    params = [Parameter(np.ones(2, F32)), Parameter(np.ones(3, F32))]
    for p in params:
        p.grad = np.ones(p.shape, F32)
    opt = SGD(params, lr=0.1)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("kwargs", [
    dict(lr=-0.1),
    dict(lr=0.1, momentum=-0.5),
    dict(lr=0.1, weight_decay=-0.01),
    dict(lr=0.1, nesterov=True),                                 # no momentum
    dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),    # dampening
], ids=str)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SGD([Parameter(np.zeros(2, F32))], **kwargs)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):  # torch agrees these are invalid
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_empty_parameter_list_raises():
    with pytest.raises(ValueError):
        SGD([], lr=0.1)
    with pytest.raises(ValueError):
        SGD(iter([]), lr=0.1)


def test_valid_edge_arguments_accepted():
    p = Parameter(np.ones(2, F32))
    SGD([p], lr=0.0)
    SGD(iter([p]), lr=0.1, momentum=0.9, nesterov=True)
    opt = SGD([p], lr=0.0, momentum=0.9)
    p.grad = np.ones(2, F32)
    opt.step()
    np.testing.assert_array_equal(p.numpy(), [1.0, 1.0])  # lr 0: no change
    assert "momentum_buffer" in opt.state_dict()["state"][0]


def test_step_checks_gradient_dtype_and_shape():
    p = Parameter(np.ones(2, F32))
    opt = SGD([p], lr=0.1)
    with pytest.raises(TypeError):  # refused when assigned (Tensor.grad), before any step
        p.grad = np.ones(2, dtype=np.float64)
    for bad in (np.ones(3, F32), np.ones(1, F32)):
        with pytest.raises(ValueError):
            p.grad = bad
        p._grad = bad  # past the setter, the step still checks
        with pytest.raises(ValueError):
            opt.step()
    np.testing.assert_array_equal(p.numpy(), [1.0, 1.0])  # nothing was applied
