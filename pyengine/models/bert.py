"""BERT as Hugging Face's BertModel and BertForMaskedLM, loaded from their checkpoints.

Post-LayerNorm encoder blocks (eps from the config), word + position + token-type embeddings,
a padding mask added to the attention scores, the tanh pooler over the first token and, where
the checkpoint has one, the masked-LM head (``cls.predictions.*``, its decoder tied to the word
embeddings). Parameter names are transformers' bare ones (``encoder.layer.0.output.dense.weight``)
but for the attention's query, key and value projections, fused into one
``encoder.layer.i.attention.self.qkv`` Linear (3 hidden, hidden): attention reads its (B, T, 3, H, D)
output in place (F.qkv_attention), no transposes. The encoder works on (B * T, hidden) rows, so a
captured graph fuses each intermediate GEMM with its GELU.

``from_hf(config, tensors)`` builds the model from a config.json dict and the checkpoint's
arrays (``bert.``-prefixed or bare names); ``model(input_ids, attention_mask=None,
token_type_ids=None)`` gives ``(last_hidden_state, pooler_output)`` Tensors (the MLM model: the
logits); ``model.last_hidden_state(...)`` runs the same forward as a graph captured once per
input shape, for inference.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pyengine import functional as F
from pyengine import nn
from pyengine.tensor import Tensor, no_grad

__all__ = ["BertConfig", "BertModel", "BertForMaskedLM", "from_hf"]

# transformers' hidden_act names -> F.gelu's approximate (None: relu).
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh",
                "relu": None}
# Checkpoint tensors no pyengine parameter holds: buffers, and the next-sentence head of
# BertForPreTraining checkpoints.
_IGNORED = ("embeddings.position_ids", "cls.seq_relationship.weight", "cls.seq_relationship.bias")
_MASKED = float(np.finfo(np.float32).min)  # what transformers adds at a padded key


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig: {name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig: hidden_act {self.hidden_act!r} is not supported "
                             f"(supported: {', '.join(_ACTIVATIONS)})")

    @classmethod
    def from_dict(cls, config: dict) -> BertConfig:
        """From a transformers config.json dict; what pyengine does not model raises ValueError."""
        if config.get("model_type", "bert") != "bert":
            raise ValueError(f"BertConfig: model_type is {config.get('model_type')!r}, not 'bert'")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertConfig: position_embedding_type {config['position_embedding_type']!r} is not "
                             "supported (only 'absolute')")
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise ValueError("BertConfig: decoder BERT (is_decoder, add_cross_attention) is not supported")
        fields = {name: config[name] for name in cls.__dataclass_fields__ if config.get(name) is not None}
        return cls(**fields)


# ---------------------------------------------------------------- modules


class _Node(nn.Module):
    """A container whose children give the parameters transformers' names."""

    def __init__(self, /, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: Tensor, token_type_ids) -> Tensor:
        """ids (B, T) -> (B * T, hidden) rows."""
        batch, steps = ids.shape
        positions = self.position_embeddings(np.arange(steps, dtype=np.int64))  # (T, hidden)
        if token_type_ids is None:  # all type 0: one (T, hidden) table broadcast over the batch
            shared = positions + self.token_type_embeddings(np.zeros(steps, np.int64))
            x = self.word_embeddings(ids) + shared
        else:
            x = self.word_embeddings(ids) + self.token_type_embeddings(token_type_ids) + positions
        return self.LayerNorm(x.view(batch * steps, -1))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.heads, self.head_dim = config.num_attention_heads, hidden // config.num_attention_heads
        self.approximate = _ACTIVATIONS[config.hidden_act]
        self.attention = _Node(self=_Node(qkv=nn.Linear(hidden, 3 * hidden)),
                               output=_Node(dense=nn.Linear(hidden, hidden), LayerNorm=nn.LayerNorm(hidden, eps)))
        self.intermediate = _Node(dense=nn.Linear(hidden, config.intermediate_size))
        self.output = _Node(dense=nn.Linear(config.intermediate_size, hidden), LayerNorm=nn.LayerNorm(hidden, eps))

    def forward(self, x: Tensor, batch: int, steps: int, mask) -> Tensor:
        """x (B * T, hidden) rows; mask additive (B, 1, 1, T) or None."""
        attention = self.attention
        qkv = attention.self.qkv(x).view(batch, steps, 3, self.heads, self.head_dim)
        context = F.qkv_attention(qkv, is_causal=False, attn_mask=mask).view(batch * steps, -1)
        x = attention.output.LayerNorm(x + attention.output.dense(context))
        h = self.intermediate.dense(x)
        h = h.relu() if self.approximate is None else F.gelu(h, approximate=self.approximate)
        return self.output.LayerNorm(x + self.output.dense(h))


