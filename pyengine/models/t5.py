"""T5 (Hugging Face's T5ForConditionalGeneration): an encoder-decoder transformer.

Pre-norm blocks with T5's RMS layer norm, no biases anywhere, attention without the 1/sqrt(d)
scaling, and relative position buckets instead of position embeddings: a learned bias per
(bucket, head), held by the first block of each stack only; the bias of a stack (bidirectional
buckets in the encoder, causal ones in the decoder) is computed once per forward and shared by
all its layers, added to the padding mask as one additive attention mask (so the table gets its
gradient from every layer). Feed-forwards: ReLU (``feed_forward_proj="relu"``, the original T5)
or gated GELU (``"gated-gelu"``, T5 v1.1 / Flan-T5, tanh GELU). The head is tied to the shared
embedding unless the checkpoint holds its own ``lm_head.weight``; the decoder output is scaled by
d_model ** -0.5 where the config says so (``scale_decoder_outputs``, or a tied config).

Parameter names are Hugging Face's (``encoder.block.0.layer.0.SelfAttention.q.weight``, ...), so a
checkpoint maps one to one; ``from_hf(config, tensors)`` builds the model from a folder's parts
(see pyengine.models.pretrained). Generation (the key/value cache, ``encode``, ``decode_step``)
lives in pyengine.models.t5_generate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyengine import functional as F
from pyengine import nn
from pyengine.models import pretrained
from pyengine.tensor import Tensor, _state

__all__ = ["T5Config", "T5ForConditionalGeneration", "from_hf", "relative_position_bucket"]

def _tanh_gelu(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


# Activations of the feed-forward, by the name transformers gives them (gelu_new is tanh GELU, gelu exact).
ACTIVATIONS = {"relu": F.relu, "gelu_new": _tanh_gelu, "gelu_pytorch_tanh": _tanh_gelu, "gelu": F.gelu,
               "silu": F.silu}


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    eos_token_id: int | list | None = 1
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"T5Config: {name} must be a positive int, got {value!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(f"T5Config: relative_attention_num_buckets must be >= 4, got "
                             f"{self.relative_attention_num_buckets}")
        self.activation  # noqa: B018 - checks feed_forward_proj

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """The feed-forward's activation, as transformers names it."""
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"T5Config: feed_forward_proj {self.feed_forward_proj!r} is neither 'ACT' nor 'gated-ACT'")
        name = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if name not in ACTIVATIONS:
            raise ValueError(f"T5Config: feed_forward_proj {self.feed_forward_proj!r}: pyengine supports the "
                             f"activations {sorted(ACTIVATIONS)}")
        return name

    @classmethod
    def from_hf(cls, config: dict) -> T5Config:
        """The fields of a transformers config.json (unknown keys ignored)."""
        known = {k: config[k] for k in cls.__dataclass_fields__ if k in config and k != "scale_decoder_outputs"}
        # transformers: decoder outputs are scaled unless the config unties the head (T5 v1.1 / Flan).
        scale = config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False)
        return cls(**known, scale_decoder_outputs=bool(scale))


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
    """T5's bucket (int64, in [0, num_buckets)) of each relative position (key - query): exact buckets
    for small distances, logarithmic ones up to max_distance, the rest in the last bucket; with
    `bidirectional`, half the buckets for keys after the query; without it, keys after the query
    share bucket 0. Computed in float32 as transformers does, so the buckets are equal."""
    buckets = np.zeros(relative_position.shape, np.int64)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    scaled = np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def additive_padding_mask(mask, caller: str) -> np.ndarray | None:
    """An attention mask (B, S) of 1 (attend) and 0 (padding) as an additive float32 (B, 1, 1, S)."""
    if mask is None:
        return None
    mask = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{caller}: an attention mask must be (B, S), got shape {mask.shape}")
    return np.where(mask[:, None, None, :] != 0, np.float32(0), np.float32(-np.inf))


# The additive value of each attention-mask entry, looked up by it: row 0 (padding) -inf, row 1 (attend) 0.
_PADDING_TABLE = np.array([[-np.inf], [0.0]], np.float32)


