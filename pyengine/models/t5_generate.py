"""T5's side of the generation protocol (pyengine.generation drives it): ``encode``, a key/value
cache, and ``decode_step``, which costs one position of work per new token.

The cache holds each decoder layer's self-attention keys and values, (B, H, capacity, D), filled
up to ``length``, and the cross-attention keys and values of the encoder output, computed once, at
the first step. A step runs the new positions only: their queries attend over the cached keys
(causal masking aligned to the end), with the decoder's relative position bias of the new
positions only (queries length.., keys 0..length + t - 1).
"""

from __future__ import annotations

import numpy as np

from pyengine import functional as F
from pyengine.models.t5 import additive_padding_mask
from pyengine.tensor import Tensor, no_grad

__all__ = ["T5Cache", "encode", "decode_step"]


class T5Cache:
    """Self-attention keys/values of every decoder layer, (B, H, capacity, D) each, filled up to
    `length` positions; the cross-attention keys/values (B, H, S, D), None until the first step."""

    def __init__(self, config, batch: int, capacity: int):
        for name, value in (("batch", batch), ("capacity", capacity)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"T5Cache: {name} must be a positive int, got {value!r}")
        shape = (int(batch), config.num_heads, int(capacity), config.d_kv)
        self.keys = [np.zeros(shape, np.float32) for _ in range(config.num_decoder_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(config.num_decoder_layers)]
        self.cross_keys: list | None = None
        self.cross_values: list | None = None
        self.batch, self.capacity, self.length = int(batch), int(capacity), 0

    def reorder(self, index) -> None:
        """Keep rows `index` (int64 (B',)), in that order, duplicates allowed (beam search)."""
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or
                                                                                 index.max() >= self.batch)):
            raise ValueError(f"T5Cache.reorder: index must be integers (B',) in [0, {self.batch}), got "
                             f"{index.dtype} {index.shape}")
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        if self.cross_keys is not None:
            self.cross_keys = [k[index] for k in self.cross_keys]
            self.cross_values = [v[index] for v in self.cross_values]
        self.batch = int(index.size)


def encode(model, input_ids, attention_mask=None) -> np.ndarray:
    """The encoder's last hidden state (B, S, d_model), float32."""
    with no_grad():
        return model.run_encoder(input_ids, attention_mask).numpy()


def _fill_cross_attention(model, cache: T5Cache, encoder_hidden) -> None:
    if encoder_hidden is None:
        raise ValueError("T5 decode_step: the first step needs encoder_hidden (B, S, d_model)")
    hidden = encoder_hidden if isinstance(encoder_hidden, Tensor) else Tensor(
        np.ascontiguousarray(encoder_hidden, dtype=np.float32))
    if hidden.ndim != 3 or hidden.shape[0] != cache.batch or hidden.shape[2] != model.config.d_model:
        raise ValueError(f"T5 decode_step: encoder_hidden must be ({cache.batch}, S, {model.config.d_model}), "
                         f"got {hidden.shape}")
    cache.cross_keys, cache.cross_values = [], []
    for block in model.decoder.block:
        attn = block.layer[1].EncDecAttention
        cache.cross_keys.append(attn.heads(attn.k(hidden)).numpy())
        cache.cross_values.append(attn.heads(attn.v(hidden)).numpy())


def _self_attention_mask(model, cache: T5Cache, steps: int, attention_mask) -> Tensor:
    """Position bias of the new positions (1, H, t, end), plus the decoder padding (B, 1, 1, end)."""
    end = cache.length + steps
    bias = model.decoder.bias_attention.position_bias(steps, end, offset=cache.length)
    if attention_mask is None:
        return bias
    padding = additive_padding_mask(attention_mask, "T5 decode_step")
    if padding.shape != (cache.batch, 1, 1, end):
        raise ValueError(f"T5 decode_step: attention_mask must be ({cache.batch}, {end}) (the cached and the new "
                         f"positions), got {np.shape(attention_mask)}")
    return bias + Tensor(padding)


def _cached_self_attention(layer, x: Tensor, cache: T5Cache, index: int, mask: Tensor) -> Tensor:
    attn = layer.SelfAttention
    h = layer.layer_norm(x)
    start, end = cache.length, cache.length + x.shape[1]
    cache.keys[index][:, :, start:end] = attn.heads(attn.k(h)).numpy()
    cache.values[index][:, :, start:end] = attn.heads(attn.v(h)).numpy()
    keys = Tensor(np.ascontiguousarray(cache.keys[index][:, :, :end]))
    values = Tensor(np.ascontiguousarray(cache.values[index][:, :, :end]))
    y = F.scaled_dot_product_attention(attn.heads(attn.q(h)), keys, values, attn_mask=mask, is_causal=True,
                                       scale=1.0)
    return x + attn.merge(y)


def _cached_cross_attention(layer, x: Tensor, cache: T5Cache, index: int, mask) -> Tensor:
    attn = layer.EncDecAttention
    q = attn.heads(attn.q(layer.layer_norm(x)))
    y = F.scaled_dot_product_attention(q, Tensor(cache.cross_keys[index]), Tensor(cache.cross_values[index]),
                                       attn_mask=mask, scale=1.0)
    return x + attn.merge(y)


def decode_step(model, decoder_ids, cache: T5Cache, attention_mask=None, encoder_hidden=None,
                encoder_attention_mask=None) -> np.ndarray:
    """Logits (B, V) of the last of the new decoder tokens `decoder_ids` (B, t), appended to `cache`.
    attention_mask: the decoder's (B, cache.length + t) 1/0 mask, or None; encoder_hidden (B, S, d)
    is read at the first step only (the cross-attention keys and values are cached);
    encoder_attention_mask (B, S) masks the encoder's padding at every step."""
    ids = model.check_ids(decoder_ids, "decoder_ids")
    batch, steps = ids.shape
    if batch != cache.batch:
        raise ValueError(f"T5 decode_step: {batch} rows of decoder_ids for a cache of {cache.batch}")
    if cache.length + steps > cache.capacity:
        raise ValueError(f"T5 decode_step: {cache.length} cached + {steps} new positions exceed the cache's "
                         f"capacity {cache.capacity}")
    with no_grad():
        if cache.cross_keys is None:
            _fill_cross_attention(model, cache, encoder_hidden)
        encoder_mask = additive_padding_mask(encoder_attention_mask, "T5 decode_step")
        if encoder_mask is not None and encoder_mask.shape != (batch, 1, 1, cache.cross_keys[0].shape[2]):
            raise ValueError(f"T5 decode_step: encoder_attention_mask {np.shape(encoder_attention_mask)} does not "
                             f"match the encoder output ({batch}, {cache.cross_keys[0].shape[2]})")
        mask = _self_attention_mask(model, cache, steps, attention_mask)
        x = model.shared(ids)
        for index, block in enumerate(model.decoder.block):
            x = _cached_self_attention(block.layer[0], x, cache, index, mask)
            x = _cached_cross_attention(block.layer[1], x, cache, index, encoder_mask)
            x = block.layer[2](x)
        cache.length += steps
        last = model.decoder.final_layer_norm(x[:, steps - 1:])
        return model.head(last).numpy()[:, 0]