class BertModel(nn.Module):
    """``model(input_ids, attention_mask=None, token_type_ids=None)`` -> (last_hidden_state
    (B, T, hidden), pooler_output (B, hidden) or None without a pooler), as transformers'
    BertModel: ids int (B, T) numpy arrays or Tensors, attention_mask 1 = token, 0 = padding."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = _Node(layer=nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)]))
        self.pooler = _Node(dense=nn.Linear(config.hidden_size, config.hidden_size)) if add_pooling_layer else None
        self._graphs: OrderedDict = OrderedDict()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self._hidden_rows(*self._inputs(input_ids, attention_mask, token_type_ids))
        batch, steps = _shape_of(input_ids)
        hidden = hidden.view(batch, steps, self.config.hidden_size)
        pooled = None if self.pooler is None else self.pooler.dense(hidden[:, 0]).tanh()
        return hidden, pooled

    def last_hidden_state(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """The forward's last_hidden_state as a float32 numpy array (B, T, hidden), for inference.
        An input shape seen before runs as a graph captured for it (the last 8 shapes kept): no
        allocation, each GELU fused into its GEMM, the weights read from (in, out) copies (shared by
        the graphs, made again after parameter writes); a new shape runs eagerly, without autograd."""
        ids, types, mask = self._inputs(input_ids, attention_mask, token_type_ids)
        if types is not None and not types.numpy().any():
            types = None  # all type 0: the shared-table path, one graph input fewer
        inputs = [t for t in (ids, types, mask) if t is not None]
        key = (ids.shape, types is not None, mask is not None)
        graph = self._graphs.get(key)
        if graph is None:  # first sight: eager, and remember the shape
            self._graphs[key] = False
            self._forget_old_graphs()
            with no_grad():
                rows = self._hidden_rows(ids, types, mask).numpy()
            return rows.reshape(*ids.shape, self.config.hidden_size)
        if graph is False:
            graph = self._graphs[key] = self._capture(inputs, types is not None, mask is not None)
        self._graphs.move_to_end(key)
        with no_grad():
            rows = graph.run(*inputs).numpy()
        return rows.reshape(*ids.shape, self.config.hidden_size).copy()

    def _forget_old_graphs(self, keep: int = 8) -> None:
        while len(self._graphs) > keep:
            self._graphs.popitem(last=False)

    def _capture(self, inputs: list, has_types: bool, has_mask: bool):
        from pyengine.graph import capture

        def encode(ids, *rest):
            rest = list(rest)
            types = rest.pop(0) if has_types else None
            mask = rest.pop(0) if has_mask else None
            return self._hidden_rows(ids, types, mask)

        with no_grad():  # the GEMMs read (in, out) weight copies: 10-20% faster at 128 rows
            return capture(encode, *inputs, transpose_weights=True)

    def _inputs(self, input_ids, attention_mask, token_type_ids) -> tuple:
        """(ids, token types or None, additive mask (B, 1, 1, T) or None) as Tensors, checked."""
        config = self.config
        ids = _int_tensor(input_ids, "input_ids", None, config.vocab_size)
        batch, steps = ids.shape
        if steps > config.max_position_embeddings:
            raise ValueError(f"BertModel: {steps} tokens are more than max_position_embeddings "
                             f"{config.max_position_embeddings}")
        types = None if token_type_ids is None else _int_tensor(token_type_ids, "token_type_ids", ids.shape,
                                                                config.type_vocab_size)
        return ids, types, _additive_mask(attention_mask, ids.shape)

    def _hidden_rows(self, ids: Tensor, types, mask) -> Tensor:
        batch, steps = ids.shape
        x = self.embeddings(ids, types)
        for layer in self.encoder.layer:
            x = layer(x, batch, steps, mask)
        return x


class BertForMaskedLM(nn.Module):
    """BERT with transformers' masked-LM head: ``model(input_ids, attention_mask=None,
    token_type_ids=None)`` -> logits (B, T, vocab_size). The decoder is the word embeddings with
    the bias ``cls.predictions.bias`` (tied), or, where the config unties them, a Linear
    ``cls.predictions.decoder`` of its own."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = False):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=add_pooling_layer)
        hidden = config.hidden_size
        predictions = _Node(transform=_Node(dense=nn.Linear(hidden, hidden),
                                            LayerNorm=nn.LayerNorm(hidden, config.layer_norm_eps)))
        predictions.bias = nn.Parameter(np.zeros(config.vocab_size, np.float32))
        if not config.tie_word_embeddings:
            predictions.decoder = _Node(weight=nn.Parameter(np.zeros((config.vocab_size, hidden), np.float32)),
                                        bias=nn.Parameter(np.zeros(config.vocab_size, np.float32)))
        self.cls = _Node(predictions=predictions)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> Tensor:
        bert = self.bert
        rows = bert._hidden_rows(*bert._inputs(input_ids, attention_mask, token_type_ids))
        predictions = self.cls.predictions
        h = predictions.transform.dense(rows)
        approximate = _ACTIVATIONS[self.config.hidden_act]
        h = h.relu() if approximate is None else F.gelu(h, approximate=approximate)
        h = predictions.transform.LayerNorm(h)
        if self.config.tie_word_embeddings:
            logits = F.linear(h, bert.embeddings.word_embeddings.weight, predictions.bias)
        else:  # transformers' untied decoder is a Linear of its own, bias included
            logits = F.linear(h, predictions.decoder.weight, predictions.decoder.bias)
        return logits.view(*_shape_of(input_ids), self.config.vocab_size)


