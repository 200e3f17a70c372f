"""pyengine.nn modules against torch.nn with the same weights copied in."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pyengine as pe
from pyengine import nn
from pyengine.tensor import Tensor

F32 = np.float32


def _torch():
    return pytest.importorskip("torch")


def _copy_into_torch(pe_module, torch_module):
    """Copy pyengine's parameters into the torch module by state_dict key."""
    torch = _torch()
    state = {k: torch.from_numpy(np.array(v)) for k, v in pe_module.state_dict().items()}
    torch_module.load_state_dict(state, strict=True)


def _compare_grads(pe_module, torch_module, *, atol, rtol):
    named = dict(torch_module.named_parameters())
    pe_named = dict(pe_module.named_parameters())
    assert set(named) == set(pe_named)
    for name, p in pe_named.items():
        assert p.grad is not None, f"{name} got no gradient"
        np.testing.assert_allclose(p.grad.numpy(), named[name].grad.numpy(), atol=atol, rtol=rtol,
                                   err_msg=f"grad of {name}")


def _check_module(pe_module, torch_module, x_shape, *, atol=1e-5, rtol=1e-4, seed=0):
    torch = _torch()
    _copy_into_torch(pe_module, torch_module)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(F32)
    xt = torch.tensor(x, requires_grad=True)
    xp = Tensor(x.copy(), requires_grad=True)
    out, ref = pe_module(xp), torch_module(xt)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), atol=atol, rtol=rtol, err_msg="forward")
    upstream = rng.standard_normal(out.shape).astype(F32)
    out.backward(upstream)
    ref.backward(torch.from_numpy(upstream))
    np.testing.assert_allclose(xp.grad.numpy(), xt.grad.numpy(), atol=atol, rtol=rtol, err_msg="grad of x")
    _compare_grads(pe_module, torch_module, atol=atol, rtol=rtol)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape", [(5, 7), (2, 3, 7)], ids=str)
def test_linear(bias, x_shape):
    torch = _torch()
    pe.manual_seed(1)
    _check_module(nn.Linear(7, 4, bias=bias), torch.nn.Linear(7, 4, bias=bias), x_shape)


def test_layer_norm():
    torch = _torch()
    m = nn.LayerNorm(12)
    rng = np.random.default_rng(3)
    # non-trivial affine parameters
    m.load_state_dict({"weight": rng.standard_normal(12).astype(F32), "bias": rng.standard_normal(12).astype(F32)})
    _check_module(m, torch.nn.LayerNorm(12, eps=1e-5), (2, 3, 12))


def test_layer_norm_init_and_eps():
    m = nn.LayerNorm(5, eps=1e-3)
    np.testing.assert_array_equal(m.weight.numpy(), np.ones(5, F32))
    np.testing.assert_array_equal(m.bias.numpy(), np.zeros(5, F32))
    assert m.eps == 1e-3
    x = np.array([[1.0, 1.0, 1.0, 1.0, 1.0 + 1e-2]], F32)  # variance ~ eps scale
    y = m(Tensor(x)).numpy()
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), atol=1e-5, rtol=1e-4)


CONV_CONFIGS = {  # (in, out, kernel_size, keyword arguments, x shape)
    "3x3-pad1": (3, 8, 3, {"padding": 1}, (2, 3, 9, 10)),
    "5x3-stride2-dilation": (4, 5, (5, 3), {"stride": 2, "padding": (2, 1), "dilation": (1, 2)},
                             (3, 4, 11, 12)),
    "1x1-nobias": (6, 4, 1, {"bias": False}, (2, 6, 5, 7)),
    "7x7-stride2-pad3": (3, 16, 7, {"stride": 2, "padding": 3}, (1, 3, 20, 18)),
}


@pytest.mark.parametrize("name", list(CONV_CONFIGS))
def test_conv2d(name):
    torch = _torch()
    c, k, kernel, kwargs, x_shape = CONV_CONFIGS[name]
    pe.manual_seed(3)
    _check_module(nn.Conv2d(c, k, kernel, **kwargs), torch.nn.Conv2d(c, k, kernel, **kwargs), x_shape,
                  atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["ReLU", "GELU", "Tanh", "Sigmoid", "SiLU"])
def test_activations(name):
    torch = _torch()
    ref = {"ReLU": torch.nn.ReLU(), "GELU": torch.nn.GELU(), "Tanh": torch.nn.Tanh(),
           "Sigmoid": torch.nn.Sigmoid(), "SiLU": torch.nn.SiLU()}[name]
    m = getattr(nn, name)()
    assert list(m.named_parameters()) == []
    _check_module(m, ref, (4, 9))


def _pe_mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU("tanh"), nn.LayerNorm(16),
                         nn.Linear(16, 3))


def _torch_mlp():
    torch = _torch()
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.GELU(approximate="tanh"), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))


