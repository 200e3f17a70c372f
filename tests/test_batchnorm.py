"""Batch norm at every ISA level (the reference loops included): training mode (batch statistics,
the running-average update with PyTorch's momentum and unbiased variance) and eval mode, forward
and the gradients of x, weight and bias, against float64 numpy, PyTorch and central finite
differences; nn.BatchNorm2d against torch.nn.BatchNorm2d (train/eval, momentum None, affine and
track_running_stats off), the batch-of-one error, and running statistics under capture/replay."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from helpers import F32, assert_close, check_finite_differences, helper_test_op, randn, torch

import pyengine
from pyengine import kernels as K
from pyengine import nn, optim

pytestmark = pytest.mark.usefixtures("isa")


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def np_batch_norm(x, weight, bias, mean=None, var=None, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(shape) + bias.reshape(shape)


SHAPES = {"nchw-odd": (3, 5, 7, 9), "n2-c1": (2, 1, 4, 3), "nc": (6, 4), "ncl": (3, 2, 33), "wide": (2, 3, 40, 41)}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_batch_norm_kernels(name, training):
    shape = SHAPES[name]
    rng = rng_for(name, training)
    c = shape[1]
    x = randn(rng, *shape, scale=2.0, shift=3.0)  # far from zero: the centred variance matters
    weight, bias = randn(rng, c), randn(rng, c)
    running_mean, running_var = randn(rng, c), np.abs(randn(rng, c)) + F32(0.5)
    count = x.size // c

    def pe_fwd(x, weight, bias):
        rm, rv = running_mean.copy(), running_var.copy()
        y, mean, rstd = K.batch_norm(x, rm, rv, weight, bias, training=training, momentum=0.3, eps=1e-5)
        return y, rm, rv

    def np_fwd(x, weight, bias):
        if not training:
            return (np_batch_norm(x, weight, bias, running_mean.astype(float), running_var.astype(float)),
                    running_mean, running_var)
        axes = (0,) + tuple(range(2, x.ndim))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        return (np_batch_norm(x, weight, bias), 0.7 * running_mean + 0.3 * mean,
                0.7 * running_var + 0.3 * var * count / (count - 1))

    def torch_fwd(x, weight, bias):
        rm, rv = torch.tensor(running_mean, dtype=torch.float64), torch.tensor(running_var, dtype=torch.float64)
        return torch.nn.functional.batch_norm(x, rm, rv, weight, bias, training, 0.3, 1e-5), rm, rv

    def pe_bwd(g, xs, outs, grads):
        rm, rv = running_mean.copy(), running_var.copy()
        _, mean, rstd = K.batch_norm(xs[0], rm, rv, xs[1], xs[2], training=training, momentum=0.3)
        gx, gw, gb = (None,) * 3 if grads is None else grads
        return K.batch_norm_backward(g, xs[0], xs[1], mean, rstd, training=training, needs_weight=True,
                                     needs_bias=True, grad_x=gx, grad_weight=gw, grad_bias=gb)

    def np_bwd(g, x, weight, bias):  # autograd-free: the textbook formulas
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, var = (x.mean(axis=axes), x.var(axis=axes)) if training else (running_mean.astype(float),
                                                                            running_var.astype(float))
        rstd = 1 / np.sqrt(var + 1e-5)
        xhat = (x - mean.reshape(shape)) * rstd.reshape(shape)
        gw, gb = (g * xhat).sum(axis=axes), g.sum(axis=axes)
        if training:
            gx = (g - gb.reshape(shape) / count - xhat * gw.reshape(shape) / count)
        else:
            gx = g
        return gx * (weight * rstd).reshape(shape), gw, gb

    tol = dict(atol=2e-5, rtol=2e-5, grad_atol=5e-5 * np.sqrt(count), grad_rtol=1e-4)
    helper_test_op([x, weight, bias], pe_fwd, np_fwd, torch_fwd, pe_bwd, np_bwd, **tol)


def test_batch_norm_finite_differences():
    rng = rng_for("fd")
    x, weight, bias = randn(rng, 3, 2, 3, 2), randn(rng, 2), randn(rng, 2)
    for training in (True, False):
        rm, rv = randn(rng, 2), np.abs(randn(rng, 2)) + F32(0.5)

        def fwd(x, weight, bias, rm=rm, rv=rv, training=training):
            return K.batch_norm(x, rm.copy(), rv.copy(), weight, bias, training=training)

        def bwd(g, xs, outs, grads, training=training):
            return K.batch_norm_backward(g, xs[0], xs[1], outs[1], outs[2], training=training,
                                         needs_weight=True, needs_bias=True)

        check_finite_differences([x, weight, bias], fwd, bwd, eps=1e-2)


def test_batch_norm_without_affine_and_running_buffers():
    x = randn(rng_for("plain"), 4, 3, 5, 5)
    y, mean, rstd = K.batch_norm(x, training=True)
    assert_close(y, np_batch_norm(x.astype(float), np.ones(3), np.zeros(3)), atol=2e-5, rtol=1e-5, what="y")
    g = randn(rng_for("plain-g"), *x.shape)
    (gx,) = K.batch_norm_backward(g, x, None, mean, rstd, training=True)[:1]
    tx = torch.tensor(x.astype(float), requires_grad=True)
    torch.nn.functional.batch_norm(tx, None, None, training=True).backward(torch.tensor(g.astype(float)))
    assert_close(gx, tx.grad.numpy(), atol=1e-4, rtol=1e-4, what="grad x")


def test_batch_norm_kernel_errors():
    x = np.ones((2, 3, 4), F32)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        K.batch_norm(x, training=False)
    with pytest.raises(ValueError, match="give both or neither"):
        K.batch_norm(x, running_mean=np.zeros(3, F32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        K.batch_norm(np.ones((1, 3, 1), F32))
    with pytest.raises(ValueError, match="running_mean"):
        K.batch_norm(x, running_mean=np.zeros(4, F32), running_var=np.ones(4, F32))


# ---------------------------------------------------------------- nn.BatchNorm2d against torch


def _pair(**kwargs):
    ours, theirs = nn.BatchNorm2d(4, **kwargs), torch.nn.BatchNorm2d(4, **kwargs)
    rng = rng_for("affine", tuple(kwargs.items()))
    for name, p in theirs.named_parameters():
        value = randn(rng, 4)
        ours.load_state_dict({**ours.state_dict(), name: value})
        with torch.no_grad():
            p.copy_(torch.tensor(value))
    return ours, theirs


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"momentum": 0.5, "eps": 1e-3}, {"affine": False},
                                    {"track_running_stats": False}, {"bias": False}],
                         ids=["default", "cumulative", "momentum", "no-affine", "no-running", "no-bias"])
def test_batchnorm2d_matches_torch_in_train_and_eval(kwargs):
    ours, theirs = _pair(**kwargs)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = rng_for("module", tuple(kwargs.items()))
    for step in range(4):
        x = randn(rng, 3, 4, 5, 6, scale=1.5, shift=step)
        t = pyengine.Tensor(x, requires_grad=True)
        tx = torch.tensor(x, requires_grad=True)
        y, ty = ours(t), theirs(tx)
        assert_close(y.numpy(), ty.detach().numpy(), atol=1e-5, rtol=1e-5, what=f"train step {step}")
        (y * y).sum().backward()
        (ty * ty).sum().backward()
        assert_close(t.grad.numpy(), tx.grad.numpy(), atol=1e-4, rtol=1e-4, what="grad x")
    for name, theirs_value in theirs.state_dict().items():
        assert_close(ours.state_dict()[name], theirs_value.numpy(), atol=1e-6, rtol=1e-6, what=name)
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == [name for name, _ in theirs.named_parameters()]
    for name, p in theirs.named_parameters():
        assert_close(ours_params[name].grad.numpy(), p.grad.numpy(), atol=1e-4, rtol=1e-4, what=f"grad {name}")
    ours.eval()
    theirs.eval()
    x = randn(rng, 2, 4, 3, 3)
    t, tx = pyengine.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, ty = ours(t), theirs(tx)
    assert_close(y.numpy(), ty.detach().numpy(), atol=1e-5, rtol=1e-5, what="eval")
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    assert_close(t.grad.numpy(), tx.grad.numpy(), atol=1e-4, rtol=1e-4, what="eval grad x")


def test_batch_of_one_in_training_raises_as_torch():
    bn = nn.BatchNorm2d(3)
    x = np.ones((1, 3, 1, 1), F32)
    with pytest.raises(ValueError, match="batch_norm: expected more than 1 value per channel when training"):
        bn(pyengine.Tensor(x))
    if torch is not None:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            torch.nn.BatchNorm2d(3)(torch.tensor(x))
    bn.eval()
    assert bn(pyengine.Tensor(x)).shape == (1, 3, 1, 1)  # eval mode takes one
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(pyengine.Tensor(np.ones((2, 3), F32)))


def test_running_stats_update_under_capture_and_replay_as_in_eager():
    """A captured training step updates the running statistics on every replay, and capturing it
    is not a step: after k replays they equal k eager steps, bit for bit."""
    rng = rng_for("capture")
    batches = [randn(rng, 4, 3, 5, 5) for _ in range(3)]

    def build():
        pyengine.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def loss_of(model, x):
        return model(x).square().mean()

    eager, opt = build()
    eager_losses = []
    for x in batches:
        loss = loss_of(eager, pyengine.Tensor(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        eager_losses.append(loss.item())
    replayed, opt2 = build()
    step = pyengine.capture(lambda xb: loss_of(replayed, xb), batches[0], optimizer=opt2)
    assert replayed[1].num_batches_tracked.item() == 0
    np.testing.assert_array_equal(replayed[1].running_mean.numpy(), 0)
    replay_losses = [step.run(x).item() for x in batches]
    assert replay_losses == eager_losses
    for (name, a), b in zip(eager.state_dict().items(), replayed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert replayed[1].num_batches_tracked.item() == 3
