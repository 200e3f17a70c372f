"""The key/value cache: the cached_attention kernel (new keys and values
appended in place, the filled prefix read in place) against a float64
reference at every ISA level, GPT's decode_step against the full forward
(with padding), and KVCache.reorder."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine import kernels
from pyengine.models import GPT, GPTConfig

CONFIG = GPTConfig(n_layer=2, n_head=3, n_embd=24, block_size=24, vocab_size=31)


def _reference(k_cache, v_cache, qkv, mask, start, scale):
    """float64 attention of qkv's queries over the prefix with qkv's keys and values appended."""
    steps = qkv.shape[1]
    k = k_cache[:, :, :start + steps].astype(np.float64)
    v = v_cache[:, :, :start + steps].astype(np.float64)
    k[:, :, start:] = qkv[:, :, 1].transpose(0, 2, 1, 3)
    v[:, :, start:] = qkv[:, :, 2].transpose(0, 2, 1, 3)
    q = qkv[:, :, 0].transpose(0, 2, 1, 3).astype(np.float64)
    scores = scale * q @ k.transpose(0, 1, 3, 2) + (0 if mask is None else mask)
    causal = np.arange(start + steps)[None, :] <= np.arange(steps)[:, None] + start
    scores = np.where(causal, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return (weights @ v).transpose(0, 2, 1, 3), k, v


@pytest.mark.parametrize("dim", [8, 64])  # 64: whole vectors at every level, the few-query path for <= 4 steps
@pytest.mark.parametrize("start, steps, masked", [(0, 5, False), (4, 1, False), (6, 3, True), (9, 1, True)])
def test_cached_attention_equals_the_reference(isa, start, steps, masked, dim):
    rng = np.random.default_rng(start + steps)
    batch, heads, capacity = 2, 3, 12
    k_cache = rng.standard_normal((batch, heads, capacity, dim)).astype(np.float32)
    v_cache = rng.standard_normal((batch, heads, capacity, dim)).astype(np.float32)
    qkv = rng.standard_normal((batch, steps, 3, heads, dim)).astype(np.float32)
    mask = None
    if masked:
        mask = np.zeros((batch, 1, 1, start + steps), np.float32)
        mask[1, ..., :2] = -np.inf  # row 1 left-padded by two positions
    before = k_cache.copy()
    expected, k, v = _reference(k_cache, v_cache, qkv, mask, start, 0.3)
    out = kernels.cached_attention(k_cache, v_cache, qkv, mask, start=start, scale=0.3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(k_cache[:, :, :start + steps], k.astype(np.float32))
    np.testing.assert_array_equal(v_cache[:, :, :start + steps], v.astype(np.float32))
    np.testing.assert_array_equal(k_cache[:, :, start + steps:], before[:, :, start + steps:])  # untouched


def test_cached_attention_refuses_what_does_not_fit():
    caches = [np.zeros((1, 2, 4, 3), np.float32) for _ in range(2)]
    qkv = np.zeros((1, 2, 3, 2, 3), np.float32)
    with pytest.raises(ValueError, match="exceed the cache's 4"):
        kernels.cached_attention(*caches, qkv, start=3, scale=1.0)
    with pytest.raises(ValueError, match="start must be >= 0"):
        kernels.cached_attention(*caches, qkv, start=-1, scale=1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        kernels.cached_attention(*caches, qkv, np.zeros((1, 1, 1, 3), np.float32), start=0, scale=1.0)
    with pytest.raises(ValueError, match="contiguous|C-contiguous"):
        kernels.cached_attention(caches[0][:, :, ::2], caches[1][:, :, ::2], qkv, start=0, scale=1.0)


def _model():
    pe.manual_seed(4)
    model = GPT(CONFIG).eval()
    for _, parameter in model.named_parameters():
        parameter.data[...] += np.random.default_rng(0).normal(0, 0.1, parameter.shape)
    return model


def test_decoding_token_by_token_gives_the_full_forward_logits():
    model = _model()
    ids = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (2, 10))
    with pe.no_grad():
        full, _ = model(ids)
    cache = model.new_cache(2, 16)
    logits = [model.decode_step(ids[:, :4], cache)]  # a prefill of 4, then one at a time
    logits += [model.decode_step(ids[:, t:t + 1], cache) for t in range(4, 10)]
    assert cache.length == 10
    np.testing.assert_allclose(np.stack(logits, axis=1), full.numpy()[:, 3:], rtol=1e-4, atol=1e-5)


def test_decoding_with_left_padding_counts_positions_over_the_real_tokens():
    model = _model()
    rng = np.random.default_rng(2)
    ids = rng.integers(1, CONFIG.vocab_size, (2, 8))
    padded = np.concatenate([np.zeros((1, 3), np.int64), ids[1:, :5]], axis=1)  # row 1: 3 pads, 5 tokens
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1]])
    cache = model.new_cache(1, 12)
    first = model.decode_step(padded, cache, mask)
    mask = np.concatenate([mask, [[1]]], axis=1)
    second = model.decode_step(ids[1:, 5:6], cache, mask)
    with pe.no_grad():
        unpadded, _ = model(ids[1:, :6])  # the same tokens at positions 0..5, no padding
    np.testing.assert_allclose(first, unpadded.numpy()[:, 4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(second, unpadded.numpy()[:, 5], rtol=1e-4, atol=1e-5)


def test_reorder_selects_and_duplicates_rows_of_the_filled_prefix():
    model = _model()
    ids = np.random.default_rng(3).integers(0, CONFIG.vocab_size, (3, 5))
    cache = model.new_cache(3, 8)
    model.decode_step(ids, cache)
    keys = [k.copy() for k in cache.keys]
    cache.reorder(np.array([2, 2, 0, 1]))
    assert cache.batch == 4 and cache.length == 5
    for before, after in zip(keys, cache.keys):
        np.testing.assert_array_equal(after[:, :, :5], before[[2, 2, 0, 1], :, :5])
    step = model.decode_step(ids[[2, 2, 0, 1], :1], cache)
    np.testing.assert_array_equal(step[0], step[1])
    cache.reorder(np.arange(4))  # the identity: nothing moves
    with pytest.raises(ValueError, match="reorder"):
        cache.reorder(np.array([4]))
    with pytest.raises(ValueError, match="does not fit block_size"):
        model.new_cache(1, CONFIG.block_size + 1)
    with pytest.raises(ValueError, match="exceed the cache's 8"):
        model.decode_step(ids[[2, 2, 0, 1]], cache)