def padding_tensor(mask: Tensor, caller: str) -> Tensor:
    """A 0/1 integer mask Tensor (B, S) as the additive (B, 1, 1, S) Tensor that a graph computes from it
    (a lookup of each entry in (-inf, 0)): under capture the mask is a graph input, not a constant, so
    a replay reads each call's padding."""
    if mask.ndim != 2:
        raise ValueError(f"{caller}: an attention mask must be (B, S), got shape {mask.shape}")
    if mask.dtype.kind not in "iu":
        if _state.capturing:
            raise ValueError(f"{caller}: under capture the attention mask must be an integer 0/1 Tensor (it is "
                             f"then a graph input), got {mask.dtype} {mask.shape}")
        return Tensor(additive_padding_mask(mask, caller))
    if mask.size and not np.isin(mask.numpy(), (0, 1)).all():
        raise ValueError(f"{caller}: an attention mask Tensor must hold only 0 and 1")
    batch, steps = mask.shape
    return F.embedding(mask, Tensor(_PADDING_TABLE)).view(batch, 1, 1, steps)


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool, is_decoder: bool):
        super().__init__()
        self.n_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.is_decoder = is_decoder
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def heads(self, x: Tensor) -> Tensor:
        """(B, T, H * D) -> (B, H, T, D)."""
        batch, steps, _ = x.shape
        return x.view(batch, steps, self.n_heads, self.d_kv).permute(0, 2, 1, 3)

    def merge(self, y: Tensor) -> Tensor:
        """(B, H, T, D) -> the output projection of (B, T, H * D)."""
        batch, _, steps, _ = y.shape
        return self.o(y.permute(0, 2, 1, 3).reshape(batch, steps, self.n_heads * self.d_kv))

    def position_bias(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        """The learned bias (1, H, Tq, Tk) of queries offset.. against keys 0..key_length-1."""
        query = np.arange(offset, offset + query_length, dtype=np.int64)[:, None]
        relative = np.arange(key_length, dtype=np.int64)[None, :] - query
        buckets = relative_position_bucket(relative, not self.is_decoder, self.num_buckets, self.max_distance)
        values = self.relative_attention_bias(buckets)  # (Tq, Tk, H)
        return values.permute(2, 0, 1).reshape(1, self.n_heads, query_length, key_length)

    def forward(self, x: Tensor, mask, key_value_states: Tensor | None = None, is_causal: bool = False) -> Tensor:
        source = x if key_value_states is None else key_value_states
        q, k, v = self.heads(self.q(x)), self.heads(self.k(source)), self.heads(self.v(source))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=1.0)
        return self.merge(y)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool, is_decoder: bool):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, is_decoder)
        self.layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor, mask, is_causal: bool) -> Tensor:
        return x + self.dropout(self.SelfAttention(self.layer_norm(x), mask, is_causal=is_causal))


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.EncDecAttention = T5Attention(config, False, True)
        self.layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor, encoder_hidden: Tensor, mask) -> Tensor:
        return x + self.dropout(self.EncDecAttention(self.layer_norm(x), mask, key_value_states=encoder_hidden))


class T5DenseActDense(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.dropout(self.act(self.wi(x))))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.dropout(self.act(self.wi_0(x)) * self.wi_1(x)))


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated else T5DenseActDense(config)
        self.layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Module):
    """layer: [self-attention, cross-attention (decoder only), feed-forward], as transformers."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, is_decoder: bool):
        super().__init__()
        parts = [T5LayerSelfAttention(config, has_relative_attention_bias, is_decoder)]
        parts += [T5LayerCrossAttention(config)] if is_decoder else []
        self.layer = nn.ModuleList(parts + [T5LayerFF(config)])
        self.is_decoder = is_decoder

    def forward(self, x: Tensor, mask, encoder_hidden=None, encoder_mask=None) -> Tensor:
        x = self.layer[0](x, mask, is_causal=self.is_decoder)
        if self.is_decoder:
            x = self.layer[1](x, encoder_hidden, encoder_mask)
        return self.layer[-1](x)


class T5Stack(nn.Module):
    def __init__(self, config: T5Config, is_decoder: bool):
        super().__init__()
        layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList([T5Block(config, i == 0, is_decoder) for i in range(layers)])
        self.final_layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.is_decoder = is_decoder

    @property
    def bias_attention(self) -> T5Attention:
        """The attention of the first block, which holds the stack's relative position bias."""
        return self.block[0].layer[0].SelfAttention

    def attention_mask(self, steps: int, padding) -> Tensor:
        """The stack's shared additive mask: position bias (1, H, T, T), plus the padding (B, 1, 1, T)."""
        bias = self.bias_attention.position_bias(steps, steps)
        return bias if padding is None else bias + _as_tensor(padding)

    def forward(self, embeddings: Tensor, padding=None, encoder_hidden=None, encoder_padding=None) -> Tensor:
        """padding, encoder_padding: additive (B, 1, 1, T) masks (arrays or Tensors), or None."""
        mask = self.attention_mask(embeddings.shape[1], padding)
        encoder_mask = None if encoder_padding is None else _as_tensor(encoder_padding)
        x = self.dropout(embeddings)
        for block in self.block:
            x = block(x, mask, encoder_hidden, encoder_mask)
        return self.dropout(self.final_layer_norm(x))


