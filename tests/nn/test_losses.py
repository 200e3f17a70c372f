"""Losses (functional and modules) against PyTorch (float64 autograd on the
same values), eagerly and replayed by pe.capture."""

from __future__ import annotations

import numpy as np
import pytest
from torch_ref import F32, assert_training_replay_is_bit_exact, compare

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.tensor import Tensor

LOSS = dict(atol=1e-6, rtol=1e-5)  # float32 losses against float64 torch


def _tf():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _probabilities(seed, *shape):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(F32)


REDUCTIONS = ["mean", "sum", "none"]


# ------------------------------------------------------------------ regression losses


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 2)], ids=str)
def test_regression_losses_match_torch(name, reduction, shape):
    _, tf = _tf()
    fn = lambda mod: lambda x, y: getattr(mod, name)(x, y, reduction=reduction)  # noqa: E731
    # both operands are leaves: the target's gradient is checked too
    compare([_rand(0, *shape), _rand(1, *shape)], fn(F), fn(tf), **LOSS)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_regression_losses_broadcast_a_target_of_another_shape_with_a_warning(name):
    _, tf = _tf()

    def run(mod):
        return lambda x, y: getattr(mod, name)(x, y)

    with pytest.warns(UserWarning, match="target size"):
        compare([_rand(2, 4, 3), _rand(3, 3)], run(F), run(tf), **LOSS)


def test_target_may_be_a_numpy_array():
    x = Tensor(np.array([1.0, 2.0], F32), requires_grad=True)
    loss = F.mse_loss(x, np.array([0.0, 4.0], F32))
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, -2.0])


# ------------------------------------------------------------------ BCE with logits


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weight", "pos_weight", "both"])
def test_bce_with_logits_matches_torch(reduction, options):
    torch, tf = _tf()
    logits, targets = _rand(4, 5, 3) * 3.0, _probabilities(5, 5, 3)
    weight = _probabilities(6, 5, 3) + 0.5 if options in ("weight", "both") else None
    pos_weight = _probabilities(7, 3) * 3.0 + 0.1 if options in ("pos_weight", "both") else None

    def run(mod, wrap):
        kwargs = {"reduction": reduction}
        if pos_weight is not None:
            kwargs["pos_weight"] = wrap(pos_weight)
        return lambda x, y: mod.binary_cross_entropy_with_logits(
            x, y, None if weight is None else wrap(weight), **kwargs)

    compare([logits, targets], run(F, Tensor), run(tf, lambda a: torch.tensor(a.astype(np.float64))),
            **LOSS)


def test_bce_with_logits_is_stable_for_large_logits_and_exact_at_zero():
    _, tf = _tf()
    logits = np.array([-100.0, -30.0, 0.0, 0.0, 30.0, 100.0], F32)
    targets = np.array([0.0, 1.0, 1.0, 0.25, 0.0, 1.0], F32)
    fn = lambda mod: lambda x, y: mod.binary_cross_entropy_with_logits(x, y, reduction="none")  # noqa: E731
    out, (x, _) = compare([logits, targets], fn(F), fn(tf), atol=1e-5, rtol=1e-6)
    assert np.isfinite(out.numpy()).all() and np.isfinite(x.grad.numpy()).all()
    # d/dx at x = 0 is sigmoid(0) - y exactly (the kinks of |x| cancel)
    y = Tensor(targets)
    z = Tensor(logits.copy(), requires_grad=True)
    F.binary_cross_entropy_with_logits(z, y, reduction="sum").backward()
    np.testing.assert_array_equal(z.grad.numpy()[2:4], [0.5 - 1.0, 0.5 - 0.25])


# ------------------------------------------------------------------ NLL and cross-entropy