# ---------------------------------------------------------------- inputs


def _shape_of(value) -> tuple:
    return tuple(value.shape)


def _int_tensor(value, name: str, shape, limit: int) -> Tensor:
    """An int64 (B, T) Tensor of ids in [0, limit), checked (a Tensor given is used as it is)."""
    array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ValueError(f"BertModel: {name} must be an integer array (B, T), got {array.dtype} {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"BertModel: {name} has shape {array.shape}, input_ids {tuple(shape)}")
    if array.size and (array.min() < 0 or array.max() >= limit):
        raise ValueError(f"BertModel: {name} holds values outside [0, {limit})")
    if isinstance(value, Tensor) and value.dtype == np.int64:
        return value
    return Tensor(np.ascontiguousarray(array, dtype=np.int64))


def _additive_mask(attention_mask, shape: tuple):
    """attention_mask (B, T) of 1 (token) and 0 (padding) -> additive float32 (B, 1, 1, T) as
    transformers builds it, or None when there is no padding."""
    if attention_mask is None:
        return None
    array = attention_mask.numpy() if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
    if array.shape != tuple(shape):
        raise ValueError(f"BertModel: attention_mask has shape {array.shape}, input_ids {tuple(shape)}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"BertModel: attention_mask must be 0/1 numbers or booleans, got {array.dtype}")
    keep = array != 0
    if keep.all():
        return None
    additive = np.where(keep, np.float32(0), np.float32(_MASKED)).astype(np.float32)
    return Tensor(additive.reshape(shape[0], 1, 1, shape[1]))


# ---------------------------------------------------------------- checkpoints


def from_hf(config: dict, tensors: dict):
    """A BertModel, or a BertForMaskedLM when the checkpoint has ``cls.predictions.*``, from a
    transformers config.json dict and its arrays; names with or without the ``bert.`` prefix.
    A missing, unexpected or mis-shaped tensor raises one ValueError naming each."""
    bert_config = BertConfig.from_dict(config)
    named = _bare_names(tensors)
    if any(name.startswith("cls.predictions.") for name in named):
        model = BertForMaskedLM(bert_config, add_pooling_layer=_has_pooler(named))
        prefix = "bert."
    else:
        model = BertModel(bert_config, add_pooling_layer=_has_pooler(named))
        prefix = ""
    expected = _checkpoint_shapes(model, prefix)
    _check_checkpoint(expected, named, bert_config.tie_word_embeddings)
    _load(model, named, prefix)
    return model.eval()


def _bare_names(tensors: dict) -> dict:
    """Checkpoint names without the ``bert.`` prefix, the ignored ones dropped."""
    named = {}
    for name, array in tensors.items():
        bare = name[len("bert."):] if name.startswith("bert.") else name
        if bare not in _IGNORED:
            named[bare] = array
    return named


def _has_pooler(named: dict) -> bool:
    return any(name.startswith("pooler.") for name in named)


def _checkpoint_shapes(model, prefix: str) -> dict:
    """The transformers (bare) name and shape of every tensor the model needs: the fused qkv split
    back into query, key and value."""
    shapes = {}
    for name, param in model.state_dict().items():
        bare = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if ".attention.self.qkv." in bare:
            part = param.shape[0] // 3
            for role in ("query", "key", "value"):
                shapes[bare.replace(".qkv.", f".{role}.")] = (part, *param.shape[1:])
        else:
            shapes[bare] = tuple(param.shape)
    return shapes


def _check_checkpoint(expected: dict, named: dict, tied: bool) -> None:
    extra_ok = {"cls.predictions.decoder.bias"}  # older checkpoints store the tied bias twice
    if tied:
        extra_ok.add("cls.predictions.decoder.weight")  # ... and the tied decoder weight
    missing = sorted(set(expected) - set(named))
    unexpected = sorted(set(named) - set(expected) - extra_ok)
    misshaped = sorted(f"{name} {tuple(named[name].shape)} (expected {expected[name]})" for name in expected
                       if name in named and tuple(named[name].shape) != expected[name])
    problems = [f"{label}: {', '.join(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if names]
    if problems:
        raise ValueError("BERT checkpoint does not fit the config: " + "; ".join(problems))


def _load(model, named: dict, prefix: str) -> None:
    """Copies the checkpoint into the parameters (pretrained.assign_state), query, key and value
    concatenated into qkv."""
    from pyengine.models.pretrained import assign_state

    state = {}
    for name in model.state_dict():
        bare = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if ".attention.self.qkv." in bare:
            parts = [named[bare.replace(".qkv.", f".{role}.")] for role in ("query", "key", "value")]
            state[name] = np.concatenate(parts, axis=0)
        else:
            state[name] = named[bare]
    assign_state(model, state, "bert.from_hf")
