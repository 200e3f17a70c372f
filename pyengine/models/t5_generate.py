"""T5's side of the generation protocol (pyengine.generation drives it): ``encode``, a key/value
cache, and ``decode_step``, which costs one position of work per new token.

The cache holds each decoder layer's self-attention keys and values in preallocated (B, H, capacity, D)
buffers, filled up to ``length``: a step's new keys and values are written into them in place and its
queries attend over the filled prefix in place (the cached_attention kernel, T5's relative position
bias of the new positions as its additive mask, no scaling), so no step copies the cache. The
cross-attention keys and values of the encoder output are computed once, at the first step, for each
input: the rows of the cache come in consecutive groups (the beams, or the returned sequences, of one
input) that share their input's cross-attention keys and values, the group's queries attending
together. ``reorder`` (beam search) moves the filled prefix of the self-attention buffers in place and
keeps the shared cross-attention rows while each row stays in its group.
"""

from __future__ import annotations

import numpy as np

from pyengine import kernels as K
from pyengine.models.decode_weights import weights_of
from pyengine.models.t5 import additive_padding_mask, relative_position_bucket
from pyengine.tensor import Tensor, no_grad

__all__ = ["T5Cache", "encode", "decode_step"]


def _positive(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"T5Cache: {name} must be a positive int, got {value!r}")
    return int(value)


class T5Cache:
    """Self-attention keys/values of every decoder layer, (B, H, capacity, D) each, filled up to
    `length` positions (written in place by each step); the cross-attention keys/values (B / group,
    H, S, D), one row per input, None until the first step: ``group`` consecutive cache rows share
    one, ``cross_rows`` names the input of each."""

    def __init__(self, config, batch: int, capacity: int):
        batch, capacity = _positive("batch", batch), _positive("capacity", capacity)
        shape = (batch, config.num_heads, capacity, config.d_kv)
        self.keys = [np.zeros(shape, np.float32) for _ in range(config.num_decoder_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(config.num_decoder_layers)]
        self.weights = None  # the model's (in, out) weight copies (decode_weights), set by decode_step
        self.cross_keys: list | None = None
        self.cross_values: list | None = None
        self.cross_rows: np.ndarray | None = None
        self.group, self.inputs = 1, batch
        self.batch, self.capacity, self.length = batch, capacity, 0

    def reorder(self, index) -> None:
        """Keep rows `index` (int64 (B',)), in that order, duplicates allowed (beam search). Only the
        filled prefix of the rows that change is copied, in place when B' == B; the cross-attention
        rows are kept while each group of rows still comes from one input (one row per cache row
        otherwise)."""
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or
                                                                                 index.max() >= self.batch)):
            raise ValueError(f"T5Cache.reorder: index must be integers (B',) in [0, {self.batch}), got "
                             f"{index.dtype} {index.shape}")
        filled = self.length
        if index.size == self.batch:
            changed = np.flatnonzero(index != np.arange(self.batch))
            for arrays in (self.keys, self.values):
                for array in arrays if changed.size else ():  # the right side is gathered before any write
                    array[changed, :, :filled] = array[index[changed], :, :filled]
        else:
            for arrays in (self.keys, self.values):
                for layer, old in enumerate(arrays):
                    new = np.zeros((index.size,) + old.shape[1:], np.float32)
                    new[:, :, :filled] = old[index, :, :filled]
                    arrays[layer] = new
        self.batch = int(index.size)
        if self.cross_keys is not None:
            self._reorder_cross(index)

    def _reorder_cross(self, index: np.ndarray) -> None:
        source = index // self.group  # the cross-attention row of each new cache row
        group = self.group
        if self.batch % group or not (source.reshape(-1, group) == source[::group, None]).all():
            group = 1
        rows = source[::group]
        if not np.array_equal(rows, np.arange(self.cross_keys[0].shape[0])):
            self.cross_keys = [k[rows] for k in self.cross_keys]
            self.cross_values = [v[rows] for v in self.cross_values]
        self.cross_rows = self.cross_rows[rows]
        self.group = group  # inputs stays the first step's count, which cross_rows names


def encode(model, input_ids, attention_mask=None) -> np.ndarray:
    """The encoder's last hidden state (B, S, d_model), float32."""
    with no_grad():
        return model.run_encoder(input_ids, attention_mask).numpy()


# The step runs the kernels on numpy arrays directly (no autograd records, a few microseconds a call):
# inference only, dropout off. Its GEMMs have few rows (the batch times the beams) and stream the
# weights, which they read faster in the (in, out) layout: the model keeps such copies, made once
# (pyengine.models.decode_weights).
def _rms(norm, x: np.ndarray) -> np.ndarray:
    return K.rms_norm(x, norm.weight.data, eps=norm.eps)[0]


def _linear(x: np.ndarray, layer, cache: T5Cache, activation: str = "none") -> np.ndarray:
    """x @ W^T through the model's (in, out) copy of the layer's weight."""
    return K.matmul(x, cache.weights.get(layer, layer.weight), activation=activation)


def _qkv(x: np.ndarray, attn, cache: T5Cache) -> np.ndarray:
    """x @ [Wq; Wk; Wv]^T (rows, 3 * H * D): the q, k and v of each row side by side, in one GEMM."""
    return K.matmul(x, cache.weights.get(attn, attn.q.weight, attn.k.weight, attn.v.weight))


