"""pyengine.optim.lr_scheduler against torch.optim.lr_scheduler with the same settings."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine.nn import Parameter
from pyengine.optim import SGD, lr_scheduler

torch = pytest.importorskip("torch")
F32 = np.float32
GROUP_LRS = (0.1, 0.03)  # two param groups: every scheduler works per group
LR_RTOL = 1e-7  # same formulas in float64: observed differences are 0


def _pe_optimizer(lrs=GROUP_LRS, **kwargs):
    groups = [{"params": [Parameter(np.zeros(3, F32))], "lr": lr} for lr in lrs]
    return SGD(groups, lr=1.0, **kwargs)


def _torch_optimizer(lrs=GROUP_LRS, **kwargs):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=1.0, **kwargs)


def _cosine_after_warmup(lib):
    def make(opt):
        warmup = lib.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=4)
        cosine = lib.CosineAnnealingLR(opt, T_max=8, eta_min=1e-4)
        return lib.SequentialLR(opt, [warmup, cosine], milestones=[4])
    return make


def _three_phases(lib):
    def make(opt):
        phases = [lib.LinearLR(opt, start_factor=0.5, total_iters=3), lib.ExponentialLR(opt, gamma=0.8),
                  lib.StepLR(opt, step_size=2, gamma=0.5)]
        return lib.SequentialLR(opt, phases, milestones=[3, 7])
    return make


# name -> (factory given the scheduler module, steps)
SCHEDULES = {
    "step": (lambda lib: lambda o: lib.StepLR(o, step_size=3, gamma=0.5), 20),
    "multistep": (lambda lib: lambda o: lib.MultiStepLR(o, milestones=[2, 5, 5, 11], gamma=0.3), 16),
    "exponential": (lambda lib: lambda o: lib.ExponentialLR(o, gamma=0.9), 25),
    "cosine": (lambda lib: lambda o: lib.CosineAnnealingLR(o, T_max=10), 30),
    "cosine_eta_min": (lambda lib: lambda o: lib.CosineAnnealingLR(o, T_max=7, eta_min=0.005), 21),
    "cosine_t1": (lambda lib: lambda o: lib.CosineAnnealingLR(o, T_max=1, eta_min=0.01), 6),
    "linear_warmup": (lambda lib: lambda o: lib.LinearLR(o, start_factor=0.25, total_iters=6), 12),
    "linear_decay": (lambda lib: lambda o: lib.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=5), 9),
    "lambda": (lambda lib: lambda o: lib.LambdaLR(o, lr_lambda=lambda e: 0.95 ** e / (1 + e % 3)), 15),
    "lambda_per_group": (lambda lib: lambda o: lib.LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: 0.5 ** e]), 10),
    "warmup_cosine": (_cosine_after_warmup, 24),
    "three_phases": (_three_phases, 14),
}


def _lr_history(optimizer, scheduler, steps: int) -> np.ndarray:
    """The lrs after construction and after each optimizer.step(); scheduler.step()."""
    history = [scheduler.get_last_lr()]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups]
        history.append(scheduler.get_last_lr())
    return np.array(history, dtype=np.float64)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_sequence_matches_torch(name):
    factory, steps = SCHEDULES[name]
    opt, topt = _pe_optimizer(), _torch_optimizer()
    sched, tsched = factory(lr_scheduler)(opt), factory(torch.optim.lr_scheduler)(topt)
    ours = _lr_history(opt, sched, steps)
    expected = _lr_history(topt, tsched, steps)
    np.testing.assert_allclose(ours, expected, rtol=LR_RTOL, atol=0, err_msg=name)
    assert np.ptp(ours[:, 0]) > 0, "the schedule never changed the lr"
    assert sched.last_epoch == tsched.last_epoch == steps
    assert [g["initial_lr"] for g in opt.param_groups] == list(GROUP_LRS)
    assert opt.lr == opt.param_groups[0]["lr"]


def test_construction_sets_initial_lr_and_epoch_zero():
    opt = _pe_optimizer()
    sched = lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=4)
    assert sched.last_epoch == 0
    assert sched.base_lrs == list(GROUP_LRS)
    np.testing.assert_allclose(sched.get_last_lr(), [0.05, 0.015], rtol=1e-15)
    # a second scheduler keeps the recorded initial_lr
    lr_scheduler.StepLR(opt, step_size=2)
    assert [g["initial_lr"] for g in opt.param_groups] == list(GROUP_LRS)


def test_cosine_closed_form_and_values():
    opt = _pe_optimizer(lrs=(1.0,))
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.2)
    lrs = _lr_history(opt, sched, 12)[:, 0]
    epochs = np.arange(13)
    closed = 0.2 + 0.8 * (1 + np.cos(np.pi * epochs / 4)) / 2
    np.testing.assert_allclose(lrs, closed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["step", "multistep", "cosine_eta_min", "linear_warmup", "warmup_cosine",
                                  "three_phases", "lambda"])
def test_state_dict_round_trip_resumes_the_schedule(name):
    factory, steps = SCHEDULES[name]
    make = factory(lr_scheduler)
    opt = _pe_optimizer()
    sched = make(opt)
    uninterrupted = _lr_history(opt, sched, steps)
    opt_a = _pe_optimizer()
    sched_a = make(opt_a)
    _lr_history(opt_a, sched_a, steps // 2)
    saved_opt, saved_sched = opt_a.state_dict(), sched_a.state_dict()
    assert "optimizer" not in saved_sched
    opt_b = _pe_optimizer()
    sched_b = make(opt_b)  # construct first, then load (PyTorch's order)
    opt_b.load_state_dict(saved_opt)
    sched_b.load_state_dict(saved_sched)
    assert sched_b.last_epoch == steps // 2
    assert sched_b.get_last_lr() == sched_a.get_last_lr()
    resumed = _lr_history(opt_b, sched_b, steps - steps // 2)
    np.testing.assert_allclose(resumed, uninterrupted[steps // 2:], rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ["step", "multistep", "cosine", "linear_warmup", "exponential"])
def test_state_dict_holds_what_torch_holds(name):
    factory, steps = SCHEDULES[name]
    opt, topt = _pe_optimizer(), _torch_optimizer()
    sched, tsched = factory(lr_scheduler)(opt), factory(torch.optim.lr_scheduler)(topt)
    _lr_history(opt, sched, 4)
    _lr_history(topt, tsched, 4)
    ours, theirs = sched.state_dict(), tsched.state_dict()
    assert set(ours) <= set(theirs)
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key], rel=1e-12) if isinstance(value, list) else value == theirs[key], key


def test_state_dict_survives_pyengine_save(tmp_path):
    opt = _pe_optimizer()
    sched = lr_scheduler.MultiStepLR(opt, milestones=[2, 4, 4], gamma=0.5)
    _lr_history(opt, sched, 3)
    pe.save({"optim": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ck.safetensors")
    loaded = pe.load(tmp_path / "ck.safetensors")
    opt_b = _pe_optimizer()
    sched_b = lr_scheduler.MultiStepLR(opt_b, milestones=[2, 4, 4], gamma=0.5)
    opt_b.load_state_dict(loaded["optim"])
    sched_b.load_state_dict(loaded["sched"])
    np.testing.assert_allclose(_lr_history(opt_b, sched_b, 3), _lr_history(opt, sched, 3), rtol=1e-15)


def _pe_and_torch_models(seed: int):
    pe.manual_seed(seed)
    model = pe.nn.Sequential(pe.nn.Linear(5, 8), pe.nn.Tanh(), pe.nn.Linear(8, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return model, ref


def _batches(seed: int, steps: int):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 5)).astype(F32), rng.integers(0, 3, 6)) for _ in range(steps)]


def test_sgd_with_scheduler_trains_like_torch():
    model, ref = _pe_and_torch_models(5)
    groups = lambda m: [{"params": list(m[0].parameters()), "lr": 0.2},  # noqa: E731
                        {"params": list(m[2].parameters()), "momentum": 0.5}]
    opt = SGD(groups(model), lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-3)
    topt = torch.optim.SGD(groups(ref), lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-3)
    sched = _cosine_after_warmup(lr_scheduler)(opt)
    tsched = _cosine_after_warmup(torch.optim.lr_scheduler)(topt)
    for step, (x, y) in enumerate(_batches(6, 16)):
        opt.zero_grad()
        topt.zero_grad()
        loss = pe.functional.cross_entropy(model(pe.Tensor(x)), y)
        tloss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
        loss.backward()
        tloss.backward()
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=LR_RTOL)
    for (name, p), (_, tp) in zip(model.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_scheduler_changes_the_replayed_captured_step():
    # The captured step calls optimizer.step on each replay; it must see the scheduled lr.
    eager, _ = _pe_and_torch_models(7)
    graph_model, _ = _pe_and_torch_models(7)
    opts = [SGD(m.parameters(), lr=0.5, momentum=0.9) for m in (eager, graph_model)]
    scheds = [lr_scheduler.StepLR(o, step_size=2, gamma=0.1) for o in opts]
    batches = _batches(8, 6)
    loss_fn = lambda x, y: pe.functional.cross_entropy(graph_model(x), y)  # noqa: E731
    step = pe.capture(loss_fn, *batches[0], optimizer=opts[1])  # runs the forward only
    for p, q in zip(eager.parameters(), graph_model.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    for x, y in batches:
        opts[0].zero_grad()
        pe.functional.cross_entropy(eager(pe.Tensor(x)), y).backward()
        opts[0].step()
        step.run(x, y)
        for sched in scheds:
            sched.step()
    assert opts[1].lr == pytest.approx(0.5 * 0.1 ** 3)
    for (name, p), (_, q) in zip(eager.named_parameters(), graph_model.named_parameters()):
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_errors():
    opt = _pe_optimizer()
    with pytest.raises(TypeError):
        lr_scheduler.StepLR(object(), step_size=1)
    with pytest.raises(KeyError):  # resuming needs initial_lr in the groups
        lr_scheduler.StepLR(opt, step_size=1, last_epoch=3)
    with pytest.raises(ValueError):
        lr_scheduler.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError):
        lr_scheduler.LinearLR(opt, end_factor=1.5)
    with pytest.raises(ValueError):
        lr_scheduler.LambdaLR(opt, [lambda e: 1.0])  # one lambda for two groups
    with pytest.raises(TypeError):
        lr_scheduler.LambdaLR(opt, 0.5)
    with pytest.raises(ValueError):
        lr_scheduler.StepLR(opt, step_size=0)
    first, second = lr_scheduler.StepLR(opt, 2), lr_scheduler.ExponentialLR(opt, 0.9)
    with pytest.raises(ValueError):  # two schedulers need exactly one milestone
        lr_scheduler.SequentialLR(opt, [first, second], milestones=[2, 4])
    with pytest.raises(ValueError):
        lr_scheduler.SequentialLR(opt, [first, lr_scheduler.StepLR(_pe_optimizer(), 2)], milestones=[2])
    with pytest.raises(ValueError):
        lr_scheduler.SequentialLR(opt, [], milestones=[])


def test_resume_with_last_epoch_matches_torch():
    opt, topt = _pe_optimizer(), _torch_optimizer()
    for o in (opt, topt):
        for group in o.param_groups:
            group["initial_lr"] = group["lr"]
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=6, eta_min=0.001, last_epoch=4)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=6, eta_min=0.001, last_epoch=4)
    np.testing.assert_allclose(_lr_history(opt, sched, 10), _lr_history(topt, tsched, 10), rtol=LR_RTOL)