def test_sequential_forward_and_grads():
    pe.manual_seed(7)
    _check_module(_pe_mlp(), _torch_mlp(), (8, 6), atol=1e-5, rtol=1e-4)


def test_sequential_with_cross_entropy_loss():
    torch = _torch()
    pe.manual_seed(11)
    model, ref = _pe_mlp(), _torch_mlp()
    _copy_into_torch(model, ref)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 6)).astype(F32)
    y = rng.integers(0, 3, 10).astype(np.int64)
    y[2] = -100
    loss = nn.CrossEntropyLoss()(model(Tensor(x)), y)
    tloss = torch.nn.CrossEntropyLoss()(ref(torch.from_numpy(x)), torch.from_numpy(y))
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), tloss.item(), atol=1e-6, rtol=1e-5)
    loss.backward()
    tloss.backward()
    _compare_grads(model, ref, atol=1e-6, rtol=1e-4)


def test_cross_entropy_loss_ignore_index():
    torch = _torch()
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 5)).astype(F32)
    y = np.array([0, 4, 1, 1, 3, 2], np.int64)
    lp = Tensor(logits.copy(), requires_grad=True)
    lt = torch.tensor(logits, requires_grad=True)
    loss = nn.CrossEntropyLoss(ignore_index=1)(lp, Tensor(y))
    tloss = torch.nn.CrossEntropyLoss(ignore_index=1)(lt, torch.from_numpy(y))
    np.testing.assert_allclose(loss.item(), tloss.item(), atol=1e-6, rtol=1e-5)
    loss.backward()
    tloss.backward()
    np.testing.assert_allclose(lp.grad.numpy(), lt.grad.numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(lp.grad.numpy()[[2, 3]], 0.0)


# ------------------------------------------------------------------ naming and state


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8))
        self.head = nn.Linear(8, 2, bias=False)

    def forward(self, x):
        return self.head(self.body(x))


def test_named_parameters_match_torch_state_dict_keys():
    torch = _torch()
    names = [n for n, _ in _pe_mlp().named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "5.weight", "5.bias"]
    assert names == list(_torch_mlp().state_dict().keys())

    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.LayerNorm(8))
            self.head = torch.nn.Linear(8, 2, bias=False)

    block = _Block()
    assert [n for n, _ in block.named_parameters()] == list(TorchBlock().state_dict().keys())
    assert list(block.state_dict()) == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
                                        "head.weight"]
    shapes = {n: p.shape for n, p in block.named_parameters()}
    assert shapes["body.0.weight"] == (8, 4) and shapes["head.weight"] == (2, 8)
    assert block.num_parameters() == 8 * 4 + 8 + 8 + 8 + 16


def test_shared_parameter_listed_once():
    a = nn.Linear(3, 3)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    assert len(seq) == 3 and seq[2] is a


def test_reassigning_attribute_replaces_registration():
    m = _Block()
    m.head = nn.ReLU()
    assert "head.weight" not in m.state_dict()
    m.head = None
    assert [n for n, _ in m.named_modules()] == ["", "body", "body.0", "body.1", "body.2"]


def test_state_dict_round_trip():
    pe.manual_seed(0)
    src = _pe_mlp()
    pe.manual_seed(1)
    dst = _pe_mlp()
    x = Tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(F32))
    assert not np.allclose(src(x).numpy(), dst(x).numpy())
    before = {n: p for n, p in dst.named_parameters()}
    arrays_before = {n: p.data for n, p in dst.named_parameters()}
    dst.load_state_dict({k: v.copy() for k, v in src.state_dict().items()})
    for name, p in dst.named_parameters():
        assert p is before[name] and p.data is arrays_before[name]  # copied in place
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p.numpy(), src.state_dict()[name])
    np.testing.assert_array_equal(src(x).numpy(), dst(x).numpy())
    # state_dict hands out the arrays themselves
    sd = dst.state_dict()
    assert sd["0.weight"] is dst[0].weight.data