@pytest.mark.parametrize("layout", ["(N,C)", "(C,)", "(N,C,d1,d2)"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
def test_classification_losses_match_torch(name, layout, ignore):
    torch, tf = _tf()
    shape, target_shape = {"(N,C)": ((6, 5), (6,)), "(C,)": ((5,), ()),
                           "(N,C,d1,d2)": ((2, 5, 3, 2), (2, 3, 2))}[layout]
    target = np.random.default_rng(8).integers(0, 5, target_shape).astype(np.int64)
    if ignore and target.ndim:
        target.reshape(-1)[[0, 3]] = 2  # ignore_index=2 ignores these and every other 2
    kwargs = {"ignore_index": 2} if ignore else {}

    def ours(x):
        scores = _log_softmax_over_classes(x) if name == "nll_loss" else x
        return getattr(F, name)(scores, Tensor(target), **kwargs)

    def theirs(x):
        scores = tf.log_softmax(x, dim=min(1, x.ndim - 1)) if name == "nll_loss" else x
        return getattr(tf, name)(scores, torch.from_numpy(target), **kwargs)

    compare([_rand(9, *shape)], ours, theirs, **LOSS)


def _log_softmax_over_classes(x):
    """pyengine's log_softmax is over the last dim: move the class dim (1) there and back."""
    if x.ndim <= 2:
        return x.log_softmax()
    return x.transpose(1, -1).log_softmax().transpose(1, -1)


def test_nll_loss_on_log_probabilities_and_all_ignored_is_nan():
    logp = Tensor(np.log(np.full((2, 4), 0.25, F32)))
    assert F.nll_loss(logp, np.array([1, 3])).item() == pytest.approx(np.log(4.0))
    assert np.isnan(F.nll_loss(logp, np.array([-100, -100])).item())


# ------------------------------------------------------------------ modules


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["MSELoss", "L1Loss", "BCEWithLogitsLoss"])
def test_elementwise_loss_modules_match_torch(name, reduction):
    torch, _ = _tf()
    ours, theirs = getattr(nn, name)(reduction=reduction), getattr(torch.nn, name)(reduction=reduction)
    target = _probabilities(10, 4, 3)
    compare([_rand(11, 4, 3)], lambda x: ours(x, Tensor(target)),
            lambda x: theirs(x, torch.from_numpy(target.astype(np.float64))), **LOSS)
    assert repr(ours) == f"{name}()" == repr(theirs)


def test_bce_module_weights_and_nll_module_match_torch():
    torch, _ = _tf()
    weight, pos_weight = _probabilities(12, 3) + 0.5, _probabilities(13, 3) + 0.5
    ours = nn.BCEWithLogitsLoss(weight=weight, pos_weight=Tensor(pos_weight))
    theirs = torch.nn.BCEWithLogitsLoss(weight=torch.from_numpy(weight).double(),
                                        pos_weight=torch.from_numpy(pos_weight).double())
    target = _probabilities(14, 4, 3)
    compare([_rand(15, 4, 3)], lambda x: ours(x, Tensor(target)),
            lambda x: theirs(x, torch.from_numpy(target).double()), **LOSS)
    labels = np.array([0, 2, 1, 2], np.int64)
    nll, tnll = nn.NLLLoss(ignore_index=1), torch.nn.NLLLoss(ignore_index=1)
    compare([_rand(16, 4, 3)], lambda x: nll(x.log_softmax(), labels),
            lambda x: tnll(x.log_softmax(-1), torch.from_numpy(labels)), **LOSS)
    assert repr(nll) == "NLLLoss()" == repr(tnll)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y, c: F.mse_loss(x, y, reduction="avg"), ValueError, "mse_loss: reduction"),
    (lambda x, y, c: F.l1_loss(x, y, reduction=None), ValueError, "l1_loss: reduction"),
    (lambda x, y, c: F.binary_cross_entropy_with_logits(x, y, reduction="max"), ValueError,
     "binary_cross_entropy_with_logits: reduction"),
    (lambda x, y, c: F.binary_cross_entropy_with_logits(x, y[:, :2]), ValueError,
     "binary_cross_entropy_with_logits: target size"),
    (lambda x, y, c: F.nll_loss(x, c, reduction="sum"), ValueError, "nll_loss: reduction"),
    (lambda x, y, c: F.nll_loss(x, c, reduction="none"), ValueError, "nll_loss: reduction"),
    (lambda x, y, c: F.nll_loss(x, c, weight=Tensor(np.ones(3, F32))), ValueError, "nll_loss: class weights"),
    (lambda x, y, c: F.nll_loss(x, c[:2]), ValueError, "nll_loss: target has shape"),
    (lambda x, y, c: F.nll_loss(x.sum(), c), ValueError, "nll_loss: input needs a class dim"),
    (lambda x, y, c: F.cross_entropy(x, c, reduction="sum"), ValueError, "cross_entropy: reduction"),
    (lambda x, y, c: F.cross_entropy(x, c.reshape(4, 1)), ValueError, "cross_entropy: target has shape"),
    (lambda x, y, c: F.mse_loss(x.numpy(), y), TypeError, "mse_loss: input must be a Tensor"),
    (lambda x, y, c: nn.MSELoss(reduction="avg"), ValueError, "MSELoss: reduction"),
    (lambda x, y, c: nn.NLLLoss(reduction="sum"), ValueError, "NLLLoss: reduction"),
    (lambda x, y, c: nn.NLLLoss(weight=np.ones(3, F32)), ValueError, "NLLLoss: class weights"),
    (lambda x, y, c: nn.CrossEntropyLoss(reduction="none"), ValueError, "CrossEntropyLoss: reduction"),
])
def test_bad_arguments_raise_naming_the_function(call, error, match):
    x, y = Tensor(_rand(17, 4, 3), requires_grad=True), Tensor(_probabilities(18, 4, 3))
    with pytest.raises(error, match=match):
        call(x, y, Tensor(np.array([0, 1, 2, 1], np.int64)))


