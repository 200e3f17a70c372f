"""The (in, out) weight copies that decoding reads (pyengine.models.decode_weights): made once per
model, not per generate call, and made again when the weights change: after an optimizer step
(fine-tuning then generating uses the new weights), load_state_dict, a parameter's array replaced, or
an in-place write announced with parameters_written. Each case against a fresh model given the same
weights, whose copies are new."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine import functional as F
from pyengine import ops
from pyengine.models import GPT, GPTConfig
from pyengine.models.decode_weights import DecodeWeights, transposed, weights_of

CONFIG = GPTConfig(n_layer=2, n_head=3, n_embd=24, block_size=32, vocab_size=41)
PROMPT = np.random.default_rng(0).integers(0, 41, (2, 5))


def _gpt(seed: int = 1) -> GPT:
    pe.manual_seed(seed)
    return GPT(CONFIG)


def _fresh_tokens(model: GPT) -> np.ndarray:
    """What a model with no copies yet, given `model`'s weights, generates."""
    twin = _gpt(seed=99)
    twin.load_state_dict(model.state_dict())
    return twin.generate(PROMPT, 8, temperature=0)


def test_transposed_is_the_transpose():
    w = np.random.default_rng(1).standard_normal((130, 7)).astype(np.float32)
    np.testing.assert_array_equal(transposed(w), w.T)
    assert transposed(w).flags.c_contiguous


def test_copies_are_made_once_per_model():
    model = _gpt()
    first = model.generate(PROMPT, 8, temperature=0)
    store = weights_of(model)
    copies = dict(store._copies)
    assert len(copies) == 4 * CONFIG.n_layer + 1  # four linears a block, and the tied head
    np.testing.assert_array_equal(model.generate(PROMPT, 8, temperature=0), first)
    assert all(store._copies[key][1] is entry[1] for key, entry in copies.items())
    np.testing.assert_array_equal(first, _fresh_tokens(model))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fine_tuning_then_generating_uses_the_new_weights(optimizer):
    model = _gpt()
    before = model.generate(PROMPT, 8, temperature=0)
    model.train()
    params = list(model.parameters())
    opt = pe.optim.SGD(params, lr=2.0) if optimizer == "sgd" else pe.optim.AdamW(params, lr=0.05)
    targets = np.random.default_rng(2).integers(0, CONFIG.vocab_size, PROMPT.shape)
    for _ in range(3):
        _, loss = model(PROMPT, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.generate(PROMPT, 8, temperature=0)
    assert not np.array_equal(after, before), "fine-tuning changed no token: the test would prove nothing"
    np.testing.assert_array_equal(after, _fresh_tokens(model))


def test_load_state_dict_and_a_replaced_array_renew_the_copies():
    model, other = _gpt(), _gpt(seed=5)
    before = model.generate(PROMPT, 8, temperature=0)
    model.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(model.generate(PROMPT, 8, temperature=0), other.generate(PROMPT, 8, temperature=0))
    written = ops.PARAMETER_WRITES[0]
    head = model.transformer.wte.weight
    head.data = np.ascontiguousarray(head.data[::-1])  # a new array, no write counted
    assert ops.PARAMETER_WRITES[0] == written
    after = model.generate(PROMPT, 8, temperature=0)
    np.testing.assert_array_equal(after, _fresh_tokens(model))
    assert not np.array_equal(after, before)


def test_an_announced_in_place_write_renews_the_copies():
    model = _gpt()
    before = model.generate(PROMPT, 8, temperature=0)
    fc = model.transformer.h[0].mlp.c_fc.weight
    fc.data[...] = np.random.default_rng(3).normal(0, 1.0, fc.shape)
    ops.parameters_written()
    after = model.generate(PROMPT, 8, temperature=0)
    np.testing.assert_array_equal(after, _fresh_tokens(model))
    assert not np.array_equal(after, before)


def test_decode_weights_match_the_linear_layer():
    model = _gpt()
    store, x = DecodeWeights(), np.random.default_rng(4).standard_normal((3, CONFIG.n_embd)).astype(np.float32)
    attn = model.transformer.h[1].attn
    want = F.linear(pe.Tensor(x), attn.c_attn.weight).numpy()
    np.testing.assert_allclose(x @ store.get(attn.c_attn, attn.c_attn.weight), want, rtol=1e-5, atol=1e-5)
    stacked = store.get("two", attn.c_proj.weight, attn.c_attn.weight)
    np.testing.assert_array_equal(stacked, np.concatenate([attn.c_proj.weight.data, attn.c_attn.weight.data]).T)


def test_t5_fine_tuned_then_generating_uses_the_new_weights(tmp_path):
    pytest.importorskip("transformers")
    from t5_cases import pyengine_t5

    from pyengine.models import from_pretrained

    model = pyengine_t5(tmp_path, "gated-untied", seed=7)
    ids = np.random.default_rng(5).integers(2, model.config.vocab_size, (2, 6))
    before = model.generate(ids, max_new_tokens=6)
    assert len(weights_of(model)) > 0
    model.train()
    opt = pe.optim.SGD(list(model.parameters()), lr=5.0)
    labels = np.random.default_rng(6).integers(2, model.config.vocab_size, (2, 5))
    for _ in range(2):
        _, loss = model(ids, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.generate(ids, max_new_tokens=6)
    assert not np.array_equal(after, before), "fine-tuning changed no token: the test would prove nothing"
    twin = from_pretrained(tmp_path)
    twin.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(after, twin.generate(ids, max_new_tokens=6))
