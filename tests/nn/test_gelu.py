"""GELU's two forms with torch's `approximate` argument: the exact x Phi(x) (the default, BERT's)
and the tanh form (GPT-2's), through F.gelu, Tensor.gelu, nn.GELU and the GEMM epilogue a
captured graph fuses. The kernels' own reference, finite-difference and binding tests come from
UNARY in tests/op_cases.py ("gelu_erf")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_close

import pyengine as pe
from pyengine import Tensor, nn
from pyengine import functional as F
from pyengine import kernels as K

F32, F64 = np.float32, np.float64


def gelu_erf64(x):
    x = np.asarray(x, F64)
    return 0.5 * x * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


def test_default_is_exact_and_tanh_is_the_approximation():
    x = Tensor(np.array([1.0], F32))
    assert abs(F.gelu(x).item() - 0.8413447) < 1e-6  # Phi(1)
    assert abs(F.gelu(x, approximate="tanh").item() - 0.8411920) < 1e-6
    assert abs(x.gelu().item() - 0.8413447) < 1e-6
    assert abs(nn.GELU("tanh")(x).item() - 0.8411920) < 1e-6


def test_exact_form_keeps_relative_accuracy_in_the_negative_tail(isa):
    """0.5 x erfc(-x / sqrt 2) with no 1 + erf cancellation: relative error small where Phi is tiny."""
    x = np.linspace(-9.0, 9.0, 20001).astype(F32)
    got = K.gelu_erf(x).astype(F64)
    want = gelu_erf64(x)
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    assert rel[np.abs(want) > 1e-30].max() < 2e-5
    assert np.abs(got - want).max() < 1e-6


def test_special_values_as_torch():
    """As torch's float64 GELU (its float32 one gives NaN at +inf): inf at +inf, NaN at -inf and NaN."""
    torch = pytest.importorskip("torch")
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 20.0, -20.0, 1e-30], F32)
    want = torch.nn.functional.gelu(torch.from_numpy(x.astype(F64))).numpy()
    got = K.gelu_erf(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_functional_and_module_match_torch_with_grads(approximate):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((5, 37)).astype(F32) * F32(3)
    g = np.random.default_rng(1).standard_normal((5, 37)).astype(F32)
    for fn in (lambda t: F.gelu(t, approximate=approximate), nn.GELU(approximate)):
        t = Tensor(x, requires_grad=True)
        (fn(t) * Tensor(g)).sum().backward()
        ref = torch.from_numpy(x.astype(F64)).requires_grad_()
        (torch.nn.functional.gelu(ref, approximate=approximate) * torch.from_numpy(g.astype(F64))).sum().backward()
        assert_close(fn(Tensor(x)).data, torch.nn.functional.gelu(ref, approximate=approximate).detach().numpy(),
                     atol=1e-6, rtol=2e-6, what="forward")
        assert_close(t.grad.data, ref.grad.numpy(), atol=2e-6, rtol=1e-5, what="grad")


def test_module_prints_as_torch_and_refuses_unknown_forms():
    torch = pytest.importorskip("torch")
    for approximate in ("none", "tanh"):
        assert repr(nn.GELU(approximate)) == repr(torch.nn.GELU(approximate=approximate))
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        nn.GELU("erf")
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        F.gelu(Tensor(np.zeros(3, F32)), approximate="fast")


def test_capture_fuses_the_exact_form_into_its_gemm_and_matches_eager():
    pe.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 40), nn.GELU(), nn.Linear(40, 3))
    x = np.random.default_rng(4).standard_normal((9, 16)).astype(F32)
    graph = pe.capture(lambda a: model(a), x)
    labels = [s.op.label() for s in graph.steps if s.kind == "forward"]
    assert "matmul[ᵀb]+gelu_erf" in labels
    np.testing.assert_array_equal(graph.run(x).numpy(), model(Tensor(x)).numpy())


def test_gpt_keeps_the_tanh_form():
    """GPT-2 uses the tanh approximation: its MLP asks for it explicitly."""
    from pyengine.models import GPT, GPTConfig

    pe.manual_seed(5)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=11))
    graph = pe.capture(lambda ids: model(ids)[0], np.zeros((1, 4), np.int64))
    labels = [s.op.label() for s in graph.steps if s.kind == "forward"]
    assert any(label == "gelu" or label.endswith("+gelu") for label in labels)
    assert not any("gelu_erf" in label for label in labels)
