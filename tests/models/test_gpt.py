"""The GPT against the same model written in PyTorch with the same weights
(a golden test in the style of llm.c's test_gpt2): logits, loss and every
parameter gradient, then ten AdamW steps with clipping; generation with the
cache against generation without it; the model's errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import pyengine as pe
from pyengine.models import GPT, GPTConfig

torch = pytest.importorskip("torch")
from pyengine.models.gpt_torch import to_torch  # noqa: E402 - needs torch

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=53, dropout=0.0)


def _models(seed=0, dtype=torch.float32):
    pe.manual_seed(seed)
    model = GPT(CONFIG)
    return model, to_torch(model, dtype)  # load_state_dict checks that the names agree


def _batch(seed, batch=3, steps=CONFIG.block_size):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, CONFIG.vocab_size, (batch, steps)), rng.integers(0, CONFIG.vocab_size, (batch, steps)))


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def test_state_dict_names_follow_hugging_face_gpt2():
    names = list(GPT(CONFIG).state_dict())
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.1.mlp.c_proj.bias" in names
    assert names[-2:] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    assert not any(n.startswith("lm_head") for n in names)  # tied to wte


def test_initialisation_is_gpt2s():
    model = GPT(GPTConfig(n_layer=6, n_head=4, n_embd=256, block_size=64, vocab_size=500))
    state = {k: np.asarray(v) for k, v in model.state_dict().items()}
    assert abs(state["transformer.wte.weight"].std() - 0.02) < 1e-3
    assert abs(state["transformer.h.0.attn.c_proj.weight"].std() - 0.02 / math.sqrt(12)) < 5e-4
    assert abs(state["transformer.h.3.mlp.c_fc.weight"].std() - 0.02) < 1e-3
    assert not state["transformer.h.0.attn.c_attn.bias"].any()
    assert (state["transformer.h.0.ln_1.weight"] == 1).all()


def test_logits_loss_and_every_gradient_match_pytorch():
    model, reference = _models(dtype=torch.float64)
    idx, targets = _batch(1)
    logits, loss = model(idx, targets)
    loss.backward()
    ref_logits, ref_loss = reference(torch.tensor(idx), torch.tensor(targets))
    ref_loss.backward()
    assert _relative_error(logits.numpy(), ref_logits.detach().numpy()) < 1e-4
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-4
    ref_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        error = _relative_error(param.grad.numpy(), ref_params[name].grad.numpy())
        assert error < 1e-4, f"{name}: gradient relative error {error:.2e}"


def _pe_train(model, batches, captured: bool):
    losses = []
    if captured:  # clipping inside the optimizer's step, fused with the update
        optimizer = pe.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, max_grad_norm=1.0)
        graph = pe.capture(lambda x, y: model(x, y)[1], *batches[0], optimizer=optimizer)
        return [graph.run(x, y).item() for x, y in batches]
    optimizer = pe.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for x, y in batches:
        optimizer.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        pe.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def _torch_train(reference, batches):
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        _, loss = reference(torch.tensor(x), torch.tensor(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
def test_ten_adamw_steps_with_clipping_match_pytorch(captured):
    model, reference = _models(seed=3)
    batches = [_batch(10 + i) for i in range(10)]
    losses = _pe_train(model, batches, captured)
    expected = _torch_train(reference, batches)
    np.testing.assert_allclose(losses, expected, rtol=1e-4)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_replayed_training_step_equals_eager_bit_for_bit(dropout):
    batches = [_batch(20 + i) for i in range(4)]
    config = dataclasses.replace(CONFIG, dropout=dropout)
    runs = []
    for captured in (False, True):
        pe.manual_seed(5)  # the same weights and the same dropout streams
        model = GPT(config)
        runs.append((model, _pe_train(model, batches, captured)))
    (eager, eager_losses), (replayed, replayed_losses) = runs
    assert eager_losses == replayed_losses
    for (name, a), (_, b) in zip(eager.named_parameters(), replayed.named_parameters()):
        assert np.array_equal(a.numpy(), b.numpy()), name


@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(temperature=0.9, seed=7),
                                     dict(temperature=1.0, top_k=5, seed=3), dict(temperature=1.2, top_p=0.8, seed=1)],
                         ids=["greedy", "sampled", "top_k", "top_p"])
def test_generation_with_the_cache_gives_the_tokens_of_generation_without(options):
    model, _ = _models(seed=2)
    prompt = _batch(4, batch=2, steps=5)[0]
    cached = model.generate(prompt, 20, **options)  # passes block_size: the window slides
    uncached = model.generate(prompt, 20, use_cache=False, **options)
    assert cached.shape == (2, 25) and cached.dtype == np.int64
    assert np.array_equal(cached[:, :5], prompt)
    np.testing.assert_array_equal(cached, uncached)


def test_greedy_generation_is_the_argmax_of_the_full_forward():
    model, _ = _models(seed=2)
    prompt = _batch(4, batch=1, steps=3)[0]
    out = model.generate(prompt, 4, temperature=0)
    for t in range(3, 7):
        with pe.no_grad():
            logits, _ = model(out[:, :t])
        assert out[0, t] == logits.numpy()[0, -1].argmax()


def test_sampling_depends_on_the_seed_only():
    model, _ = _models(seed=2)
    prompt = _batch(4, batch=1, steps=3)[0]
    a = model.generate(prompt, 12, temperature=1.0, seed=11)
    assert np.array_equal(a, model.generate(prompt, 12, temperature=1.0, seed=11))
    assert not np.array_equal(a, model.generate(prompt, 12, temperature=1.0, seed=12))


def test_bad_inputs_are_clear_errors():
    model, _ = _models()
    with pytest.raises(ValueError, match="longer than block_size"):
        model(np.zeros((1, CONFIG.block_size + 1), np.int64))
    with pytest.raises(ValueError, match="outside"):
        model(np.full((1, 4), CONFIG.vocab_size, np.int64))
    with pytest.raises(ValueError, match="integer array"):
        model(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(np.zeros((1, 2), np.int64), 3, top_p=1.5)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
