"""Optimizer param_groups, defaults, state_dict and zero_grad against torch.optim."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine.nn import Parameter
from pyengine.optim import SGD

torch = pytest.importorskip("torch")
F32 = np.float32
SHAPES = [(4, 3), (3,), (2, 2), (5,)]


def _params(seed: int):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(F32) for s in SHAPES]
    return [Parameter(a.copy()) for a in init], [torch.nn.Parameter(torch.tensor(a)) for a in init]


def _groups(params):
    return [{"params": params[:2]},  # the defaults
            {"params": params[2:3], "lr": 0.02, "momentum": 0.5, "nesterov": True},
            {"params": params[3:], "weight_decay": 0.1, "momentum": 0.0}]


def _step_both(opt, topt, params, tparams, rng):
    for p, tp in zip(params, tparams):
        g = rng.standard_normal(p.shape).astype(F32)
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    opt.step()
    topt.step()


def test_per_group_options_match_torch():
    params, tparams = _params(0)
    opt = SGD(_groups(params), lr=0.1, momentum=0.9, dampening=0.0)
    topt = torch.optim.SGD(_groups(tparams), lr=0.1, momentum=0.9, dampening=0.0)
    for group, tgroup in zip(opt.param_groups, topt.param_groups):
        for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov"):
            assert group[key] == tgroup[key], key
    assert opt.defaults.items() <= topt.defaults.items()
    rng = np.random.default_rng(1)
    for step in range(4):
        _step_both(opt, topt, params, tparams, rng)
        for i, (p, tp) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"param {i}, step {step}")
    assert len(opt.params) == 4 and opt.params[2] is params[2]


def test_changing_group_lr_applies_at_the_next_step():
    params, tparams = _params(2)
    opt, topt = SGD(params, lr=0.1, momentum=0.9), torch.optim.SGD(tparams, lr=0.1, momentum=0.9)
    rng = np.random.default_rng(3)
    _step_both(opt, topt, params, tparams, rng)
    opt.param_groups[0]["lr"] = topt.param_groups[0]["lr"] = 0.01
    _step_both(opt, topt, params, tparams, rng)
    opt.lr = 0.3  # the property sets every group's lr
    topt.param_groups[0]["lr"] = 0.3
    _step_both(opt, topt, params, tparams, rng)
    assert opt.lr == 0.3
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_state_dict_has_torch_layout():
    params, tparams = _params(4)
    opt = SGD(_groups(params), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(_groups(tparams), lr=0.1, momentum=0.9)
    _step_both(opt, topt, params, tparams, np.random.default_rng(5))
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert set(ours) == {"state", "param_groups"}
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    for group, tgroup in zip(ours["param_groups"], theirs["param_groups"]):
        assert group.items() <= tgroup.items()
    with_buffers = {i for i, s in theirs["state"].items() if s.get("momentum_buffer") is not None}
    assert set(ours["state"]) == with_buffers == {0, 1, 2}  # group 3 has no momentum
    for index in with_buffers:
        np.testing.assert_allclose(ours["state"][index]["momentum_buffer"],
                                   theirs["state"][index]["momentum_buffer"].numpy(), rtol=1e-5, atol=1e-6)


def test_load_state_dict_resumes_exactly():
    params, _ = _params(6)
    opt = SGD(_groups(params), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(7)
    grads = [[rng.standard_normal(s).astype(F32) for s in SHAPES] for _ in range(4)]

    def step(optimizer, ps, g):
        for p, gi in zip(ps, g):
            p.grad = gi.copy()
        optimizer.step()

    step(opt, params, grads[0])
    step(opt, params, grads[1])
    copies = [Parameter(p.numpy().copy()) for p in params]
    resumed = SGD(_groups(copies), lr=0.5, momentum=0.0)  # other settings: the state dict restores them
    saved = opt.state_dict()
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["momentum"] == 0.9 and resumed.param_groups[1]["lr"] == 0.02
    assert resumed.state[copies[0]]["momentum_buffer"] is not saved["state"][0]["momentum_buffer"]  # copied
    for g in grads[2:]:
        step(opt, params, g)
        step(resumed, copies, g)
    for p, q in zip(params, copies):
        np.testing.assert_array_equal(q.numpy(), p.numpy())


def test_load_state_dict_rejects_mismatches():
    params, _ = _params(8)
    opt = SGD(_groups(params), lr=0.1, momentum=0.9)
    saved = opt.state_dict()
    other = SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="param groups"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match="parameters"):
        SGD([{"params": params[:1]}, {"params": params[2:3]}, {"params": params[3:]}], lr=0.1).load_state_dict(saved)
    bad = {"state": {0: {"momentum_buffer": np.zeros((9, 9), F32)}}, "param_groups": saved["param_groups"]}
    with pytest.raises(ValueError, match=r"state\[0\]"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="out of range"):
        opt.load_state_dict({"state": {7: {}}, "param_groups": saved["param_groups"]})
    with pytest.raises(ValueError):
        opt.load_state_dict({"param_groups": []})


def test_zero_grad_set_to_none_or_in_place():
    params, _ = _params(9)
    opt = SGD(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape, F32)
    buffers = [p._grad for p in params]
    opt.zero_grad(set_to_none=False)
    for p, buffer in zip(params, buffers):
        assert p._grad is buffer and not buffer.any()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_add_param_group_and_constructor_errors():
    params, _ = _params(10)
    opt = SGD(params[:2], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": params[2], "lr": 0.5})  # a single tensor is a group of one
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["lr"] == 0.5
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [params[0]]})
    with pytest.raises(ValueError):
        opt.add_param_group({"lr": 0.1})
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [params[3]], "lr": -1.0})
    with pytest.raises(TypeError):
        SGD([params[0], {"params": [params[1]]}], lr=0.1)
    with pytest.raises(TypeError):
        SGD([{"params": {params[0]}}], lr=0.1)  # a set is unordered
    with pytest.raises(TypeError):
        SGD([np.zeros(3, F32)], lr=0.1)
    with pytest.raises(ValueError):
        SGD([{"params": params[:1], "nesterov": True}], lr=0.1)  # nesterov without momentum