# ------------------------------------------------------------------ capture


class _MultiHead(nn.Module):
    """A trunk and three heads: regression, multi-label and classification."""

    def __init__(self, seed=0):
        super().__init__()
        pe.manual_seed(seed)
        self.trunk = nn.Linear(6, 10)
        self.heads = nn.Linear(10, 2 + 3 + 4)

    def forward(self, x):
        out = self.heads(self.trunk(x).tanh())
        return out[:, :2], out[:, 2:5], out[:, 5:]


def _total(regression, labels, logits, y):
    classes = y[:, 5:].argmax(dim=1)  # the class as a one-hot block of y: an int64 graph value
    return (nn.MSELoss()(regression, y[:, :2]) + F.l1_loss(regression, y[:, :2], reduction="sum") * 0.1
            + nn.BCEWithLogitsLoss(pos_weight=np.full(3, 2.0, F32))(labels, y[:, 2:5])
            + F.binary_cross_entropy_with_logits(labels, y[:, 2:5], reduction="none").max() * 0.1
            + nn.NLLLoss()(logits.log_softmax(), classes)
            + F.cross_entropy(logits, classes) * 0.5)


def _batches(seed, n=3, batch=6):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = np.zeros((batch, 2 + 3 + 4), F32)
        y[:, :2] = rng.standard_normal((batch, 2))
        y[:, 2:5] = rng.integers(0, 2, (batch, 3))
        y[np.arange(batch), 5 + rng.integers(0, 4, batch)] = 1.0
        out.append((rng.standard_normal((batch, 6)).astype(F32), y))
    return out


def _total_loss(model, x, y):
    return _total(*model(x), y)


def test_training_replay_with_every_loss_is_bit_exact():
    graph = assert_training_replay_is_bit_exact(lambda: _MultiHead(seed=1), _total_loss, _batches(2))
    names = {step.op.name for step in graph.steps}
    assert {"nll_loss", "cross_entropy", "abs", "square", "argmax", "getitem"} <= names
