"""The same GPT written in PyTorch: the reference the tests compare against
and the peer the benchmarks time. ``to_torch(model)`` builds it with a copy
of a pyengine GPT's weights (same names, same layouts). PyTorch is imported
only when this module is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn as nnt

from pyengine.models.gpt import GPTConfig

__all__ = ["TorchGPT", "to_torch", "new_caches"]


class TorchBlock(nnt.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nnt.LayerNorm(c.n_embd), nnt.LayerNorm(c.n_embd)
        self.attn = nnt.Module()
        self.attn.c_attn = nnt.Linear(c.n_embd, 3 * c.n_embd)
        self.attn.c_proj = nnt.Linear(c.n_embd, c.n_embd)
        self.mlp = nnt.Module()
        self.mlp.c_fc = nnt.Linear(c.n_embd, 4 * c.n_embd)
        self.mlp.c_proj = nnt.Linear(4 * c.n_embd, c.n_embd)
        self.n_head = c.n_head

    def forward(self, x, cache=None):
        """cache: None, or this layer's [keys, values] (B, H, t, D) so far
        (None at the prefill), extended in place as transformers' cache does."""
        b, t, c = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
        # one new query attends to every cached key; a prefill is causal
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(b, t, c))
        h = torch.nn.functional.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.mlp.c_proj(h)


class TorchGPT(nnt.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.transformer = nnt.Module()
        self.transformer.wte = nnt.Embedding(c.vocab_size, c.n_embd)
        self.transformer.wpe = nnt.Embedding(c.block_size, c.n_embd)
        self.transformer.h = nnt.ModuleList([TorchBlock(c) for _ in range(c.n_layer)])
        self.transformer.ln_f = nnt.LayerNorm(c.n_embd)

    def forward(self, idx, targets=None, caches=None, start: int = 0):
        """caches: None, or one [keys, values] list per layer (see
        TorchBlock.forward), for positions start.. of idx."""
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(start, start + idx.shape[1]))
        for layer, block in enumerate(tr.h):
            x = block(x, None if caches is None else caches[layer])
        logits = tr.ln_f(x) @ tr.wte.weight.T
        if targets is None:
            return logits, None
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss


def new_caches(model: TorchGPT) -> list:
    return [[None, None] for _ in model.transformer.h]


def to_torch(model, dtype=torch.float32) -> TorchGPT:
    """A TorchGPT of model's configuration holding a copy of its weights."""
    reference = TorchGPT(model.config).to(dtype)
    state = {k: torch.tensor(np.asarray(v), dtype=dtype) for k, v in model.state_dict().items()}
    reference.load_state_dict(state)
    return reference