def _as_tensor(value) -> Tensor:
    return value if isinstance(value, Tensor) else Tensor(value)


class T5ForConditionalGeneration(nn.Module):
    """``model(input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
    labels=None)`` -> logits (B, T, vocab_size), or (logits, loss) with labels (int64 (B, T), -100
    ignored; the decoder inputs are then the labels shifted right behind decoder_start_token_id
    unless given). Ids are int64 numpy arrays or Tensors; masks 1 (attend) / 0 (padding). Under
    pyengine.graph.capture, masks given as integer Tensors (the graph's inputs) stay inputs of the
    graph: a replay reads each call's padding."""

    def __init__(self, config: T5Config, tied: bool = True):
        super().__init__()
        self.config, self.tied = config, bool(tied)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        if not self.tied:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    @property
    def generation_config(self) -> dict:
        c = self.config
        return {"eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id, "bos_token_id": c.bos_token_id,
                "decoder_start_token_id": c.decoder_start_token_id, "is_encoder_decoder": True,
                "vocab_size": c.vocab_size}

    def use_generation_config(self, settings: dict) -> None:
        """A generation_config.json's contents: its token ids replace the config's, its other settings
        become the defaults of generate (``generation_defaults``; see pyengine.generation.config)."""
        from pyengine.generation.config import split_generation_config

        tokens, self.generation_defaults = split_generation_config(settings)
        for key, value in tokens.items():
            setattr(self.config, key, value)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None):
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5ForConditionalGeneration: give decoder_input_ids or labels")
            if _state.capturing:
                raise ValueError("T5ForConditionalGeneration: under capture, give decoder_input_ids (e.g. "
                                 "model.shift_right(labels)) as a graph input: the labels shifted inside would be "
                                 "frozen into the graph")
            decoder_input_ids = self.shift_right(labels)
        ids = self.check_ids(input_ids, "input_ids")
        encoder_padding = self.padding(attention_mask, ids)
        encoder_hidden = self.encoder(self.shared(ids), encoder_padding)
        decoder_ids = self.check_ids(decoder_input_ids, "decoder_input_ids")
        hidden = self.decoder(self.shared(decoder_ids), self.padding(decoder_attention_mask, decoder_ids),
                              encoder_hidden, encoder_padding)
        logits = self.head(hidden)
        if labels is None:
            return logits
        labels = self.check_ids(labels, "labels", allow_ignored=True)
        if labels.shape != decoder_ids.shape:
            raise ValueError(f"T5ForConditionalGeneration: labels {labels.shape} must have the shape of the decoder "
                             f"inputs {decoder_ids.shape}")
        rows = labels.shape[0] * labels.shape[1]
        loss = F.cross_entropy(logits.reshape(rows, self.config.vocab_size), labels.reshape(rows))
        return logits, loss

    def run_encoder(self, input_ids, attention_mask=None) -> Tensor:
        """The encoder's last hidden state (B, S, d_model) as a Tensor."""
        ids = self.check_ids(input_ids, "input_ids")
        return self.encoder(self.shared(ids), self.padding(attention_mask, ids))

    def head(self, hidden: Tensor) -> Tensor:
        if self.config.scale_decoder_outputs:
            hidden = hidden * (self.config.d_model ** -0.5)
        return F.linear(hidden, self.shared.weight) if self.tied else self.lm_head(hidden)

    def shift_right(self, labels) -> np.ndarray:
        """Decoder inputs from labels, as transformers' _shift_right: decoder_start_token_id, then the
        labels but the last, -100 replaced by pad_token_id."""
        labels = self.check_ids(labels, "labels", allow_ignored=True)
        labels = labels.numpy() if isinstance(labels, Tensor) else labels
        shifted = np.empty_like(labels)
        shifted[:, 0] = self.config.decoder_start_token_id
        shifted[:, 1:] = labels[:, :-1]
        shifted[shifted == -100] = self.config.pad_token_id
        return shifted

    def padding(self, mask, ids):
        """The additive (B, 1, 1, T) mask of a 0/1 mask matching ids: a Tensor computed from a Tensor
        mask (see padding_tensor), a constant array from an array, None for None."""
        if mask is None:
            return None
        caller = "T5ForConditionalGeneration"
        padding = padding_tensor(mask, caller) if isinstance(mask, Tensor) else additive_padding_mask(mask, caller)
        if padding.shape[0] != ids.shape[0] or padding.shape[-1] != ids.shape[1]:
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else np.shape(mask)
            raise ValueError(f"{caller}: attention mask {shape} does not match ids {tuple(ids.shape)}")
        return padding

    def check_ids(self, ids, name: str, allow_ignored: bool = False):
        """ids checked (an integer (B, T) array within the vocabulary, -100 too where allowed); a Tensor
        is returned as it is, an array as contiguous int64."""
        array = ids.numpy() if isinstance(ids, Tensor) else np.asarray(ids)
        caller = "T5ForConditionalGeneration"
        if array.ndim != 2 or array.dtype.kind not in "iu" or array.shape[1] == 0:
            raise ValueError(f"{caller}: {name} must be a non-empty integer array (B, T), got {array.dtype} "
                             f"{array.shape}")
        valid = (array >= 0) & (array < self.config.vocab_size)
        if allow_ignored:
            valid |= array == -100
        if not valid.all():
            raise ValueError(f"{caller}: {name} holds ids outside [0, {self.config.vocab_size})")
        if isinstance(ids, Tensor):
            if ids.dtype != np.int64:
                raise ValueError(f"{caller}: {name} must be int64, got {ids.dtype}")
            return ids
        return np.ascontiguousarray(array, dtype=np.int64)

    def save_pretrained(self, path) -> None:
        """Write config.json and model.safetensors into the folder `path`, which transformers'
        T5ForConditionalGeneration.from_pretrained loads (an untied head as its own lm_head.weight)."""
        c = self.config
        config = {name: getattr(c, name) for name in T5Config.__dataclass_fields__}
        config.update(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                      tie_word_embeddings=self.tied)
        state = {name: np.asarray(value) for name, value in self.state_dict().items()}
        pretrained.write_folder(path, config, state)

    # ---- generation (pyengine.models.t5_generate)
    def encode(self, input_ids, attention_mask=None) -> np.ndarray:
        from pyengine.models.t5_generate import encode
        return encode(self, input_ids, attention_mask)

    def new_cache(self, batch: int, capacity: int):
        from pyengine.models.t5_generate import T5Cache
        return T5Cache(self.config, batch, capacity)

    def decode_step(self, decoder_ids, cache, attention_mask=None, encoder_hidden=None,
                    encoder_attention_mask=None) -> np.ndarray:
        from pyengine.models.t5_generate import decode_step
        return decode_step(self, decoder_ids, cache, attention_mask, encoder_hidden, encoder_attention_mask)

    def generate(self, input_ids, attention_mask=None, **kwargs) -> np.ndarray:
        """Decoder token ids (from decoder_start_token_id) as transformers' generate; the arguments of
        pyengine.generation.generate."""
        from pyengine.generation import generate
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)


