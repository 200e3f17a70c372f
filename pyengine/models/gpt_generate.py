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

import math

import numpy as np

from pyengine import kernels as K
from pyengine.models.decode_weights import weights_of
from pyengine.tensor import Tensor, no_grad

__all__ = ["generate", "decode_step", "KVCache", "sample_next"]


class KVCache:
    """Keys and values of every layer, (B, H, capacity, D) each, filled up to
    `length` positions. Decoding writes each new position in place (the
    cached_attention kernel), and attention reads the filled prefix in place:
    a new token costs one position of work, no copy of the cache."""

    def __init__(self, n_layer: int, batch: int, n_head: int, capacity: int, head_dim: int):
        shape = (batch, n_head, capacity, head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(n_layer)]
        self.values = [np.zeros(shape, np.float32) for _ in range(n_layer)]
        self.length = 0

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def reorder(self, index) -> None:
        """Keep rows `index` (int64 (B',)), in that order (duplicates allowed):
        beam search's parents, num_return_sequences' copies. Only the filled
        prefix is copied; the identity is free."""
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu" or (index.size and (
                index.min() < 0 or index.max() >= self.batch)):
            raise ValueError(f"KVCache.reorder: index must be ints in [0, {self.batch}) (B',), got {index!r}")
        if index.size == self.batch and np.array_equal(index, np.arange(self.batch)):
            return
        filled, same_size = self.length, index.size == self.batch
        for arrays in (self.keys, self.values):
            for layer, old in enumerate(arrays):
                new = old if same_size else np.empty((index.size,) + old.shape[1:], np.float32)
                new[:, :, :filled] = old[index, :, :filled]
                arrays[layer] = new


def _positions(cache: KVCache, steps: int, attention_mask) -> np.ndarray:
    """Position ids of the new positions: cache.length.. without a mask; with
    one, the real tokens counted (pads at 0), as transformers' generate."""
    if attention_mask is None:
        return np.arange(cache.length, cache.length + steps, dtype=np.int64)
    counted = np.cumsum(attention_mask, axis=1) - 1
    return np.where(attention_mask == 0, 0, counted)[:, -steps:].astype(np.int64)


def _padding_mask(attention_mask) -> np.ndarray | None:
    """0 / -inf float32 (B, 1, 1, L) of a 0/1 attention_mask (B, L)."""
    if attention_mask is None:
        return None
    return np.where(attention_mask[:, None, None, :] != 0, np.float32(0), np.float32(-np.inf))


def check_attention_mask(attention_mask, shape: tuple, caller: str):
    """attention_mask as an int64 (B, L) array of 0/1 (a Tensor or array), or None."""
    if attention_mask is None:
        return None
    mask = attention_mask.numpy() if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
    if mask.shape != tuple(shape) or mask.dtype.kind not in "iub":
        raise ValueError(f"{caller}: attention_mask must be an integer array {tuple(shape)}, "
                         f"got {mask.dtype} {mask.shape}")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{caller}: attention_mask must hold only 0 and 1")
    return mask.astype(np.int64)


def decode_step(model, ids, cache: KVCache, attention_mask=None) -> np.ndarray:
    """See GPT.decode_step."""
    ids = model._check_indices(ids, "ids")
    if isinstance(ids, Tensor):
        ids = ids.numpy()
    batch, steps = ids.shape
    if steps == 0 or batch != cache.batch:
        raise ValueError(f"decode_step: ids {ids.shape} must hold >= 1 position for each of the cache's "
                         f"{cache.batch} rows")
    if cache.length + steps > cache.capacity:
        raise ValueError(f"decode_step: {cache.length} cached + {steps} new positions exceed the cache's "
                         f"{cache.capacity}")
    attention_mask = check_attention_mask(attention_mask, (batch, cache.length + steps), "decode_step")
    tr, weights = model.transformer, weights_of(model)
    start = cache.length
    positions = _positions(cache, steps, attention_mask)
    x = (K.embedding(tr.wte.weight.data, ids) + K.embedding(tr.wpe.weight.data, positions)).reshape(batch * steps, -1)
    mask = _padding_mask(attention_mask)
    for layer, block in enumerate(tr.h):
        x = _block_step(block, x, cache.keys[layer], cache.values[layer], start, mask, weights, (batch, steps))
    cache.length = start + steps
    last = np.ascontiguousarray(x.reshape(batch, steps, -1)[:, -1])
    return K.matmul(_norm(tr.ln_f, last), weights.get(tr.wte, tr.wte.weight))


# The step runs the kernels on numpy arrays (no autograd records, no Tensor wrapping: inference only,
# dropout off), its GEMMs through the model's (in, out) weight copies (pyengine.models.decode_weights),
# the bias and GELU in the GEMM's epilogue.
def _norm(norm, x: np.ndarray) -> np.ndarray:
    return K.layer_norm(x, norm.weight.data, norm.bias.data, eps=norm.eps)[0]


def _linear(x: np.ndarray, linear, weights, activation: str = "none") -> np.ndarray:
    bias = linear.bias.data if linear.bias is not None else None
    return K.matmul(x, weights.get(linear, linear.weight), bias, activation=activation)


def _block_step(block, x: np.ndarray, keys, values, start: int, mask, weights, shape) -> np.ndarray:
    """One block over the new positions x (B * t, C), their keys and values appended to the cache."""
    attn, (batch, steps) = block.attn, shape
    qkv = _linear(_norm(block.ln_1, x), attn.c_attn, weights).reshape(batch, steps, 3, attn.n_head, attn.head_dim)
    y = K.cached_attention(keys, values, qkv, mask, start=start, scale=1.0 / math.sqrt(attn.head_dim))
    x = x + _linear(y.reshape(batch * steps, -1), attn.c_proj, weights)
    mlp = block.mlp
    return x + _linear(_linear(_norm(block.ln_2, x), mlp.c_fc, weights, "gelu"), mlp.c_proj, weights)


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
    cache = model.new_cache(ids.shape[0], block_size) if use_cache else None
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                context = ids[:, -block_size:]
                if cache is None:
                    logits = _forward_full(model, np.ascontiguousarray(context))
                elif cache.length == 0 or ids.shape[1] > block_size:
                    cache.length = 0  # the prefill, or the window slid: rebuild the cache
                    logits = decode_step(model, np.ascontiguousarray(context), cache)
                else:
                    logits = decode_step(model, np.ascontiguousarray(ids[:, -1:]), cache)
                token = sample_next(logits, rng, temperature, top_k, top_p).astype(np.int64)
                ids = np.concatenate([ids, token[:, None]], axis=1)
                if stream is not None:
                    stream(token)
    finally:
        model.train(was_training)
    return ids