def test_load_torch_state_dict_gives_torch_outputs():
    torch = _torch()
    torch.manual_seed(0)
    ref = _torch_mlp()
    model = _pe_mlp()
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(F32)
    np.testing.assert_allclose(model(Tensor(x)).numpy(), ref(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5, rtol=1e-4)


def test_load_state_dict_strict_and_shape_errors():
    model = _pe_mlp()
    state = {k: v.copy() for k, v in model.state_dict().items()}
    original = model[0].weight.numpy().copy()

    missing = dict(state)
    del missing["2.bias"]
    with pytest.raises(KeyError):
        model.load_state_dict(missing)
    extra = dict(state, **{"9.weight": np.zeros(3, F32)})
    with pytest.raises(KeyError):
        model.load_state_dict(extra)

    # non-strict: loads what is there, ignores the rest
    partial = {"0.weight": np.full((16, 6), 0.25, F32), "bogus": np.zeros(1, F32)}
    model.load_state_dict(partial, strict=False)
    np.testing.assert_array_equal(model[0].weight.numpy(), np.full((16, 6), 0.25, F32))

    wrong = dict(state)
    wrong["2.weight"] = np.zeros((16, 15), F32)
    with pytest.raises(ValueError):
        model.load_state_dict(wrong)
    with pytest.raises(ValueError):
        model.load_state_dict(dict(state, **{"0.weight": original.T.copy()}))


def test_train_eval_propagate():
    model = _Block()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert [m.training for m in model.modules()] == [False] * 6
    assert model.body[1].training is False
    model.train()
    assert all(m.training for m in model.modules())
    model.body.eval()  # only the sub-tree
    assert model.training and model.head.training
    assert not model.body.training and not model.body[0].training
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_module_zero_grad():
    model = _pe_mlp()
    x = Tensor(np.ones((2, 6), F32))
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_module_requires_init():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2, np.float32))

    with pytest.raises(AttributeError):
        Bad()


def test_parameter_is_float32_requires_grad():
    p = nn.Parameter(np.arange(3, dtype=np.float32))
    assert p.dtype == np.float32 and p.requires_grad and p.is_leaf
    np.testing.assert_array_equal(p.numpy(), [0.0, 1.0, 2.0])
    assert nn.Parameter([0, 1]).dtype == np.float32  # a list is converted; an array is never cast silently
    with pytest.raises(TypeError, match="Parameter: must be float32, got dtype float64"):
        nn.Parameter(np.arange(3, dtype=np.float64))


# ------------------------------------------------------------------ initialisation


def _weights(model):
    return [p.numpy().copy() for p in model.parameters()]


def test_manual_seed_makes_init_deterministic():
    pe.manual_seed(1234)
    a = _weights(_pe_mlp())
    pe.manual_seed(1234)
    b = _weights(_pe_mlp())
    pe.manual_seed(1235)
    c = _weights(_pe_mlp())
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    linear_indices = [0, 1, 2, 3, 6, 7]  # LayerNorm (4, 5) starts at ones/zeros regardless of seed
    for i in linear_indices:
        assert not np.array_equal(a[i], c[i])
    # without reseeding, the next model continues the stream: different again
    pe.manual_seed(1234)
    first, second = _weights(_pe_mlp()), _weights(_pe_mlp())
    assert not np.array_equal(first[0], second[0])


def test_explicit_generator():
    a = nn.Linear(5, 3, generator=np.random.default_rng(9))
    b = nn.Linear(5, 3, generator=np.random.default_rng(9))
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    np.testing.assert_array_equal(a.bias.numpy(), b.bias.numpy())


def _check_uniform_init(m, weight_shape, fan_in):
    """weight and bias of m drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch does."""
    bound = 1.0 / math.sqrt(fan_in)
    for p, shape in ((m.weight, weight_shape), (m.bias, weight_shape[:1])):
        assert p.shape == shape and p.dtype == np.float32 and p.requires_grad
        w = p.numpy()
        assert np.all(np.abs(w) <= bound * (1 + 1e-6))
    w = m.weight.numpy()
    # uniform over the whole range, not squashed: std of U(-b, b) is b/sqrt(3)
    assert w.max() > 0.9 * bound and w.min() < -0.9 * bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.1)
    assert abs(w.mean()) < 0.1 * bound


@pytest.mark.parametrize("fan_in,fan_out", [(400, 50), (3, 200), (1, 64)])
def test_linear_init_bounds(fan_in, fan_out):
    pe.manual_seed(42)
    _check_uniform_init(nn.Linear(fan_in, fan_out), (fan_out, fan_in), fan_in)


@pytest.mark.parametrize("c,k,kernel", [(16, 32, 3), (3, 64, (7, 5)), (1, 200, 1)], ids=str)
def test_conv2d_init_bounds(c, k, kernel):
    pe.manual_seed(42)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    _check_uniform_init(nn.Conv2d(c, k, kernel), (k, c, kh, kw), c * kh * kw)
    # the same bound as torch's kaiming_uniform_(a=sqrt(5)): its weights fill it too
    torch = _torch()
    ref = torch.nn.Conv2d(c, k, kernel).weight.detach().numpy()
    bound = 1.0 / math.sqrt(c * kh * kw)
    assert np.abs(ref).max() <= bound * (1 + 1e-6) and np.abs(ref).max() > 0.9 * bound


def test_repr_lists_children():
    text = repr(_pe_mlp())
    assert text.startswith("Sequential(")
    assert "(0): Linear(in_features=6, out_features=16, bias=True)" in text
    assert "(4): LayerNorm((16,), eps=1e-05, elementwise_affine=True, bias=True)" in text