def hf_state(tensors: dict, tied: bool) -> dict:
    """Hugging Face's tensors by pyengine name: the copies of the shared embedding dropped (the
    stacks' embed_tokens, a tied lm_head), and the decoder's unused cross-attention bias."""
    unused = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
              "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"}
    unused |= {"lm_head.weight"} if tied else set()
    state = {name: value for name, value in tensors.items() if name not in unused}
    if "shared.weight" not in state:
        for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if copy in tensors:
                state["shared.weight"] = tensors[copy]
                break
    return state


def head_is_tied(tensors: dict) -> bool:
    """As transformers: an lm_head.weight of its own (other values than the shared embedding) unties."""
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    if head is None:
        return True
    return shared is not None and np.shape(head) == np.shape(shared) and np.array_equal(head, shared)


def from_hf(config: dict, tensors: dict) -> T5ForConditionalGeneration:
    """The T5ForConditionalGeneration of a transformers config.json (dict) and its tensors, in eval mode."""
    if config.get("model_type", "t5") != "t5":
        raise ValueError(f"t5.from_hf: config model_type is {config.get('model_type')!r}, not 't5'")
    tied = head_is_tied(tensors)
    model = T5ForConditionalGeneration(T5Config.from_hf(config), tied=tied)
    pretrained.assign_state(model, hf_state(tensors, tied), "t5.from_hf")
    return model.eval()