def _heads(x: np.ndarray, batch: int, heads: int) -> np.ndarray:
    """(B * T, H * D) -> (B, H, T, D), contiguous (no copy for T = 1)."""
    return np.ascontiguousarray(x.reshape(batch, -1, heads, x.shape[-1] // heads).transpose(0, 2, 1, 3))


def _merge(y: np.ndarray) -> np.ndarray:
    """(B, H, T, D) -> (B * T, H * D)."""
    batch, heads, steps, width = y.shape
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(batch * steps, heads * width)


def _encoder_rows(cache: T5Cache, value, name: str, dtype) -> np.ndarray:
    """An encoder array of one row per input (B / group), or one per cache row (B)."""
    array = np.ascontiguousarray(value.numpy() if isinstance(value, Tensor) else value, dtype=dtype)
    if array.ndim < 2 or array.shape[0] < 1 or cache.batch % array.shape[0]:
        raise ValueError(f"T5 decode_step: {name} of shape {array.shape} must have one row per input, or one "
                         f"per cache row ({cache.batch})")
    return array


def _fill_cross_attention(model, cache: T5Cache, encoder_hidden) -> None:
    if encoder_hidden is None:
        raise ValueError("T5 decode_step: the first step needs encoder_hidden (B, S, d_model)")
    hidden = _encoder_rows(cache, encoder_hidden, "encoder_hidden", np.float32)
    if hidden.ndim != 3 or hidden.shape[2] != model.config.d_model:
        raise ValueError(f"T5 decode_step: encoder_hidden must be (B, S, {model.config.d_model}) with B "
                         f"dividing the cache's {cache.batch} rows, got {hidden.shape}")
    rows, inputs = hidden.reshape(-1, hidden.shape[2]), hidden.shape[0]
    heads = model.config.num_heads
    cache.cross_keys, cache.cross_values = [], []
    for block in model.decoder.block:
        attn = block.layer[1].EncDecAttention
        cache.cross_keys.append(_heads(K.matmul(rows, attn.k.weight.data, trans_b=True), inputs, heads))
        cache.cross_values.append(_heads(K.matmul(rows, attn.v.weight.data, trans_b=True), inputs, heads))
    cache.group, cache.inputs, cache.cross_rows = cache.batch // inputs, inputs, np.arange(inputs)


def _encoder_mask(cache: T5Cache, encoder_attention_mask) -> np.ndarray | None:
    """The additive encoder padding of each cross-attention row (B / group, 1, 1, S), from a mask of one
    row per cache row (read at the first row of each group: the rows of a group share their input) or
    one per input of the first step."""
    if encoder_attention_mask is None:
        return None
    mask = additive_padding_mask(encoder_attention_mask, "T5 decode_step")
    inputs, length = cache.cross_keys[0].shape[0], cache.cross_keys[0].shape[2]
    if mask.shape[0] == cache.batch:
        mask = mask[::cache.group]
    elif mask.shape[0] == cache.inputs:
        mask = mask[cache.cross_rows]
    if mask.shape != (inputs, 1, 1, length):
        raise ValueError(f"T5 decode_step: encoder_attention_mask {np.shape(encoder_attention_mask)} does not "
                         f"match the encoder output ({inputs} inputs, {length} positions)")
    return mask


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
    """The new positions' keys and values appended to the layer's buffers, and attention over the filled
    prefix, both in place (cached_attention)."""
    attn, batch = layer.SelfAttention, cache.batch
    steps = x.shape[0] // batch
    qkv = _qkv(_rms(layer.layer_norm, x), attn, cache).reshape(batch, steps, 3, attn.n_heads, attn.d_kv)
    y = K.cached_attention(cache.keys[index], cache.values[index], qkv, mask, start=cache.length, scale=1.0)
    return x + _linear(y.reshape(batch * steps, -1), attn.o, cache)


def _cached_cross_attention(layer, x: np.ndarray, cache: T5Cache, index: int, mask) -> np.ndarray:
    """The queries of each group's rows (and new positions) attend together over their input's keys."""
    attn = layer.EncDecAttention
    inputs = cache.cross_keys[index].shape[0]
    q = _heads(_linear(_rms(layer.layer_norm, x), attn.q, cache), inputs, attn.n_heads)
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
    attention_mask: the decoder's (B, cache.length + t) 1/0 mask, or None; encoder_hidden (B', S, d),
    one row per input (B' dividing B: each serves B / B' consecutive rows) or per row, is read at the
    first step only (the cross-attention keys and values are cached); encoder_attention_mask (B', S)
    or (B, S) masks the encoder's padding at every step."""
    ids = model.check_ids(decoder_ids, "decoder_ids")
    batch, steps = ids.shape
    if batch != cache.batch:
        raise ValueError(f"T5 decode_step: {batch} rows of decoder_ids for a cache of {cache.batch}")
    if cache.length + steps > cache.capacity:
        raise ValueError(f"T5 decode_step: {cache.length} cached + {steps} new positions exceed the cache's "
                         f"capacity {cache.capacity}")
    cache.weights = weights_of(model)
    if cache.cross_keys is None:
        _fill_cross_attention(model, cache, encoder_hidden)
    encoder_mask = _encoder_mask(cache, encoder_attention_mask)
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
