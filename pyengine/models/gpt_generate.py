"""Sampling from a GPT, with a key/value cache.

With the cache, the prompt is run once (the prefill) and every new token
then costs one position of work per layer: its query attends over the keys
and values kept from the earlier positions, with causal masking aligned to
the end. Without it, every step reruns the whole (cropped) context: the
reference the tests compare the cache against. Once a sequence reaches
block_size, the context window slides, and both paths then recompute the
last block_size positions for each new token (learned positions cannot be
shifted inside a cache), so the two give the same tokens throughout.

Sampling draws from a seeded numpy generator: the same seed, model and
prompt give the same tokens, with or without the cache.
"""

from __future__ import annotations

import numpy as np

from pyengine import functional as F
from pyengine.tensor import Tensor, no_grad

__all__ = ["generate", "KVCache", "sample_next"]


class KVCache:
    """Keys and values of every layer, (B, H, block_size, D) each, filled up
    to `length` positions."""

    def __init__(self, config, batch: int):
        shape = (batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = [np.zeros(shape, np.float32) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, np.float32) for _ in range(config.n_layer)]
        self.length = 0


def _attend_cached(block, x: Tensor, cache: KVCache, layer: int, start: int) -> Tensor:
    """One block's attention for the positions start.. of x, keys and values
    of the earlier positions read from the cache (and the new ones added)."""
    attn = block.attn
    batch, steps, width = x.shape
    qkv = attn.c_attn(block.ln_1(x)).numpy().reshape(batch, steps, 3, attn.n_head, attn.head_dim)
    end = start + steps
    cache.keys[layer][:, :, start:end] = qkv[:, :, 1].transpose(0, 2, 1, 3)
    cache.values[layer][:, :, start:end] = qkv[:, :, 2].transpose(0, 2, 1, 3)
    q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))
    k = np.ascontiguousarray(cache.keys[layer][:, :, :end])
    v = np.ascontiguousarray(cache.values[layer][:, :, :end])
    y = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).numpy()
    return attn.c_proj(Tensor(np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(batch, steps, width)))


def _forward_cached(model, ids: np.ndarray, cache: KVCache) -> np.ndarray:
    """Logits (B, V) of the last of `ids` (B, t), appended at cache.length."""
    tr = model.transformer
    start = cache.length
    positions = np.arange(start, start + ids.shape[1], dtype=np.int64)
    x = tr.wte(ids) + tr.wpe(positions)
    for layer, block in enumerate(tr.h):
        x = x + _attend_cached(block, x, cache, layer, start)
        x = x + block.mlp(block.ln_2(x))
    cache.length = start + ids.shape[1]
    last = tr.ln_f(x[:, -1])
    return F.linear(last, tr.wte.weight).numpy()


def _forward_full(model, ids: np.ndarray) -> np.ndarray:
    logits, _ = model(ids)
    return logits.numpy()[:, -1]


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k, top_p) -> np.ndarray:
    """One token per row of logits (B, V): the argmax when temperature is 0,
    else a draw from softmax(logits / temperature) restricted to the top_k
    most likely tokens and to the smallest set whose probability reaches
    top_p (as transformers' TopK and TopP warpers, top-k first)."""
    logits = logits.astype(np.float64)
    if temperature == 0:
        return logits.argmax(axis=1)
    logits = logits / temperature
    vocab = logits.shape[1]
    if top_k is not None and top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=1)[:, vocab - top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass above each token
        drop = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=1)  # the most likely token never drops
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(probs, axis=1)
    draws = rng.random(len(probs))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative <= draws).sum(axis=1), vocab - 1)


def _check_sampling(temperature, top_k, top_p, max_new_tokens) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"generate: top_k must be an int >= 1, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None, top_p=None, seed=None,
             use_cache: bool = True, stream=None) -> np.ndarray:
    """See GPT.generate."""
    _check_sampling(temperature, top_k, top_p, max_new_tokens)
    ids = model._check_indices(idx, "idx")
    if ids.shape[1] == 0:
        raise ValueError("generate: the prompt needs at least one token")
    rng = np.random.Generator(np.random.PCG64(seed))
    block_size = model.config.block_size
    was_training = model.training
    model.eval()
    cache = KVCache(model.config, ids.shape[0]) if use_cache else None
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                context = ids[:, -block_size:]
                if cache is None:
                    logits = _forward_full(model, np.ascontiguousarray(context))
                elif cache.length == 0 or ids.shape[1] > block_size:
                    cache.length = 0  # the prefill, or the window slid: rebuild the cache
                    logits = _forward_cached(model, np.ascontiguousarray(context), cache)
                else:
                    logits = _forward_cached(model, np.ascontiguousarray(ids[:, -1:]), cache)
                token = sample_next(logits, rng, temperature, top_k, top_p).astype(np.int64)
                ids = np.concatenate([ids, token[:, None]], axis=1)
                if stream is not None:
                    stream(token)
    finally:
        model.train(was_training)
    return ids
