"""A GPT-2-style decoder-only transformer.

Pre-LayerNorm blocks, learned position embeddings, tanh GELU, the output
head tied to the token embedding, and GPT-2's initialisation: every weight
N(0, 0.02), the residual projections (``attn.c_proj`` and ``mlp.c_proj``)
scaled by 1/sqrt(2 n_layer), biases zero. Parameter names follow Hugging
Face's GPT-2 (``transformer.wte.weight``, ``transformer.h.0.attn.c_attn.weight``,
...); the layouts are pyengine's (a Linear's weight is (out, in), where
GPT-2's Conv1D stores (in, out)), and the tied head has no entry of its own.

Attention reads its queries, keys and values straight from the fused QKV
projection, viewed (B, T, 3, n_head, head_dim), and writes (B, T, n_head,
head_dim), which is (B, T, C) again as a view: no transposes in a block.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pyengine import functional as F
from pyengine import nn
from pyengine.random import default_generator
from pyengine.tensor import Tensor

__all__ = ["GPTConfig", "GPT"]


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int = 256
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    n_inner: int | None = None  # the MLP's width; None: 4 * n_embd

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"GPTConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if self.n_inner is not None and (not isinstance(self.n_inner, (int, np.integer)) or self.n_inner < 1):
            raise ValueError(f"GPTConfig: n_inner must be a positive int or None, got {self.n_inner!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _normal(module_weight, std: float, rng) -> None:
    module_weight.data[...] = rng.normal(0.0, std, module_weight.shape)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: Tensor, attn_mask=None) -> Tensor:
        """attn_mask: None, or an additive float32 padding mask (B, 1, 1, T)
        applied with the causal mask (then q, k and v are transposed out of
        the fused projection, as scaled_dot_product_attention reads them)."""
        batch, steps, width = x.shape
        qkv = self.c_attn(x).view(batch, steps, 3, self.n_head, self.head_dim)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.qkv_attention(qkv, is_causal=True, dropout_p=dropout_p)
        else:
            q, k, v = (qkv[:, :, i].transpose(1, 2).contiguous() for i in range(3))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=True, dropout_p=dropout_p)
            y = y.transpose(1, 2).contiguous()
        return self.c_proj(y.view(batch, steps, width))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x: Tensor, attn_mask=None) -> Tensor:
        x = self._residual(x, self.attn(self.ln_1(x), attn_mask))
        return self._residual(x, self.mlp(self.ln_2(x)))

    def _residual(self, x: Tensor, branch: Tensor) -> Tensor:
        if self.dropout and self.training:
            return F.dropout_add(branch, x, p=self.dropout)  # x + dropout(branch), one pass
        return x + branch


class Transformer(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)


class GPT(nn.Module):
    """``model(idx, targets=None)`` returns ``(logits, loss)``: idx and
    targets int64 (B, T) with T <= block_size; logits (B, T, vocab_size);
    loss the mean cross-entropy, or None without targets."""

    def __init__(self, config: GPTConfig, generator=None):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self._initialise(generator or default_generator())

    def _initialise(self, rng) -> None:
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith(".bias"):
                param.data[...] = 0.0
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                param.data[...] = 1.0
            else:
                _normal(param, residual_std if name.endswith("c_proj.weight") else 0.02, rng)

    def forward(self, idx, targets=None):
        idx = self._check_indices(idx, "idx")
        batch, steps = idx.shape
        logits = self.logits(idx)
        if targets is None:
            return logits, None
        targets = self._check_indices(targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"GPT: targets {targets.shape} must have the shape of idx {idx.shape}")
        loss = F.cross_entropy(logits.view(batch * steps, self.config.vocab_size), targets.reshape(-1))
        return logits, loss

    def logits(self, idx, positions=None, attn_mask=None) -> Tensor:
        """Logits (B, T, vocab_size) of checked idx (B, T); positions (T,) or
        (B, T) (default 0..T-1); attn_mask None or additive (B, 1, 1, T)."""
        tr = self.transformer
        if positions is None:
            positions = np.arange(idx.shape[1], dtype=np.int64)
        x = tr.drop(tr.wte(idx) + tr.wpe(positions))
        for block in tr.h:
            x = block(x, attn_mask)
        return F.linear(tr.ln_f(x), tr.wte.weight)  # the head tied to the token embedding

    # ---- decoding with a key/value cache (the protocol of pyengine.generation)
    @property
    def generation_config(self) -> dict:
        """What pyengine.generation needs to know: no special tokens for a
        model of pyengine's own (GPT2LMHeadModel reads them from its config)."""
        return dict(getattr(self, "_generation_config", None) or {
            "eos_token_id": None, "pad_token_id": None, "bos_token_id": None, "is_encoder_decoder": False,
            "vocab_size": self.config.vocab_size})

    def new_cache(self, batch: int, capacity: int):
        """An empty key/value cache for `batch` rows of up to `capacity`
        positions (<= block_size)."""
        from pyengine.models.gpt_generate import KVCache

        if not 1 <= capacity <= self.config.block_size:
            raise ValueError(f"GPT: a cache of {capacity} positions does not fit block_size {self.config.block_size}")
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, capacity, c.n_embd // c.n_head)

    def decode_step(self, ids, cache, attention_mask=None) -> np.ndarray:
        """Logits (B, V) float32 of the last of ids (B, t), whose keys and
        values are appended to the cache; attention_mask (B, cache.length + t)
        of 0/1 marks the padding (positions then count the real tokens only,
        as transformers' generate computes them)."""
        from pyengine.models.gpt_generate import decode_step

        return decode_step(self, ids, cache, attention_mask)

    def save_pretrained(self, path, vocab=None) -> None:
        """Write a Hugging Face GPT-2 folder (config.json, model.safetensors)
        that transformers' GPT2LMHeadModel.from_pretrained loads; with vocab
        (the CharVocab of `pyengine train gpt`) a character tokenizer.json too."""
        from pyengine.models.hf_gpt2 import save_pretrained

        save_pretrained(self, path, vocab)

    def _check_indices(self, ids, name: str):
        """ids checked (an integer (B, T) array within the vocabulary); a
        Tensor is returned as it is, so that under capture the graph reads
        its input buffer, and the embedding kernel checks the values of each
        replayed batch."""
        array = ids.numpy() if isinstance(ids, Tensor) else np.asarray(ids)
        if array.ndim != 2 or array.dtype.kind not in "iu":
            raise ValueError(f"GPT: {name} must be an integer array (B, T), got {array.dtype} {array.shape}")
        if array.shape[1] > self.config.block_size:
            raise ValueError(f"GPT: a context of {array.shape[1]} tokens is longer than block_size "
                             f"{self.config.block_size}")
        if array.size and (array.min() < 0 or array.max() >= self.config.vocab_size):
            raise ValueError(f"GPT: {name} holds ids outside [0, {self.config.vocab_size})")
        if isinstance(ids, Tensor):
            if ids.dtype != np.int64:
                raise ValueError(f"GPT: {name} must be int64, got {ids.dtype}")
            return ids
        return np.ascontiguousarray(array, dtype=np.int64)

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None, top_p=None,
                 seed=None, use_cache: bool = True, stream=None) -> np.ndarray:
        """Extend idx (int64 (B, T)) by max_new_tokens sampled tokens; returns
        (B, T + max_new_tokens). Greedy when temperature is 0. With use_cache
        (the default) each new token costs one position of work (a KV cache);
        the context is cut to the last block_size tokens without it.
        `stream(tokens)` is called with each new column (B,) as it is drawn."""
        from pyengine.models.gpt_generate import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, use_cache=use_cache, stream=stream)
