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

from pyengine import kernels as K
from pyengine.models.t5 import additive_padding_mask, relative_position_bucket
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
        self.weights: dict = {}  # layer -> its weight transposed (in, out), taken at the first step
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


# The step runs the kernels on numpy arrays directly (no autograd records, a few microseconds a call):
# inference only, dropout off. Its GEMMs have few rows (the batch times the beams) and stream the
# weights, which they read about twice as fast in the (in, out) layout: the cache holds such copies.
def _rms(norm, x: np.ndarray) -> np.ndarray:
    return K.rms_norm(x, norm.weight.data, eps=norm.eps)[0]


def _linear(x: np.ndarray, layer, cache: T5Cache, activation: str = "none") -> np.ndarray:
    """x @ W^T through the cache's (in, out) copy of the layer's weight, made at its first use."""
    weight = cache.weights.get(layer)
    if weight is None:
        weight = cache.weights[layer] = _transposed(layer.weight.data)
    return K.matmul(x, weight, activation=activation)


def _transposed(w: np.ndarray, rows: int = 64) -> np.ndarray:
    """w.T, contiguous, copied in blocks of rows that stay in cache (about 4x numpy's whole transpose)."""
    out = np.empty((w.shape[1], w.shape[0]), np.float32)
    for start in range(0, w.shape[0], rows):
        out[:, start:start + rows] = w[start:start + rows].T
    return out


def _heads(x: np.ndarray, batch: int, heads: int) -> np.ndarray:
    """(B * T, H * D) -> (B, H, T, D), contiguous (no copy for T = 1)."""
    return np.ascontiguousarray(x.reshape(batch, -1, heads, x.shape[-1] // heads).transpose(0, 2, 1, 3))


def _merge(y: np.ndarray) -> np.ndarray:
    """(B, H, T, D) -> (B * T, H * D)."""
    batch, heads, steps, width = y.shape
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(batch * steps, heads * width)


def _fill_cross_attention(model, cache: T5Cache, encoder_hidden) -> None:
    if encoder_hidden is None:
        raise ValueError("T5 decode_step: the first step needs encoder_hidden (B, S, d_model)")
    hidden = np.ascontiguousarray(encoder_hidden.numpy() if isinstance(encoder_hidden, Tensor) else encoder_hidden,
                                  dtype=np.float32)
    if hidden.ndim != 3 or hidden.shape[0] != cache.batch or hidden.shape[2] != model.config.d_model:
        raise ValueError(f"T5 decode_step: encoder_hidden must be ({cache.batch}, S, {model.config.d_model}), "
                         f"got {hidden.shape}")
    rows = hidden.reshape(-1, hidden.shape[2])
    heads = model.config.num_heads
    cache.cross_keys, cache.cross_values = [], []
    for block in model.decoder.block:
        attn = block.layer[1].EncDecAttention
        cache.cross_keys.append(_heads(K.matmul(rows, attn.k.weight.data, trans_b=True), cache.batch, heads))
        cache.cross_values.append(_heads(K.matmul(rows, attn.v.weight.data, trans_b=True), cache.batch, heads))


def _self_attention_mask(model, cache: T5Cache, steps: int, attention_mask) -> np.ndarray:
    """Position bias of the new positions (1, H, t, end), plus the decoder padding (B, 1, 1, end)."""
    end = cache.length + steps
    attn = model.decoder.bias_attention
    query = np.arange(cache.length, end, dtype=np.int64)[:, None]
    buckets = relative_position_bucket(np.arange(end, dtype=np.int64)[None, :] - query, False, attn.num_buckets,
                                       attn.max_distance)
    bias = np.ascontiguousarray(attn.relative_attention_bias.weight.data[buckets].transpose(2, 0, 1)[None])
    if attention_mask is None:
        return bias
    padding = additive_padding_mask(attention_mask, "T5 decode_step")
    if padding.shape != (cache.batch, 1, 1, end):
        raise ValueError(f"T5 decode_step: attention_mask must be ({cache.batch}, {end}) (the cached and the new "
                         f"positions), got {np.shape(attention_mask)}")
    return bias + padding


def _cached_self_attention(layer, x: np.ndarray, cache: T5Cache, index: int, mask: np.ndarray) -> np.ndarray:
    attn, batch = layer.SelfAttention, cache.batch
    h = _rms(layer.layer_norm, x)
    start, end = cache.length, cache.length + x.shape[0] // batch
    cache.keys[index][:, :, start:end] = _heads(_linear(h, attn.k, cache), batch, attn.n_heads)
    cache.values[index][:, :, start:end] = _heads(_linear(h, attn.v, cache), batch, attn.n_heads)
    keys = np.ascontiguousarray(cache.keys[index][:, :, :end])
    values = np.ascontiguousarray(cache.values[index][:, :, :end])
    y, _ = K.attention(_heads(_linear(h, attn.q, cache), batch, attn.n_heads), keys, values, mask, is_causal=True,
                       scale=1.0)
    return x + _linear(_merge(y), attn.o, cache)


def _cached_cross_attention(layer, x: np.ndarray, cache: T5Cache, index: int, mask) -> np.ndarray:
    attn = layer.EncDecAttention
    q = _heads(_linear(_rms(layer.layer_norm, x), attn.q, cache), cache.batch, attn.n_heads)
    y, _ = K.attention(q, cache.cross_keys[index], cache.cross_values[index], mask, scale=1.0)
    return x + _linear(_merge(y), attn.o, cache)


# transformers' activation name -> (the GEMM epilogue's activation, or the kernel applied after it).
_EPILOGUE = {"relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_erf"}


def _feed_forward(layer, x: np.ndarray, cache: T5Cache, activation: str) -> np.ndarray:
    dense, h = layer.DenseReluDense, _rms(layer.layer_norm, x)
    epilogue = _EPILOGUE.get(activation, "none")

    def activated(linear):
        y = _linear(h, linear, cache, epilogue)
        return y if epilogue != "none" else getattr(K, activation)(y)

    inner = activated(dense.wi_0) * _linear(h, dense.wi_1, cache) if hasattr(dense, "wi_0") else activated(dense.wi)
    return x + _linear(inner, dense.wo, cache)


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
    if cache.cross_keys is None:
        _fill_cross_attention(model, cache, encoder_hidden)
    encoder_mask = additive_padding_mask(encoder_attention_mask, "T5 decode_step")
    if encoder_mask is not None and encoder_mask.shape != (batch, 1, 1, cache.cross_keys[0].shape[2]):
        raise ValueError(f"T5 decode_step: encoder_attention_mask {np.shape(encoder_attention_mask)} does not "
                         f"match the encoder output ({batch}, {cache.cross_keys[0].shape[2]})")
    mask = _self_attention_mask(model, cache, steps, attention_mask)
    ids = ids.numpy() if isinstance(ids, Tensor) else ids
    x = K.embedding(model.shared.weight.data, ids.reshape(-1))
    activation = model.config.activation
    for index, block in enumerate(model.decoder.block):
        x = _cached_self_attention(block.layer[0], x, cache, index, mask)
        x = _cached_cross_attention(block.layer[1], x, cache, index, encoder_mask)
        x = _feed_forward(block.layer[2], x, cache, activation)
    cache.length += steps
    last = _rms(model.decoder.final_layer_norm, np.ascontiguousarray(x.reshape(batch, steps, -1)[:, -1]))
    if model.config.scale_decoder_outputs:
        last *= np.float32(model.config.d_model ** -0.5)
    return _linear(last, model.shared if model.tied else model.lm_head, cache)
